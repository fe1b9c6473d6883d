"""Which route a parameter group belongs to, and what a group without a route is filled with.

A group added to a ``RoutedOptimizer`` (``add_param_group``, or all of them assigned at once as
``BaseFinetuning`` does) goes to the route named by its ``"route"`` key, else to the ``"loss"``
route (the weighted total: what a plain optimizer would train it on), else to the only route.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from torch.optim import Optimizer

from lightning_losses.routing.route import Route, route_name
from lightning_losses.terms.values import TOTAL


def named_route(optimizers: Mapping[Route, Optimizer], group: Mapping[str, Any]) -> Route | None:
    """The route a group's ``"route"`` key names (``None`` without the key); an error naming the
    routes for a name that is none of them."""
    if "route" not in group:
        return None
    name = group["route"]
    key = tuple(name) if isinstance(name, (tuple, list)) else (name,)
    if key in optimizers:
        return key
    for route in optimizers:
        if route_name(route) == name:
            return route
    raise ValueError(
        f"parameter group has route {name!r}; expected one of {[route_name(r) for r in optimizers]}"
    )


def default_route(
    optimizers: Mapping[Route, Optimizer], params: Iterable[Any], name: Callable[[Any], str]
) -> Route:
    """Where a group without ``"route"`` goes: the ``"loss"`` route, else the only route; an
    error naming its parameters (``name``) and the routes otherwise."""
    if (TOTAL,) in optimizers:
        return (TOTAL,)
    if len(optimizers) == 1:
        return next(iter(optimizers))
    params = list(params)
    shown = ", ".join(name(p) for p in params[:4]) + (" ..." if len(params) > 4 else "")
    raise ValueError(
        f"a new parameter group ({shown}) has no 'route' key and the routes "
        f"{[route_name(r) for r in optimizers]} have no {TOTAL!r} route to take it; "
        f"expected 'route': one of those names in the group, or a {TOTAL!r} route"
    )


def composite_defaults(optimizers: Mapping[Route, Optimizer]) -> dict[str, Any]:
    """What a group without ``"route"`` is filled with: its route's defaults; with no such
    route, the defaults every route optimizer agrees on."""
    try:
        return optimizers[default_route(optimizers, (), repr)].defaults
    except ValueError:
        pass
    first, *others = (opt.defaults for opt in optimizers.values())
    return {k: v for k, v in first.items() if all(k in o and _same(o[k], v) for o in others)}


def group_params(groups: Iterable[Mapping[str, Any]]) -> Iterator[Any]:
    for group in groups:
        yield from group["params"]


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (RuntimeError, TypeError, ValueError):  # tensors of several elements
        return a is b
