"""A route's learning-rate scheduler: it follows its own route optimizer's steps only.

Lightning accepts a scheduler only if its ``optimizer`` is one that ``configure_optimizers``
returned, and steps every scheduler at its interval. A route's scheduler is wrapped in a proxy
whose ``optimizer`` is the route's :class:`~lightning_losses.routing.views.RouteView` (equal to
the ``RoutedOptimizer``), which steps the scheduler only when its route has stepped.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lightning_losses.routing.optimizer import RoutedOptimizer, routed_optimizer
from lightning_losses.routing.route import Route
from lightning_losses.routing.views import RouteView


class RouteScheduler(LRScheduler):
    """A route optimizer's scheduler, presented as attached to the RoutedOptimizer.

    Lightning refuses schedulers whose ``optimizer`` it did not get from ``configure_optimizers``;
    this proxy carries the route's :class:`RouteView` (equal to the composite) as ``optimizer``,
    so that what reads a scheduler's optimizer (``LearningRateMonitor``) reads its route alone,
    and delegates everything else.
    """

    def __init__(
        self, scheduler: Any, composite: RoutedOptimizer, route: Route
    ) -> None:  # no super().__init__
        self.scheduler, self.route, self.composite = scheduler, route, composite
        self.optimizer: Any = composite.views[route]
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


class RoutePlateau(ReduceLROnPlateau):
    """``ReduceLROnPlateau`` behind the same proxy (Lightning passes it the monitored value)."""

    __init__ = RouteScheduler.__init__
    step = RouteScheduler.step
    state_dict = RouteScheduler.state_dict
    load_state_dict = RouteScheduler.load_state_dict
    scheduler: Any

    def get_last_lr(self) -> list[float | Tensor]:
        return [group["lr"] for group in self.scheduler.optimizer.param_groups]


def route_parts(optimizer: Any) -> list[tuple[str, RouteView]] | None:
    """A RoutedOptimizer's routes as ``("lr-<route>", view)`` (what LearningRateMonitor logs per
    route); ``None`` for any other optimizer."""
    composite = routed_optimizer([optimizer])
    if composite is None:
        return None
    return [(f"lr-{view.name}", view) for view in composite.views.values()]
