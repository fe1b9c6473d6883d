"""What reads a :class:`~lightning_losses.routing.optimizer.RoutedOptimizer` per parameter or per
route: its ``state`` (every route optimizer's per-parameter state as one live mapping) and a
route seen as an optimizer of its own (what a route's scheduler presents to
``LearningRateMonitor``).

Kept apart from the optimizer so that the schedulers can name a route's view without importing
the composite; both know the composite only as something with ``optimizers`` and ``owner``.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any, Protocol

from torch import Tensor
from torch.optim import Optimizer

from lightning_losses.routing.route import Route, route_name


class Composite(Protocol):
    """What the views read of a ``RoutedOptimizer``."""

    optimizers: dict[Route, Optimizer]

    def owner(self, param: Any) -> Route | None: ...


class RouteStates(MutableMapping[Tensor, Any]):
    """``RoutedOptimizer.state``: every route optimizer's per-parameter state as one mapping.

    A live view, not a copy: a route optimizer replaces its ``state`` dict when it loads a state
    dict, and whoever reads the composite's (DCP's ``_init_optim_state``, Lightning moving state
    to a device) must see the current one. Writing a parameter's state writes its route's.
    """

    def __init__(self, composite: Composite) -> None:
        self._composite = composite

    def _states(self) -> Iterator[MutableMapping[Any, Any]]:
        return (opt.state for opt in self._composite.optimizers.values())

    def __getitem__(self, param: Any) -> Any:
        for state in self._states():
            if param in state:
                return state[param]
        raise KeyError(param)

    def __setitem__(self, param: Any, value: Any) -> None:
        route = self._composite.owner(param)
        if route is None:
            raise KeyError(
                f"a tensor of shape {tuple(getattr(param, 'shape', ()))} is in no route "
                "optimizer; expected a parameter of one of them"
            )
        self._composite.optimizers[route].state[param] = value

    def __delitem__(self, param: Any) -> None:
        for state in self._states():
            if param in state:
                del state[param]
                return
        raise KeyError(param)

    def __iter__(self) -> Iterator[Any]:
        for state in self._states():
            yield from state

    def __len__(self) -> int:
        return sum(len(state) for state in self._states())

    def __bool__(self) -> bool:
        """Always true: ``torch.distributed.checkpoint`` steps an optimizer whose ``state`` is
        empty to create it, which on the composite would count as every route's step; the
        composite creates what a checkpoint needs itself, route by route (see
        ``routing.state_dict``)."""
        return True

    def __repr__(self) -> str:
        return f"RouteStates({len(self)} parameters)"


class RouteView:
    """One route of a :class:`RoutedOptimizer`, seen as an optimizer of its own.

    What a route's scheduler presents as its ``optimizer``: whoever reads optimizers by their
    groups (Lightning's ``LearningRateMonitor``: learning rate, ``betas``/``momentum`` found
    through ``defaults``) then reads that route's groups only. It compares equal to its
    ``RoutedOptimizer``, of which it is a part: Lightning accepts a scheduler only if its
    ``optimizer`` is one that ``configure_optimizers`` returned.
    """

    def __init__(self, composite: Composite, route: Route) -> None:
        self.composite, self.route = composite, route

    @property
    def name(self) -> str:
        return route_name(self.route)

    @property
    def route_optimizer(self) -> Optimizer:
        """The route's own optimizer."""
        return self.composite.optimizers[self.route]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.route_optimizer.param_groups

    @property
    def defaults(self) -> dict[str, Any]:
        return self.route_optimizer.defaults

    @property
    def state(self) -> Any:
        return self.route_optimizer.state

    def __eq__(self, other: object) -> bool:
        return other is self or other is self.composite

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return f"RouteView({self.name!r}: {type(self.route_optimizer).__name__})"
