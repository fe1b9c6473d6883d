"""What a ``LossDictModule`` does at each Lightning hook and in each step, in one place.

``LossDictModule`` is the public surface: its hooks are one-line delegations to the methods of
the same name here, and a subclass that overrides a hook without ``super()`` still reaches them
(see :mod:`lightning_losses.session.hooks`). Each decision is made here, in the order Lightning runs
the hooks; *what* is done is asked of the object that owns it:

    terms.parse_output   what forward returned -> terms, metrics, pass-through outputs
    Recorder             per-key-set plans, the accumulators, writes to Lightning
    Total                terms -> weighted total (static weights x weighting)
    Guards               non-finite losses, terms without gradient, nothing to learn
    RoutingSession       per-key optimizers: turns, sequential passes, clipping, resume

One training step: batch start opens the step (add_loss collection, routing turn) -> forward ->
``step``: parse -> plan (cached per key set) -> combine -> guards -> objective (routes,
aggregator or the total) -> record -> Lightning's backward and optimizer step -> at a batch where
Lightning writes its step metrics, one reduction (one collective under DDP) and the loggers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_losses import _lightning
from lightning_losses.checkpoints import hparams
from lightning_losses.checkpoints import state as checkpoint_state
from lightning_losses.distributed import absent_terms
from lightning_losses.evaluation import predictions as evaluation
from lightning_losses.evaluation.loop import Evaluation, StepOutput, step_output
from lightning_losses.gradients import aggregation
from lightning_losses.gradients.diagnostics import GradientDiagnostics, gradient_statistics
from lightning_losses.gradients.shared import SharedParameters
from lightning_losses.logging.recorder import (
    LazyValue,
    Recorder,
    skipped_steps_metric,
)
from lightning_losses.routing import config as routing_config
from lightning_losses.routing.session import RouteMode, RoutingSession, is_routed, translate
from lightning_losses.session import fast_step as fastpath
from lightning_losses.session.guards import (
    Guards,
    NonFinite,
    nothing_requires_grad,
    zero_through_parameters,
)
from lightning_losses.terms import added as context
from lightning_losses.terms.calling import ModelCall
from lightning_losses.terms.parse import ParsedOutput, no_terms_message, parse_output
from lightning_losses.terms.selector import KeySelector, LossKeys
from lightning_losses.terms.values import describe
from lightning_losses.weighting.scalarizer import ScalarizerWeighting, is_scalarizer
from lightning_losses.weighting.static import LossWeights, WeightValue
from lightning_losses.weighting.total import Combined, Total, stack_terms

STAGES = ("train", "val", "test")
#: What ``_fast_step`` returns when the full path must take the step.
_FULL_PATH = object()


def check_arguments(
    model: Any,
    weighting: Any,
    aggregator: Any,
    optimizer: Any,
    lr_scheduler: Any,
    metric_inputs: Any,
) -> Any:
    """The constructor's arguments that no single object below owns, checked; returns the
    weighting to use (a torchjd scalarizer is wrapped in ``ScalarizerWeighting``)."""
    for name, value in (("model", model), ("weighting", weighting)):
        if value is not None and not isinstance(value, nn.Module):
            raise TypeError(f"{name} is {describe(value)}; expected an nn.Module or None")
    if weighting is not None and is_scalarizer(weighting):  # torchjd's FAMO, IMTLL, ...
        weighting = ScalarizerWeighting(weighting)
    if aggregator is not None and not callable(aggregator):
        raise TypeError(
            f"aggregator is {describe(aggregator)}; expected a callable [K, P] -> [P] such as "
            "torchjd.aggregation.UPGrad() or None"
        )
    if aggregator is not None and weighting is not None:
        raise ValueError(
            f"weighting={type(weighting).__name__}(...) and aggregator={aggregator!r} both "
            "decide how the terms combine; expected one of them (static loss_weights still "
            "scale the terms before aggregation)"
        )
    for name, value in (
        ("optimizer", optimizer),
        ("lr_scheduler", lr_scheduler),
        ("metric_inputs", metric_inputs),
    ):
        if value is not None and not callable(value):
            expected = (
                "a callable (predictions, batch) -> arguments of metric.update"
                if name == "metric_inputs"
                else "a callable or None"
            )
            raise TypeError(f"{name} is {describe(value)}; expected {expected}")
    for part in (model, weighting, aggregator):
        if isinstance(part, nn.Module) and hparams.is_skeleton(part):
            hparams.materialize(part)  # a skeleton from a checkpoint's hyperparameters
    return weighting


class Lifecycle:
    """The library's side of one ``LossDictModule`` (see the module docstring)."""

    def __init__(
        self,
        module: Any,
        *,
        loss_keys: LossKeys,
        total_key: str | None,
        loss_weights: Any,
        weighting: Any,
        aggregator: Callable[[Tensor], Tensor] | None,
        nonfinite: NonFinite,
        prog_bar: Sequence[str],
        grad_diagnostics_every_n_steps: int | None,
        shared_parameters: Any,
        call: Any,
        eval_losses: evaluation.EvalLosses,
        metrics: evaluation.MetricCollection | None,
        metric_inputs: evaluation.MetricInputs | None,
        route_mode: RouteMode,
        provided_validation_step: Any = None,
    ) -> None:
        self.module = module
        #: LossDictModule's own validation_step (a subclass may define its own).
        self._provided_validation_step = provided_validation_step
        self.select = KeySelector(loss_keys, total_key)
        # before the first training step, what the configuration names decides (API.md §1)
        self.select.name_terms(list(loss_weights or ()))
        weighted_terms = getattr(weighting, "terms", None)
        if isinstance(weighted_terms, tuple):
            self.select.name_terms(weighted_terms, all_terms=True)
        self.weights = LossWeights(loss_weights)
        self.total = Total(weighting)
        self._scalarizer = isinstance(weighting, ScalarizerWeighting)
        self.guards = Guards(module, nonfinite)
        self.recorder = Recorder(self.weights, prog_bar)
        self.routing = RoutingSession(route_mode)
        self.model_call = ModelCall(call)
        self.evaluation = Evaluation(
            module,
            self.select,
            self.recorder,
            self.total,
            eval_losses,
            None if metrics is None else evaluation.EvalMetrics(metrics, metric_inputs),
        )
        self.aggregator = aggregator
        self.shared = SharedParameters(shared_parameters)
        #: Optional terms under DDP/FSDP2: zero gradients where the objective does not reach.
        self.absent = absent_terms.AbsentTerms()
        self.diagnostics = (
            GradientDiagnostics(grad_diagnostics_every_n_steps, self.shared)
            if grad_diagnostics_every_n_steps is not None
            else None
        )
        self._undiagnosable: set[tuple[str, ...]] = set()  # key sets warned about
        self._checked_unmatched = False
        self._epoch_just_ended = False
        self._step_at_batch_start = 0
        self._quiet: Any = None
        #: This fit's fast plans (None: every step takes the full path), see on_fit_start.
        self._fast: Any = None
        self._trainer: Any = None
        self._writes: Any = None
        self._steps: Any = None
        self._distributed = False
        #: The progress bar's values dict (looked up at the first training batch of a fit), and
        #: one lazy value per shown name (see recorder.LazyValue).
        self._bar: dict[str, Any] | None = None
        self._lazy: dict[str, LazyValue] = {}

    @property
    def weighting(self) -> Any:
        return self.total.weighting

    def _combines_terms(self) -> str | None:
        if self.weighting is not None:
            return "weighting"
        return "aggregator" if self.aggregator is not None else None

    # ------------------------------------------------------------------ steps

    def step(self, output: Any, stage: str, batch: Any, loader: int | None) -> StepOutput:
        """``total_loss``: reduce what ``forward`` returned, record it, write when Lightning
        writes (see the module docstring)."""
        if stage not in STAGES:
            raise ValueError(f"stage={stage!r}; expected one of {', '.join(map(repr, STAGES))}")
        module = self.module
        collected = context.STEP.get()  # add_loss / add_metric: this step's collection
        if collected is not None and collected.owner is module:
            context.STEP.set(None)
            if collected.metrics:
                self.select.added_metrics.update(collected.metrics)  # never a term
                output = context.merge(output, collected)
            elif collected.losses:
                output = context.merge(output, collected)
        fast = self._fast
        if fast is not None and stage == "train" and type(output) is dict:
            plan = fast.get(tuple(output))
            if plan is not None:
                result = self._fast_step(plan, output)
                if result is not _FULL_PATH:
                    return result
        trainer = _lightning.trainer_or_none(module)
        if stage != "train":
            if loader is None:
                loader = _lightning.current_dataloader_idx(trainer)
            return self.evaluation.step(output, stage, batch, loader, trainer)
        routing = self.routing
        passing = routing.sequential_pass()
        if passing is not None and not routing.last_pass():
            context.open_step(module, fresh=True)  # the next pass's forward adds to a new one
        result = self._training_step(output, batch, trainer, passing is not None)
        if passing is not None:
            if not routing.last_pass():
                return result  # the batch's values are recorded after its last pass
            self._record_passes(trainer)
        self.recorder.log.step_taken()
        if trainer is not None and _lightning.writes_step_metrics(trainer):
            self._write_window(trainer)
        return result

    def _fast_step(self, fast: fastpath.FastPlan, output: dict[str, Any]) -> Any:
        """A training step of a key set seen before (see fastpath.py); ``_FULL_PATH`` where the
        full path must decide (it then explains what is wrong, or handles the exception)."""
        plan = fast.plan
        terms = fast.terms(output)
        weights = fast.weights
        penalty = None
        try:
            if fast.single:
                losses = None
                total = terms[0]
            elif fast.chained:
                losses = None
                total = terms[0] + terms[1] if len(terms) == 2 else terms[0] + terms[1] + terms[2]
            else:
                losses = torch.stack(terms)
                if self.total.weighting is not None:
                    combined = self.total.combine(plan, losses, 0, self.module)
                    total, weights, penalty = combined.total, combined.weights, combined.penalty
                elif weights is None:
                    total = losses.sum()
                else:
                    total = torch.dot(losses, weights)
        except (RuntimeError, TypeError):
            return _FULL_PATH  # another shape, type or device than the plan's first step
        if not total.requires_grad:  # the full path says why (or skips the step under DDP)
            return _FULL_PATH
        objective = total
        router = self.routing.router
        if router is not None:
            assert losses is not None
            weighted = losses if weights is None else losses * weights
            objective = self.routing.objective(router, plan.terms, list(terms), weighted, total)
            if penalty is not None and objective is not total:
                objective = objective + penalty
        if self._distributed:
            objective = self.absent.cover(self.module, plan.terms, objective)
        log = self.recorder.log
        steps = self._steps if self.guards.nonfinite == "raise" else None
        row = log.stage(plan, total.device, None if steps is None else steps.completed)
        record = fast.record
        try:
            fastpath.set_grad_enabled(False)  # (grad is on: total requires grad)
            if record == "head":  # [term, total], both the one term
                plan.head_views[row].copy_(total)
            elif record == "copies":
                plan.terms_views[row].copy_(losses)  # type: ignore[arg-type]
                plan.total_views[row].copy_(total)
                if fast.metrics is not None:
                    plan.metric_views[row].copy_(fast.metrics(output)[0])
            else:
                values = (*terms, total) if not plan.sole_total else (total,)
                if fast.metrics is not None:
                    values += fast.metrics(output)
                plan.prefix_views[row].copy_(torch.stack(values))
            if plan.learned_weights:
                plan.weight_views[row].copy_(weights)  # type: ignore[arg-type]
        except (RuntimeError, TypeError):
            log.unstage(plan)
            return _FULL_PATH
        finally:
            fastpath.set_grad_enabled(True)
        if self._bar is not None:
            self._show(plan.bar_columns, plan.bar_views[row])
        log.session.window_open = True
        if self._writes.due():
            self._write_window(self._trainer)
        if fast.outputs:
            return {"loss": objective, **{k: output[k] for k in fast.outputs if k != "loss"}}
        return objective

    def _training_step(self, output: Any, batch: Any, trainer: Any, sequential: bool) -> StepOutput:
        parsed = parse_output(output, self.select, "train")
        world_size = trainer.world_size if trainer is not None else 1
        if parsed is None or not parsed.terms:
            if parsed is not None:
                raise ValueError(no_terms_message(parsed, self.select, repr(self.module.loss_keys)))
            return self._nothing_to_learn(world_size)
        plan = self.recorder.plan("train", parsed, 0, self.weighting is not None, trainer)
        step = trainer.global_step if trainer is not None else 0
        combined = self.total.combine(plan, stack_terms(parsed.terms), step, owner=self.module)
        guards = self.guards
        guards.warn_no_grad(parsed.terms)
        if guards.nonfinite == "skip" and guards.skip_nonfinite(combined.losses):
            return zero_through_parameters(self.module, world_size)
        if torch.is_grad_enabled() and not combined.total.requires_grad:
            nothing_requires_grad(plan.terms, world_size)
            return self._nothing_to_learn(world_size)
        terms = list(parsed.terms.values())
        # before any surrogate below: they consume the graph that diagnostics differentiate
        if self.diagnostics is not None and self.diagnostics.due(step):
            self._diagnose(plan.terms, terms)
        objective = self._objective(plan.terms, terms, combined, trainer)
        objective = self.absent.cover(self.module, plan.terms, objective)
        if sequential:
            self.routing.pend(parsed)
        else:
            self._record_train(parsed, plan, combined, step)
            if self._bar is not None:
                self._show(plan.bar_columns, plan.buffer_bar_views)
            if self._fast is not None and type(output) is dict:
                fast = fastpath.build(
                    output, parsed, plan, self.weighting is not None, combined.losses
                )
                if fast is not None:
                    routed = self.routing.router is not None
                    fast.single, fast.chained = (
                        fast.single and not routed,
                        fast.chained and not routed,
                    )
                    fast.record = fastpath.record_mode(fast)
                    self._fast.put(tuple(output), fast)
        return step_output(objective, parsed)

    def _record_passes(self, trainer: Any) -> None:
        """route_mode="sequential": the batch's values, gathered over its passes, as one step."""
        parsed = self.routing.take_passes()
        if not parsed.terms and not parsed.metrics:
            return
        plan = self.recorder.plan("train", parsed, 0, self.weighting is not None, trainer)
        step = trainer.global_step if trainer is not None else 0
        combined = (
            self.total.combine(plan, stack_terms(parsed.terms), step) if parsed.terms else None
        )
        self._record_train(parsed, plan, combined, step)

    def _record_train(
        self, parsed: ParsedOutput, plan: Any, combined: Combined | None, step: int
    ) -> None:
        self.recorder.record(
            "train",
            parsed,
            plan,
            combined,
            self.module.device,
            step=step,
            check_nonfinite=self.guards.nonfinite == "raise",
        )

    def _show(self, columns: tuple[tuple[str, int], ...], views: Any) -> None:
        """The progress bar's values of this step: lazy views of its recorded values."""
        bar, lazies = self._bar, self._lazy
        assert bar is not None
        for (name, _), view in zip(columns, views):
            lazy = lazies.get(name) or lazies.setdefault(name, LazyValue())
            lazy.source = view
            bar[name] = lazy

    def _objective(
        self, names: tuple[str, ...], terms: list[Tensor], combined: Combined, trainer: Any
    ) -> Tensor:
        """What Lightning backpropagates: the total, or a surrogate that leaves per-route or
        aggregated gradients in ``.grad`` (see routing and aggregation)."""
        total, losses, weights = combined.total, combined.losses, combined.weights
        router = self.routing.router_for_step(trainer)
        objective = total
        if router is not None:
            if self.aggregator is not None:
                raise ValueError(
                    "aggregator= cannot be combined with per-key optimizers: both decide the "
                    "shared parameters' gradient; expected one optimizer with aggregator=, or "
                    "per-key optimizers without it"
                )
            weighted = losses if weights is None else losses * weights
            objective = self.routing.objective(router, names, terms, weighted, total)
        elif self.aggregator is not None and torch.is_grad_enabled():
            module = self.module
            shared = self.shared(module, names, terms)
            if len(names) >= 2 and shared:  # else the total's gradient is the aggregate
                ids = {id(p) for p in shared}
                others = [p for p in module.parameters() if p.requires_grad and id(p) not in ids]
                weighted = losses if weights is None else losses * weights
                objective = aggregation.surrogate(weighted, shared, others, self.aggregator)
        if combined.penalty is not None and objective is not total:
            objective = objective + combined.penalty  # the strategy's own parameters learn
        return objective

    def _diagnose(self, names: tuple[str, ...], terms: list[Tensor]) -> None:
        """Record gradient norms and cosines on the shared parameters (see diagnostics.py)."""
        assert self.diagnostics is not None
        if not torch.is_grad_enabled() or not any(t.requires_grad for t in terms):
            return
        params = self.diagnostics.parameters(self.module, names, terms)
        if not params:
            if names not in self._undiagnosable:
                self._undiagnosable.add(names)
                rank_zero_warn(
                    f"gradient diagnostics: no trainable parameter is reached by two or more of "
                    f"the terms {list(names)}; pass shared_parameters= to name the shared ones"
                )
            return
        self.recorder.record_diagnostics(names, gradient_statistics(terms, params))

    def _nothing_to_learn(self, world_size: int) -> StepOutput:
        """A training step without a loss: ``None``, or under DDP a zero that joins the
        gradient all-reduce. A scalarizer pools terms over ranks: this rank joins it too."""
        if isinstance(self.weighting, ScalarizerWeighting):
            self.weighting.absent(self.module.device)
        return zero_through_parameters(self.module, world_size)

    def _write_window(
        self, trainer: Any, to_callbacks: bool = True, labels: tuple[int, int] | None = None
    ) -> None:
        extra = (
            skipped_steps_metric(self.module.skipped_steps)
            if self.guards.nonfinite == "skip"
            else {}
        )
        reduced = self.recorder.write_window(
            trainer, self.module.device, extra, to_callbacks=to_callbacks, labels=labels
        )
        self.guards.raise_if_nonfinite(reduced, trainer.world_size)

    def after_step(self, weighting: ScalarizerWeighting, batch: Any) -> None:
        """FAMO's update: the batch's losses recomputed after the model's step (a forward
        without gradients, in the mode training runs in)."""
        module = self.module
        with torch.no_grad():
            context.open_step(module, fresh=True)
            try:
                output = module(batch)
                collected = context.drain(module)
            finally:
                context.close(module)
        if collected is not None:
            output = context.merge(output, collected)
        parsed = parse_output(output, self.select, "train")
        if parsed is None or not parsed.terms:
            weighting.absent(module.device)
            return
        weighting.after_step(stack_terms(parsed.terms), tuple(parsed.terms))

    def translate_routes(self, config: Any) -> Any:
        """What ``configure_optimizers`` returned, a route map made one ``RoutedOptimizer``.
        Route names are term names: before the first training step they decide (API.md §1),
        and without a ``"loss"`` route (the total) they are all the terms there are."""
        if not routing_config.is_route_map(config):
            return config
        routed = [name for key in config for name in ((key,) if isinstance(key, str) else key)]
        self.select.name_terms([n for n in routed if n != "loss"], all_terms="loss" not in routed)
        return translate(config, self.module)

    def active_routes(self) -> frozenset[str]:
        return self.routing.active_routes(_lightning.trainer_or_none(self.module))

    def clip(self, optimizer: Optimizer, clip_val: float | None, algorithm: str | None) -> None:
        """``configure_gradient_clipping``: Lightning's clipping, per route with routes."""
        module = self.module
        if self.routing.single_optimizer:  # known from this fit's first batch
            if clip_val is not None:
                module.clip_gradients(optimizer, clip_val, algorithm)
            return
        composite = is_routed(optimizer)
        if composite is not None:
            self.routing.clip(module, composite, clip_val, algorithm)
        elif clip_val is not None:  # (else Lightning's own hook would do nothing either)
            module.clip_gradients(optimizer, clip_val, algorithm)

    # ------------------------------------------------------------------ Lightning hooks

    def configure_callbacks(self) -> None:
        # A trainer is attached and Lightning checks its loops right after this hook (before
        # setup). This module provides validation_step for those who validate: one withdrawn
        # for the last fit (see setup) is back, and a fit without a val loader should not be
        # told "You defined a validation_step" (lifted again in setup).
        self.module.__dict__.pop("validation_step", None)
        if self._quiet is None:
            self._quiet = _lightning.quiet_unused_validation_step()

    def setup(self, stage: str) -> None:
        _lightning.unquiet(self._quiet)
        self._quiet = None
        # Tuner.scale_batch_size requests a val loader wherever validation_step is defined: the
        # provided one is withdrawn for a fit without a val loader.
        module = self.module
        if (
            stage == "fit"
            and type(module).validation_step is self._provided_validation_step
            and not _lightning.fit_has_val_loader(module.trainer)
        ):
            module.validation_step = functools.partial(pl.LightningModule.validation_step, module)

    def on_fit_start(self) -> None:
        self.setup("fit")
        trainer = self.module.trainer
        log = self.recorder.log
        log.begin("fit")
        self.recorder.summaries.reset()
        self.routing.begin_fit()
        self.routing.check_restored_routes(trainer)
        # What this fit's steps look up every time, looked up once (see _fast_step). The fast
        # path serves the options whose step is a plain function of the terms.
        self._trainer = trainer
        self._writes = _lightning.StepWrites(trainer)
        self._steps = _lightning.step_counter(trainer)
        self._distributed = trainer.world_size > 1
        self._bar = None  # (Lightning replaces it around the sanity check)
        eligible = (
            self._steps is not None  # automatic optimization
            and self.guards.nonfinite != "skip"  # a host-side decision every step
            and self.diagnostics is None
            and self.aggregator is None
            and self.routing.route_mode == "joint"
        )
        self._fast = log.session.fast if eligible else None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # (every training batch: attribute reads and one C call unless something is to do)
        module = self.module
        self._epoch_just_ended = False
        context.STEP.set(context.Collected(module))  # add_loss / add_metric of this step
        if self._scalarizer:  # FAMO: did this batch step?
            self._step_at_batch_start = module.trainer.global_step
        if self._bar is None:
            self._bar = _lightning.progress_bar_values(module.trainer)
        routing = self.routing
        if not routing.single_optimizer and routing.begin_batch(
            module.trainer, self._combines_terms()
        ):
            router = routing.router
            assert router is not None
            self.recorder.show_route_losses(router.routes)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        module = self.module
        collected = context.STEP.get()
        if collected is not None and collected.owner is module:
            context.STEP.set(None)  # a step that never reached total_loss keeps nothing
        # a callback asked to stop after this batch (Timer, EarlyStopping): Lightning writes its
        # own step metrics here, so the last window is written here too, with its labels
        trainer = self._trainer
        if (
            trainer is not None
            and trainer.should_stop
            and self.recorder.log.window_open
            and _lightning.writes_step_metrics(trainer)
        ):
            self._write_window(trainer)
        if self._scalarizer:
            weighting = self.weighting
            if weighting.needs_after_step and module.trainer.global_step > (
                self._step_at_batch_start  # an optimizer step ran
            ):
                self.after_step(weighting, batch)

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        if self.guards.drop_pending:
            self.guards.drop_skipped_gradients()

    def on_train_epoch_end(self) -> None:
        module = self.module
        reduced = self.recorder.end_train_epoch(module)
        self.guards.raise_if_nonfinite(reduced, module.trainer.world_size)
        epoch_end = getattr(self.weighting, "epoch_end", None)
        if epoch_end is not None:
            epoch_end(self.recorder.train_terms_of(reduced))
        self._epoch_just_ended = True
        if not self._checked_unmatched:
            self._checked_unmatched = True
            for source, entries in (
                ("loss_weights", self.weights.unmatched()),
                ("loss_keys", self.select.unmatched()),
                ("optimizer route", self.routing.unmatched()),
            ):
                for entry in entries:
                    rank_zero_warn(
                        f"{source} entry {entry!r} matched no loss term during the first "
                        "training epoch; check its spelling"
                    )

    def on_train_end(self) -> None:
        # Training stopped (max_epochs, max_steps, a callback's should_stop, a Timer): the steps
        # since the last write are still to be written.
        trainer = self.module.trainer
        if self.recorder.log.window_open:
            # after an epoch's end the monitors keep its means (see on_train_epoch_end); a run
            # stopped mid-epoch has none, and the last window is what it has
            self._write_window(
                trainer,
                to_callbacks=not self._epoch_just_ended,
                labels=_lightning.last_batch_labels(trainer),
            )
        self.recorder.write_kinds(trainer)

    def on_validation_start(self) -> None:
        # validate(): a call of its own; a validation inside fit belongs to the fit's session
        if _lightning.running(self.module.trainer) != "fit":
            self.recorder.log.begin("validate")

    def on_test_start(self) -> None:
        self.recorder.log.begin("test")

    def on_validation_epoch_start(self) -> None:
        self.evaluation.begin("val")

    def on_test_epoch_start(self) -> None:
        self.evaluation.begin("test")

    def on_validation_epoch_end(self) -> None:
        self.evaluation.end("val")

    def on_test_epoch_end(self) -> None:
        self.evaluation.end("test")

    def on_validation_batch_start(self, batch: Any, batch_idx: int, loader: int = 0) -> None:
        context.open_step(self.module, fresh=True)

    def on_test_batch_start(self, batch: Any, batch_idx: int, loader: int = 0) -> None:
        context.open_step(self.module, fresh=True)

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        context.close(self.module)

    def on_test_batch_end(self, *args: Any, **kwargs: Any) -> None:
        context.close(self.module)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint_state.save(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint_state.load(self, checkpoint)


__all__ = ["STAGES", "Lifecycle", "StepOutput", "WeightValue", "step_output"]
