"""One optimizer to Lightning, a dict of route optimizers underneath, and the routes' schedulers.

Lightning only allows several optimizers through manual optimization, which refuses gradient
clipping and accumulation and counts every optimizer's step in ``global_step``. Instead, the route
optimizers are presented to Lightning as one :class:`RoutedOptimizer` (``step``, ``zero_grad``,
``state_dict`` and ``param_groups`` delegate to them). Alternating routes (``"frequency"``) and
``route_mode="sequential"`` are carried out in its ``step``; a route's scheduler follows only its
own optimizer's steps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lightning_losses.routing.route import Route, route_name


class RoutedOptimizer(Optimizer):
    """One optimizer to Lightning; a dict of route optimizers underneath.

    ``param_groups`` is the concatenation of the route optimizers' group dicts (the same objects),
    so what Lightning or a callback does to a group (LR changes, clipping over its params) reaches
    the route optimizer that owns it.
    """

    def __init__(
        self,
        optimizers: Mapping[Route, Optimizer],
        frequencies: Mapping[Route, int] | None = None,
        clipping: Mapping[Route, tuple[float | None, str | None]] | None = None,
    ) -> None:
        # Optimizer.__init__ would rebuild param groups from params; ours are the routes' own.
        self.optimizers = dict(optimizers)
        #: Turns: consecutive optimizer steps per route (empty: every route steps every time).
        self.frequencies = dict(frequencies or {})
        #: A route's own gradient clipping (val, algorithm), instead of the Trainer's.
        self.clipping = dict(clipping or {})
        #: The routes that step at the current optimizer step, in order (set per batch).
        self.active: tuple[Route, ...] = tuple(self.optimizers)
        #: ``route_mode="sequential"``: one closure pass per active route inside ``step``.
        self.sequential = False
        #: The route whose pass is running (sequential mode), else ``None``.
        self.current: Route | None = None
        #: Optimizer steps taken per route: what a route's scheduler follows.
        self.steps_taken: dict[Route, int] = dict.fromkeys(self.optimizers, 0)
        self.defaults: dict[str, Any] = {}
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}
        self._optimizer_state_dict_pre_hooks = {}  # type: ignore[assignment]
        self._optimizer_state_dict_post_hooks = {}  # type: ignore[assignment]
        self._optimizer_load_state_dict_pre_hooks = {}  # type: ignore[assignment]
        self._optimizer_load_state_dict_post_hooks = {}  # type: ignore[assignment]

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    @property
    def state(self) -> dict[Any, Any]:  # type: ignore[override]
        merged: dict[Any, Any] = {}
        for opt in self.optimizers.values():
            merged.update(opt.state)
        return merged

    def turn(self, global_step: int) -> tuple[Route, ...]:
        """The routes that step at optimizer step ``global_step`` (all of them without turns)."""
        if not self.frequencies:
            return tuple(self.optimizers)
        position = global_step % sum(self.frequencies.values())
        for route, frequency in self.frequencies.items():
            if position < frequency:
                return (route,)
            position -= frequency
        raise AssertionError("unreachable: position < sum of frequencies")

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if self.sequential and closure is not None:
            # One pass of Lightning's closure (training_step, zero_grad, backward, clipping,
            # on_before_optimizer_step) per route, each followed by that route's step.
            try:
                for route in self.active:
                    self.current = route
                    with torch.enable_grad():
                        loss = closure()
                    self._step_route(route)
            finally:
                self.current = None
            return loss
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for route in self.active:
            self._step_route(route)
        return loss

    def _step_route(self, route: Route) -> None:
        optimizer = self.optimizers[route]
        if all(p.grad is None for group in optimizer.param_groups for p in group["params"]):
            return  # no term of the route reached its parameters (in any micro-batch)
        optimizer.step()
        self.steps_taken[route] += 1

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {route_name(r): opt.state_dict() for r, opt in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
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

    def __init__(
        self, scheduler: Any, composite: RoutedOptimizer, route: Route
    ) -> None:  # no super().__init__
        self.scheduler, self.optimizer, self.route = scheduler, composite, route
        self.composite = composite
        self._seen_steps = 0

    def step(self, *args: Any, **kwargs: Any) -> None:
        # Lightning steps every scheduler at its interval; a route's scheduler follows only its
        # own optimizer: it steps when that optimizer has stepped since its last step (each
        # optimizer step with interval="step", each epoch in which the route stepped with
        # interval="epoch").
        taken = self.composite.steps_taken[self.route]
        if taken == self._seen_steps:
            return
        self._seen_steps = taken
        self.scheduler.step(*args, **kwargs)

    def get_last_lr(self) -> list[float | Tensor]:
        return self.scheduler.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        return {**self.scheduler.state_dict(), "_route_steps_seen": self._seen_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        self._seen_steps = int(state.pop("_route_steps_seen", 0))
        self.scheduler.load_state_dict(state)


class _RoutePlateau(ReduceLROnPlateau):
    """``ReduceLROnPlateau`` behind the same proxy (Lightning passes it the monitored value)."""

    __init__ = _RouteScheduler.__init__
    step = _RouteScheduler.step
    state_dict = _RouteScheduler.state_dict
    load_state_dict = _RouteScheduler.load_state_dict
    scheduler: Any

    def get_last_lr(self) -> list[float | Tensor]:
        return [group["lr"] for group in self.scheduler.optimizer.param_groups]


def routed_optimizer(optimizers: Iterable[Any]) -> RoutedOptimizer | None:
    for optimizer in optimizers:
        inner = getattr(optimizer, "_optimizer", optimizer)  # LightningOptimizer wraps it
        if isinstance(inner, RoutedOptimizer):
            return inner
    return None
