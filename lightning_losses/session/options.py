"""The constructor's options: checked once, and changed later only through here (API.md §10).

An attribute that mirrors a constructor argument takes effect when assigned (``loss_weights``,
``nonfinite``, ``weighting``, ``aggregator``, ``eval_metrics``, ``eval_losses``; ``route_mode``
between fits) or is refused with an error that says how to change it (``loss_keys``); it never
silently does nothing. Whatever a step planned from the old value is planned again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from lightning_losses.checkpoints import hparams
from lightning_losses.evaluation import predictions
from lightning_losses.terms.values import describe
from lightning_losses.weighting.scalarizer import ScalarizerWeighting, is_scalarizer
from lightning_losses.weighting.static import LossWeights


def check_arguments(
    model: Any, weighting: Any, aggregator: Any, optimizer: Any, lr_scheduler: Any, inputs: Any
) -> Any:
    """The constructor's arguments that no single part owns, checked; returns the weighting to
    use (a torchjd scalarizer is wrapped in ``ScalarizerWeighting``)."""
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
    for name, value in (("optimizer", optimizer), ("lr_scheduler", lr_scheduler)):
        if value is not None and not callable(value):
            raise TypeError(f"{name} is {describe(value)}; expected a callable or None")
    if inputs is not None and not callable(inputs):
        raise TypeError(
            f"metric_inputs is {describe(inputs)}; expected a callable (predictions, batch) -> "
            "arguments of metric.update"
        )
    for part in (model, weighting, aggregator):
        if isinstance(part, nn.Module) and hparams.is_skeleton(part):
            hparams.materialize(part)  # a skeleton from a checkpoint's hyperparameters
    return weighting


def set_loss_weights(core: Any, loss_weights: Any) -> None:
    """``module.loss_weights = {...}``: takes effect from the next step."""
    core.weights = core.recorder.weights = LossWeights(loss_weights)
    core.select.name_terms(list(loss_weights or ()))
    core.plans_changed()


def set_nonfinite(core: Any, nonfinite: Any) -> None:
    """``module.nonfinite = ...``: takes effect from the next step."""
    core.guards.set_mode(nonfinite)
    core.plans_changed()


def set_weighting(core: Any, weighting: Any) -> Any:
    """``module.weighting = ...`` (see hooks.guard_assignment): takes effect from the next
    step; returns what the module registers (a torchjd scalarizer, wrapped)."""
    weighting = check_arguments(None, weighting, core.aggregator, None, None, None)
    learns = weighting is not None and any(p.requires_grad for p in weighting.parameters())
    if core.fit is not None and learns:
        raise RuntimeError(
            f"weighting={type(weighting).__name__}(...) assigned during a fit: its parameters "
            "are in none of the optimizers configure_optimizers built when the fit started, so "
            "it would weigh the terms without learning; expected it set before trainer.fit "
            "(or in the constructor)"
        )
    core.total.weighting = weighting
    core.scalarizer = isinstance(weighting, ScalarizerWeighting)
    core.name_weighting_terms(weighting)
    core.plans_changed()
    return weighting


def set_aggregator(core: Any, aggregator: Any) -> None:
    check_arguments(None, core.weighting, aggregator, None, None, None)
    core.aggregator = aggregator
    core.plans_changed()


def set_eval_metrics(core: Any, metrics: Any) -> Any:
    """``module.eval_metrics = ...``: the next evaluation epoch updates copies of these."""
    collection = None if metrics is None else predictions.as_collection(metrics)
    core.eval_metrics = collection
    core.evaluation.metrics = (
        None if collection is None else predictions.EvalMetrics(collection, core.inputs)
    )
    return collection


def set_route_mode(core: Any, route_mode: Any) -> None:
    """``module.route_mode = ...``: for the next fit (a running one keeps its own)."""
    if core.fit is not None:
        raise RuntimeError(
            f"route_mode={route_mode!r} assigned during a fit, which keeps the mode it "
            "started with; expected it set before trainer.fit (or in the constructor)"
        )
    core.routing.set_route_mode(route_mode)


def refuse(core: Any, name: str, value: Any) -> None:
    """An option that cannot change after construction: say so rather than ignore it."""
    raise AttributeError(
        f"{type(core.module).__name__}.{name} cannot change after construction (assigned "
        f"{describe(value)}); expected it passed to the constructor: "
        f"super().__init__({name}=...) or LossDictModule(model, {name}=...)"
    )


def set_eval_losses(core: Any, eval_losses: Any) -> None:
    """``module.eval_losses = ...``: the next evaluation takes its losses from there."""
    predictions.check_eval_losses(eval_losses)
    core.evaluation.eval_losses = eval_losses


#: Each option the module shows as an attribute: how it is read from the ``Core``, and what
#: assigning it does.
_OPTIONS: dict[str, tuple[Callable[[Any], Any], Callable[[Any, Any], Any]]] = {
    "loss_weights": (lambda core: core.weights.given, set_loss_weights),
    "nonfinite": (lambda core: core.guards.nonfinite, set_nonfinite),
    "loss_keys": (lambda core: core.loss_keys, lambda core, v: refuse(core, "loss_keys", v)),
    "route_mode": (lambda core: core.routing.route_mode, set_route_mode),
    "eval_losses": (lambda core: core.evaluation.eval_losses, set_eval_losses),
    "weighting": (lambda core: core.weighting, set_weighting),
    "aggregator": (lambda core: core.aggregator, set_aggregator),
    "eval_metrics": (lambda core: core.eval_metrics, set_eval_metrics),
}


def attribute(name: str, doc: str) -> Any:
    """The module's attribute for option ``name`` (a property; see the module docstring).
    Assignments during construction are the constructor's own: it hands them to the Core."""
    read, assign = _OPTIONS[name]

    def get(module: Any) -> Any:
        return read(module._core)

    def put(module: Any, value: Any) -> None:
        core = module.__dict__.get("_core")
        if core is not None:
            assign(core, value)

    return property(get, put, doc=doc)


def assign(core: Any, name: str, value: Any) -> Any:
    """Assign option ``name`` (a module-valued one, from session/hooks.py); returns what the
    module registers, when that differs from ``value``."""
    return _OPTIONS[name][1](core, value)
