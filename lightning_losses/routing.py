"""Per-key optimizers: ``{"seg": Adam, "depth": SGD, "loss": AdamW}`` inside automatic optimization.

Lightning only allows several optimizers through manual optimization, which refuses gradient
clipping and accumulation and counts every optimizer's step in ``global_step``. Instead, the route
optimizers are presented to Lightning as one :class:`RoutedOptimizer` (``step``, ``zero_grad``,
``state_dict`` and ``param_groups`` delegate to them), and the one backward Lightning runs is made
to leave each parameter holding the gradient of *its own route's* weighted loss:

* When every route's parameters are reached only by that route's terms (heads per task, a shared
  trunk on ``"loss"``), the plain backward of the total already does that: the fast path. Whether
  it holds is decided exactly, from the autograd graph, once per key set.
* Otherwise each route's gradient is computed with ``torch.autograd.grad`` and the step returns a
  surrogate ``sum_p <p, g_p>`` whose backward writes exactly ``g_p`` into ``p.grad``. That backward
  is the only one DDP sees (``autograd.grad`` does not fire its hooks), so gradients are
  synchronised once per step, and clipping, accumulation and AMP scaling apply to it unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lightning_losses.cache import BoundedCache
from lightning_losses.terms import TOTAL, describe

Route = tuple[str, ...]  # the terms of a route; ("loss",) is the weighted total


def is_route_map(config: Any) -> bool:
    """Whether ``configure_optimizers`` returned a route map rather than a Lightning config."""
    if not isinstance(config, Mapping) or not config:
        return False
    if "optimizer" in config:
        return False  # Lightning's own dict
    return all(isinstance(k, (str, tuple)) for k in config)


def route_name(route: Route) -> str:
    return route[0] if len(route) == 1 else "+".join(route)


class RoutedOptimizer(Optimizer):
    """One optimizer to Lightning; a dict of route optimizers underneath.

    ``param_groups`` is the concatenation of the route optimizers' group dicts (the same objects),
    so what Lightning or a callback does to a group (LR changes, clipping over its params) reaches
    the route optimizer that owns it.
    """

    def __init__(self, optimizers: Mapping[Route, Optimizer]) -> None:
        # Optimizer.__init__ would rebuild param groups from params; ours are the routes' own.
        self.optimizers = dict(optimizers)
        self.defaults: dict[str, Any] = {}
        self._optimizer_step_pre_hooks = {}  # type: ignore[assignment]
        self._optimizer_step_post_hooks = {}  # type: ignore[assignment]
        self._optimizer_state_dict_pre_hooks = {}  # type: ignore[assignment]
        self._optimizer_state_dict_post_hooks = {}  # type: ignore[assignment]
        self._optimizer_load_state_dict_pre_hooks = {}  # type: ignore[assignment]
        self._optimizer_load_state_dict_post_hooks = {}  # type: ignore[assignment]

    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    @property  # type: ignore[override]
    def state(self) -> dict[Any, Any]:
        merged: dict[Any, Any] = {}
        for opt in self.optimizers.values():
            merged.update(opt.state)
        return merged

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers.values():
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {route_name(r): opt.state_dict() for r, opt in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        expected = [route_name(r) for r in self.optimizers]
        if "param_groups" in state_dict or set(state_dict) != set(expected):
            found = (
                "the state of one optimizer"
                if "param_groups" in state_dict
                else f"routes {sorted(state_dict)}"
            )
            raise ValueError(
                f"cannot load optimizer state saved for {found} into per-key optimizers with "
                f"routes {expected}; expected a checkpoint saved with the same routes"
            )
        for route, opt in self.optimizers.items():
            opt.load_state_dict(state_dict[route_name(route)])

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{route_name(r)!r}: {type(o).__name__}" for r, o in self.optimizers.items()
        )
        return f"RoutedOptimizer({{{inner}}})"

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class _RouteScheduler(LRScheduler):
    """A route optimizer's scheduler, presented as attached to the RoutedOptimizer.

    Lightning refuses schedulers whose ``optimizer`` it did not get from ``configure_optimizers``;
    this proxy carries the composite as ``optimizer`` and delegates everything else.
    """

    def __init__(self, scheduler: Any, composite: RoutedOptimizer) -> None:  # no super().__init__
        self.scheduler, self.optimizer = scheduler, composite

    def step(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        self.scheduler.step(*args, **kwargs)

    def get_last_lr(self) -> list[float]:
        return self.scheduler.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state_dict)


class _RoutePlateau(ReduceLROnPlateau):
    """``ReduceLROnPlateau`` behind the same proxy (Lightning passes it the monitored value)."""

    __init__ = _RouteScheduler.__init__  # type: ignore[assignment]
    step = _RouteScheduler.step  # type: ignore[assignment]
    state_dict = _RouteScheduler.state_dict  # type: ignore[assignment]
    load_state_dict = _RouteScheduler.load_state_dict  # type: ignore[assignment]

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.scheduler.optimizer.param_groups]


def parse_route_map(config: Mapping[Any, Any], module: nn.Module) -> dict[str, Any]:
    """A route map -> a Lightning optimizer config around one :class:`RoutedOptimizer`.

    Checks that every trainable parameter belongs to exactly one route optimizer, naming the
    parameters and routes otherwise.
    """
    optimizers: dict[Route, Optimizer] = {}
    schedulers: list[tuple[Route, Any]] = []
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
            optimizer, scheduler = value["optimizer"], value.get("lr_scheduler")
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
    check_ownership(optimizers, module)
    composite = RoutedOptimizer(optimizers)
    configs = []
    for _route, scheduler in schedulers:
        entry = dict(scheduler) if isinstance(scheduler, Mapping) else {"scheduler": scheduler}
        inner = entry["scheduler"]
        proxy = _RoutePlateau if isinstance(inner, ReduceLROnPlateau) else _RouteScheduler
        entry["scheduler"] = proxy(inner, composite)
        configs.append(entry)
    result: dict[str, Any] = {"optimizer": composite}
    if configs:
        result["lr_scheduler"] = configs if len(configs) > 1 else configs[0]
    return result


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


def reached_parameters(output: Tensor) -> set[int]:
    """Ids of the leaf tensors ``output``'s autograd graph reaches (walked once per key set)."""
    seen, leaves = set(), set()
    stack = [output.grad_fn] if output.grad_fn is not None else []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf
        if variable is not None:
            leaves.add(id(variable))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


