"""A ``RoutedOptimizer``'s state dict: shaped like any optimizer's, split per route on load.

``{"state": {index: ...}, "param_groups": [...]}`` over the composite's ``param_groups`` in order
(what ``torch.distributed.checkpoint`` maps to parameter names), each group carrying the name of
its ``"route"``. Loading splits it into one state dict per route optimizer; the
``{route name: optimizer state dict}`` that checkpoints written before 0.3 hold loads too.

``torch.distributed.checkpoint`` needs every state that a checkpoint may hold to exist before it
loads one (it loads into the tensors of the optimizer it is given, and fails on any it does not
find in the file), and creates them by stepping an optimizer that has none with zero gradients
and a learning rate of 0. A composite stepped that way would count a step on every route and
start each route optimizer's state (an Adam that has not stepped yet would take its first real
step as its second). So the composite is never stepped for it: each route optimizer that has
not stepped yet is stepped that way alone while its state dict is written (:func:`initialized`)
and its state dropped again right after. A resumed fit drops it too, for every route that the
checkpoint's step counts say had not stepped (``RoutingSession.begin_batch``): such a route
resumes with no state, as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_losses.routing.route import Route, route_name


def pack(
    order: Iterable[tuple[Route, int]],
    groups: Iterable[Mapping[str, Any]],
    state: Mapping[Any, Any],
) -> dict[str, Any]:
    """The composite's state dict, from its groups (``order``: each group's route) and its
    per-parameter ``state``.

    Every parameter has a ``"state"`` entry: ``{}`` where its route's optimizer keeps none (SGD
    without momentum). ``torch.distributed.checkpoint`` loads an optimizer's state strictly as
    soon as any parameter has some (as soon as one route is stateful), and then requires an
    entry for every parameter that requires grad.
    """
    index: dict[int, int] = {}
    packed_groups = []
    for (route, _), group in zip(order, groups):
        packed = {k: v for k, v in group.items() if k != "params"}
        packed["route"] = route_name(route)
        packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
        packed_groups.append(packed)
    packed_state = {(index[id(k)] if isinstance(k, Tensor) else k): v for k, v in state.items()}
    for position in index.values():
        packed_state.setdefault(position, {})
    return {"state": packed_state, "param_groups": packed_groups}


def unpack(state_dict: Mapping[str, Any], routes: Iterable[Route]) -> dict[Route, Any]:
    """One route optimizer's state dict per route of ``routes``, from a composite's (or from the
    per-route dict written before 0.3); an error naming both sets of routes where they differ."""
    routes = list(routes)
    expected = [route_name(r) for r in routes]
    if "param_groups" in state_dict:
        groups = state_dict["param_groups"]
        if not all(isinstance(g, Mapping) and "route" in g for g in groups):
            raise ValueError(
                "cannot load optimizer state saved for the state of one optimizer into "
                f"per-key optimizers with routes {expected}; expected a checkpoint saved with "
                "the same routes"
            )
        return _split(state_dict, routes, expected)
    if set(state_dict) == set(expected):  # written before 0.3
        return {route: state_dict[route_name(route)] for route in routes}
    raise ValueError(
        f"cannot load optimizer state saved for routes {sorted(state_dict)} into per-key "
        f"optimizers with routes {expected}; expected a checkpoint saved with the same routes"
    )


def _split(
    state_dict: Mapping[str, Any], routes: list[Route], expected: list[str]
) -> dict[Route, Any]:
    saved = [g["route"] for g in state_dict["param_groups"]]
    if sorted(set(saved)) != sorted(expected):
        raise ValueError(
            f"cannot load optimizer state saved for routes {sorted(set(saved))} into per-key "
            f"optimizers with routes {expected}; expected a checkpoint saved with the same "
            "routes"
        )
    state = state_dict["state"]
    per_route: dict[Route, Any] = {}
    for route in routes:
        name = route_name(route)
        groups = [
            {k: v for k, v in g.items() if k != "route"}
            for g in state_dict["param_groups"]
            if g["route"] == name
        ]
        keys = [k for g in groups for k in g["params"]]
        per_route[route] = {
            "state": {k: state[k] for k in keys if k in state},
            "param_groups": groups,
        }
    return per_route


@contextmanager
def initialized(optimizers: Iterable[Optimizer]) -> Iterator[None]:
    """Inside, each of ``optimizers`` holds the state its first step creates (what
    ``torch.distributed.checkpoint`` would create: a step with zero gradients and a learning
    rate of 0); afterwards none, and its parameters, gradients and learning rates as they were.
    An optimizer whose step needs a closure (LBFGS) is left without."""
    stepped = []
    try:
        for optimizer in optimizers:
            params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
            grads = [p.grad for p in params]
            rates = [g.get("lr") for g in optimizer.param_groups]
            try:
                for param in params:
                    param.grad = torch.zeros_like(param)
                for group in optimizer.param_groups:
                    if isinstance(group.get("lr"), Tensor):
                        group["lr"] = torch.zeros_like(group["lr"])
                    elif "lr" in group:
                        group["lr"] = 0.0
                stepped.append(optimizer)
                optimizer.step()
            except TypeError:  # (LBFGS: "'NoneType' object is not callable")
                pass
            finally:
                for group, rate in zip(optimizer.param_groups, rates):
                    if "lr" in group:
                        group["lr"] = rate
                for param, grad in zip(params, grads):
                    param.grad = grad
        yield
    finally:
        for optimizer in stepped:
            optimizer.state.clear()
