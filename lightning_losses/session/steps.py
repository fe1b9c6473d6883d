"""The training step, in its variants. Each reads top to bottom and returns a :class:`Step`.

- :func:`fast_step`: a key set whose decision holds (see ``fast_plans``): combine the terms as
  the first step of the key set did, copy the logged values into a staging row, write when due.
- :func:`joint_step`: every other step of ``route_mode="joint"`` (the default): parse what
  ``forward`` returned, plan its key set, combine, guard, build the objective, record.
- :func:`sequential_step`: one pass of ``route_mode="sequential"``: the same up to the
  objective; the batch's values are recorded after its last pass, as one step.

The fit session (``fit.py``) chooses among them once per fit; the objective (what Lightning
backpropagates) is built by :func:`objective` for every variant that routes or aggregates.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

import torch
from torch import Tensor

from lightning_losses.gradients import aggregation
from lightning_losses.logging.layout import StepPlan
from lightning_losses.session.fast_plans import TENSOR_FACTS, KeySet
from lightning_losses.session.guards import nothing_requires_grad, zero_through_parameters
from lightning_losses.terms import added
from lightning_losses.terms.parse import ParsedOutput, no_terms_message, parse_output
from lightning_losses.weighting.scalarizer import ScalarizerWeighting
from lightning_losses.weighting.total import Combined, stack_terms

#: The running fit (``session.fit.FitSession``; not imported: it imports these steps).
FitSession = Any

StepOutput = Tensor | dict[str, Any] | None


class Step(tuple[Any, Any]):
    """What a training step hands to Lightning: ``(objective, outputs)``, the objective it
    backpropagates (``None``: nothing to learn) and the pass-through outputs returned beside it
    (``None``: none). A tuple, made as ``Step((objective, outputs))`` and read through C-level
    properties: the per-step path pays no Python call for it."""

    __slots__ = ()
    objective = property(itemgetter(0))
    outputs = property(itemgetter(1))

    def returned(self) -> StepOutput:
        """As a ``training_step`` returns it. A pass-through output named ``loss`` (a tensor of
        shape (1,), an HF model's ``loss=None``) is dropped: under that name Lightning
        backpropagates, and only the objective may be there."""
        objective, outputs = self
        if not outputs:
            return objective
        if "loss" in outputs:
            outputs = {k: v for k, v in outputs.items() if k != "loss"}
        if objective is None:
            return outputs or None
        return {"loss": objective, **outputs} if outputs else objective


def fast_step(fit: FitSession, keyset: KeySet, output: dict[str, Any]) -> Step | None:
    """A step of a key set seen before, or ``None`` where the full path must decide."""
    # The guard: a plan decided on the same facts, read again in C, and the same verdicts.
    try:
        facts: Any = tuple(map(TENSOR_FACTS, keyset.tensors(output)))
    except AttributeError:  # a value that was a tensor is not one now
        return None
    if keyset.others is not None:
        facts = facts, tuple(map(type, keyset.others(output)))
    fast = keyset.plans.get(facts)
    if fast is None or fast.verdicts != fit.select.version:
        return None
    plan, terms, weights = fast.plan, fast.terms(output), fast.weights
    losses: Tensor | None = None
    penalty = None
    try:  # the total, as the key set's first step formed it
        if fast.single:
            total = terms[0]
        elif fast.chained:
            total = terms[0] + terms[1] if len(terms) == 2 else terms[0] + terms[1] + terms[2]
        else:
            losses = torch.stack(terms)
            if fit.total.weighting is not None:
                combined = fit.total.combine(plan, losses, 0, fit.module)
                total, weights, penalty = combined.total, combined.weights, combined.penalty
            else:
                total = losses.sum() if weights is None else torch.dot(losses, weights)
    except (RuntimeError, TypeError):  # another device than the key set's first step
        return None
    if not total.requires_grad:  # the full path says why (or skips the step under DDP)
        return None
    goal = total
    router = fit.routing.router
    if router is not None:
        assert losses is not None
        weighted = losses if weights is None else losses * weights
        goal = fit.routing.objective(router, plan.terms, list(terms), weighted, total)
        if penalty is not None and goal is not total:
            goal = goal + penalty
    if fit.distributed:
        goal = fit.absent.cover(fit.module, plan.terms, goal)
    metrics = None if fast.metrics is None else fast.metrics(output)
    step = fit.steps.completed if fit.check_nonfinite else None
    if not fit.log.stage_step(plan, fast.record, terms, losses, total, metrics, weights, step):
        return None
    fit.objective = goal  # (what Lightning backpropagates: see FitSession.on_train_batch_end)
    if fit.writes.due():
        fit.write_window()
    if fast.outputs:
        return Step((goal, {k: output[k] for k in fast.outputs}))
    return Step((goal, None))


def joint_step(fit: FitSession | None, core: Any, output: Any) -> Step:
    """Every other step of ``route_mode="joint"`` (``fit`` is ``None`` when ``total_loss`` is
    called outside a fit: the values are recorded, nothing is written)."""
    decided = _decide(fit, core, output)
    if isinstance(decided, Step):
        return decided
    parsed, plan, combined, step = decided
    names, terms = plan.terms, list(parsed.terms.values())
    # before any surrogate: they consume the graph that diagnostics differentiate
    if core.diagnostics is not None and core.diagnostics.due(step):
        core.diagnose(names, terms)
    goal = objective(fit, core, names, terms, combined)
    if fit is not None:
        goal = fit.absent.cover(core.module, names, goal)
    core.record_train(parsed, plan, combined, step)
    if fit is not None:
        fit.after_full_step(output, parsed, plan, combined, goal)
    return Step((goal, parsed.outputs or None))


def sequential_step(fit: FitSession, core: Any, output: Any) -> Step:
    """One pass of ``route_mode="sequential"``: this pass's route steps on its objective; the
    batch's values, gathered over its passes, are recorded after the last one."""
    routing = core.routing
    last = routing.last_pass()
    if not last:
        added.open_step(core.module, fresh=True)  # the next pass's forward adds to a new one
    decided = _decide(fit, core, output)
    if isinstance(decided, Step):
        result = decided
    else:
        parsed, plan, combined, _ = decided
        terms = list(parsed.terms.values())
        goal = objective(fit, core, plan.terms, terms, combined)
        result = Step((fit.absent.cover(core.module, plan.terms, goal), parsed.outputs or None))
        routing.pend(parsed)
    if last:
        passes = routing.take_passes()
        if passes.terms or passes.metrics:
            pass_plan = core.recorder.plan(
                "train", passes, 0, core.weighting is not None, fit.trainer
            )
            step = fit.global_step()
            losses = stack_terms(passes.terms) if passes.terms else None
            gathered = None if losses is None else core.total.combine(pass_plan, losses, step)
            core.record_train(passes, pass_plan, gathered, step)
    return result


def objective(
    fit: FitSession | None, core: Any, names: tuple[str, ...], terms: list[Tensor], combined: Any
) -> Tensor:
    """What Lightning backpropagates: the total, or a surrogate that leaves per-route or
    aggregated gradients in ``.grad`` (see routing and aggregation)."""
    total, losses, weights = combined.total, combined.losses, combined.weights
    router = core.routing.router_for_step(None if fit is None else fit.trainer)
    goal = total
    if router is not None:
        if core.aggregator is not None:
            raise ValueError(
                "aggregator= cannot be combined with per-key optimizers: both decide the "
                "shared parameters' gradient; expected one optimizer with aggregator=, or "
                "per-key optimizers without it"
            )
        weighted = losses if weights is None else losses * weights
        goal = core.routing.objective(router, names, terms, weighted, total)
    elif core.aggregator is not None and torch.is_grad_enabled():
        module = core.module
        shared = core.shared(module, names, terms)
        if len(names) >= 2 and shared:  # else the total's gradient is the aggregate
            ids = {id(p) for p in shared}
            others = [p for p in module.parameters() if p.requires_grad and id(p) not in ids]
            weighted = losses if weights is None else losses * weights
            goal = aggregation.surrogate(weighted, shared, others, core.aggregator)
    if combined.penalty is not None and goal is not total:
        goal = goal + combined.penalty  # the strategy's own parameters learn
    return goal


def nothing_to_learn(core: Any, world_size: int) -> Step:
    """A training step without a loss: ``None``, or under DDP a zero that joins the gradient
    all-reduce. A scalarizer pools terms over ranks: this rank joins it too."""
    if isinstance(core.weighting, ScalarizerWeighting):
        core.weighting.absent(core.module.device)
    return Step((zero_through_parameters(core.module, world_size), None))


def _decide(
    fit: FitSession | None, core: Any, output: Any
) -> Step | tuple[ParsedOutput, StepPlan, Combined, int]:
    """Parse, plan and combine a step's values, and guard them; a :class:`Step` where the step
    ends here (nothing to learn, a skipped non-finite step)."""
    trainer = None if fit is None else fit.trainer
    world_size = 1 if trainer is None else trainer.world_size
    parsed = parse_output(output, core.select, "train")
    if parsed is None or not parsed.terms:
        if parsed is not None:
            raise ValueError(no_terms_message(parsed, core.select, repr(core.module.loss_keys)))
        return nothing_to_learn(core, world_size)
    plan = core.recorder.plan("train", parsed, 0, core.weighting is not None, trainer)
    step = 0 if fit is None else fit.global_step()
    combined = core.total.combine(plan, stack_terms(parsed.terms), step, owner=core.module)
    guards = core.guards
    guards.warn_no_grad(parsed.terms)
    if guards.nonfinite == "skip" and guards.skip_nonfinite(combined.losses):
        return Step((zero_through_parameters(core.module, world_size), None))
    if torch.is_grad_enabled() and not combined.total.requires_grad:
        nothing_requires_grad(plan.terms, world_size)
        return nothing_to_learn(core, world_size)
    return parsed, plan, combined, step


__all__ = [
    "Step",
    "StepOutput",
    "fast_step",
    "joint_step",
    "nothing_to_learn",
    "objective",
    "sequential_step",
]