class Router:
    """Routes one step's weighted terms to the route optimizers' parameters."""

    def __init__(self, optimizer: RoutedOptimizer) -> None:
        self.optimizer = optimizer
        self.routes = list(optimizer.optimizers)
        self.params = {
            route: [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
            for route, opt in optimizer.optimizers.items()
        }
        self._fast: BoundedCache[tuple[str, ...], bool] = BoundedCache()
        self.matched: set[Route] = set()

    def members(self, route: Route, terms: tuple[str, ...]) -> list[int]:
        """Positions of ``route``'s terms among this step's ``terms``."""
        if route == (TOTAL,):
            return list(range(len(terms)))
        return [i for i, t in enumerate(terms) if t in route]

    def one_backward_suffices(self, terms: tuple[str, ...], losses: list[Tensor]) -> bool:
        """Whether the plain backward of the total gives every parameter its route's gradient:
        no term outside a route reaches that route's parameters. Decided once per key set."""
        verdict = self._fast.get(terms)
        if verdict is None:
            reach = [reached_parameters(loss) for loss in losses]
            verdict = True
            for route in self.routes:
                inside = set(self.members(route, terms))
                owned = {id(p) for p in self.params[route]}
                if any(reach[i] & owned for i in range(len(terms)) if i not in inside):
                    verdict = False
                    break
            self._fast.put(terms, verdict)
        return verdict

    def note(self, terms: tuple[str, ...]) -> None:
        for route in self.routes:
            if self.members(route, terms):
                self.matched.add(route)

    def surrogate(self, terms: tuple[str, ...], weighted: Tensor) -> Tensor:
        """A loss whose gradient w.r.t. each parameter is its route's gradient."""
        pieces = []
        for index, route in enumerate(self.routes):
            members = self.members(route, terms)
            params = self.params[route]
            if not members or not params:
                continue
            route_loss = weighted[members].sum()
            grads = torch.autograd.grad(
                route_loss, params, retain_graph=index < len(self.routes) - 1, allow_unused=True
            )
            pieces += [
                (p * g.detach()).sum() if g is not None else p.sum() * 0.0
                for p, g in zip(params, grads)
            ]
        # Parameters of routes without a term this step still join the backward (as zeros), so
        # DDP's reducer hears from every parameter.
        for route in self.routes:
            if not self.members(route, terms):
                pieces += [p.sum() * 0.0 for p in self.params[route]]
        return torch.stack(pieces).sum()

    def unmatched(self) -> list[str]:
        return [route_name(r) for r in self.routes if r not in self.matched]

    def route_names(self) -> list[str]:
        """The routes as they are named in checkpoints, in the order given."""
        return [route_name(r) for r in self.routes]


def routed_optimizer(optimizers: Iterable[Any]) -> RoutedOptimizer | None:
    for optimizer in optimizers:
        inner = getattr(optimizer, "_optimizer", optimizer)  # LightningOptimizer wraps it
        if isinstance(inner, RoutedOptimizer):
            return inner
    return None
