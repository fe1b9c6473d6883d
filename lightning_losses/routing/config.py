"""What a route map says: its types, its parsing into one Lightning optimizer config, its checks.

``configure_optimizers`` may return ``{"seg": Adam, "depth": {"optimizer": SGD, "lr_scheduler":
...}, "loss": AdamW}``; :func:`parse_route_map` checks it (route keys, per-route dict keys,
frequencies, clipping, every trainable parameter in exactly one optimizer) and wraps it in one
:class:`~lightning_losses.routing.optimizer.RoutedOptimizer` for Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from lightning_losses import _lightning
from lightning_losses.routing.optimizer import RoutedOptimizer
from lightning_losses.routing.route import Route, route_name
from lightning_losses.routing.schedulers import RoutePlateau, RouteScheduler, route_parts
from lightning_losses.terms.values import TOTAL, describe


class _RouteConfigRequired(TypedDict):
    optimizer: Optimizer


class RouteConfig(_RouteConfigRequired, total=False):
    """A route's optimizer dict (Lightning's optimizer dict, plus what routes add)."""

    lr_scheduler: Any  # a scheduler, or Lightning's scheduler dict
    frequency: int
    gradient_clip_val: float | None
    gradient_clip_algorithm: str | None


#: What ``configure_optimizers`` may return for per-key optimizers: annotate it ``-> RouteMap``.
RouteMap = Mapping[str | tuple[str, ...], Optimizer | RouteConfig]


def is_route_map(config: Any) -> bool:
    """Whether ``configure_optimizers`` returned a route map rather than a Lightning config."""
    if not isinstance(config, Mapping) or not config:
        return False
    if "optimizer" in config:
        return False  # Lightning's own dict
    return all(isinstance(k, (str, tuple)) for k in config)


def parse_route_map(
    config: Mapping[Any, Any], module: nn.Module
) -> dict[str, Any] | tuple[list[Optimizer], list[dict[str, Any]]]:
    """A route map -> a Lightning optimizer config around one :class:`RoutedOptimizer`.

    Checks that every trainable parameter belongs to exactly one route optimizer, naming the
    parameters and routes otherwise.
    """
    optimizers: dict[Route, Optimizer] = {}
    schedulers: list[tuple[Route, Any]] = []
    frequencies: dict[Route, int] = {}
    clipping: dict[Route, tuple[float | None, str | None]] = {}
    for key, value in config.items():
        route = (key,) if isinstance(key, str) else tuple(key)
        if not route or not all(isinstance(t, str) and t for t in route):
            raise TypeError(
                f"optimizer route {key!r} is {describe(key)}; expected a loss-term name, a tuple "
                f"of names, or {TOTAL!r}"
            )
        if TOTAL in route and len(route) > 1:
            raise ValueError(
                f"optimizer route {key!r} mixes {TOTAL!r} (every term) with single terms; expected "
                f"{TOTAL!r} alone"
            )
        if isinstance(value, Mapping):
            if "optimizer" not in value:
                raise ValueError(
                    f"optimizer route {key!r} maps to a dict without 'optimizer' (keys "
                    f"{sorted(value)}); expected an optimizer or {{'optimizer': ..., "
                    "'lr_scheduler': ...}"
                )
            unknown = sorted(set(value) - ROUTE_KEYS)
            if unknown:
                raise ValueError(
                    f"optimizer route {key!r} has unknown keys {unknown}; expected some of "
                    f"{sorted(ROUTE_KEYS)}"
                )
            optimizer, scheduler = value["optimizer"], value.get("lr_scheduler")
            if "frequency" in value:
                frequencies[route] = _frequency(key, value["frequency"])
            if "gradient_clip_val" in value or "gradient_clip_algorithm" in value:
                clipping[route] = _clipping(key, value)
        else:
            optimizer, scheduler = value, None
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer route {key!r} maps to {describe(optimizer)}; expected a "
                "torch.optim.Optimizer"
            )
        optimizers[route] = optimizer
        if scheduler is not None:
            schedulers.append((route, scheduler))
    if frequencies and len(frequencies) != len(optimizers):
        missing = [route_name(r) for r in optimizers if r not in frequencies]
        raise ValueError(
            f"optimizer routes {missing} have no 'frequency' while "
            f"{[route_name(r) for r in frequencies]} have one; expected a frequency on every "
            "route (routes with a frequency take turns) or on none"
        )
    check_ownership(optimizers, module)
    names = {id(p): n for n, p in module.named_parameters()}
    composite = RoutedOptimizer(optimizers, frequencies, clipping, parameter_names=names)
    configs = []
    for route, scheduler in schedulers:
        entry = dict(scheduler) if isinstance(scheduler, Mapping) else {"scheduler": scheduler}
        # LearningRateMonitor names a scheduler's series by its config's "name", else after
        # its optimizer's class; a route's series is "lr-<route>" unless the user named it.
        if entry.get("name") is None:
            entry["name"] = f"lr-{route_name(route)}"
        inner = entry["scheduler"]
        proxy = RoutePlateau if isinstance(inner, ReduceLROnPlateau) else RouteScheduler
        entry["scheduler"] = proxy(inner, composite, route)
        configs.append(entry)
    trainer = _lightning.trainer_or_none(module)
    if trainer is not None:
        _lightning.name_lr_series_by_parts(trainer, route_parts)
    if len(configs) > 1:  # Lightning's dict form takes one scheduler; its two-list form many
        return [composite], configs
    result: dict[str, Any] = {"optimizer": composite}
    if configs:
        result["lr_scheduler"] = configs[0]
    return result


#: What a route's optimizer dict may hold.
ROUTE_KEYS = frozenset(
    {"optimizer", "lr_scheduler", "frequency", "gradient_clip_val", "gradient_clip_algorithm"}
)
_CLIP_ALGORITHMS = ("norm", "value")


def _frequency(key: Any, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"optimizer route {key!r} has frequency {value!r}; expected a positive int (the "
            "number of consecutive optimizer steps of its turn)"
        )
    return value


def _clipping(key: Any, value: Mapping[str, Any]) -> tuple[float | None, str | None]:
    clip_val = value.get("gradient_clip_val")
    algorithm = value.get("gradient_clip_algorithm")
    if clip_val is not None and (
        isinstance(clip_val, bool) or not isinstance(clip_val, (int, float)) or clip_val < 0
    ):
        raise ValueError(
            f"optimizer route {key!r} has gradient_clip_val {clip_val!r}; expected a "
            "non-negative number or None"
        )
    if algorithm is not None and algorithm not in _CLIP_ALGORITHMS:
        raise ValueError(
            f"optimizer route {key!r} has gradient_clip_algorithm {algorithm!r}; expected "
            "'norm' or 'value'"
        )
    return (None if clip_val is None else float(clip_val)), algorithm


def check_ownership(optimizers: Mapping[Route, Optimizer], module: nn.Module) -> None:
    names = {id(p): n for n, p in module.named_parameters()}
    owner: dict[int, Route] = {}
    for route, optimizer in optimizers.items():
        for group in optimizer.param_groups:
            for param in group["params"]:
                other = owner.get(id(param))
                if other is not None and other != route:
                    raise ValueError(
                        f"parameter {names.get(id(param), '<not in the module>')!r} is in the "
                        f"optimizers of routes {route_name(other)!r} and {route_name(route)!r}; "
                        "expected each parameter in exactly one optimizer"
                    )
                owner[id(param)] = route
    orphans = [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in owner]
    if orphans:
        shown = ", ".join(map(repr, orphans[:8])) + (" ..." if len(orphans) > 8 else "")
        raise ValueError(
            f"trainable parameters {shown} are in no optimizer (routes: "
            f"{', '.join(repr(route_name(r)) for r in optimizers)}); expected every trainable "
            "parameter in exactly one optimizer (freeze it with requires_grad_(False) otherwise)"
        )
