"""One optimizer to Lightning, a dict of route optimizers underneath.

Lightning only allows several optimizers through manual optimization, which refuses gradient
clipping and accumulation and counts every optimizer's step in ``global_step``. Instead, the route
optimizers are presented to Lightning as one :class:`RoutedOptimizer`. It keeps the
``torch.optim.Optimizer`` contract that Lightning and callbacks rely on (one stable
``param_groups`` list holding the route optimizers' own group dicts, ``add_param_group``,
``state``, ``defaults``, step and state-dict hooks, a ``state_dict`` shaped like any optimizer's),
so progressive unfreezing, LR finders and distributed checkpointing see an ordinary optimizer.
Alternating routes (``"frequency"``) and ``route_mode="sequential"`` are carried out in its
``step``. What reads it per route or per parameter is in :mod:`views`, its state dict's shape in
:mod:`state_dict`, the routes' schedulers in :mod:`schedulers`.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from itertools import chain, repeat
from operator import attrgetter, is_, itemgetter
from typing import Any

from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor
from torch.optim import Optimizer

from lightning_losses.routing.compiling import NOTHING, CompileContext
from lightning_losses.routing.groups import (
    composite_defaults,
    default_route,
    group_params,
    named_route,
)
from lightning_losses.routing.route import Route, route_name
from lightning_losses.routing.state_dict import initialized, pack, unpack
from lightning_losses.routing.views import RouteStates, RouteView


def _run_step_hooks(step: Callable[..., Any]) -> Callable[..., Any]:
    """``step`` with the instance's step pre- and post-hooks around it, as ``Optimizer`` wraps
    the ``step`` of its subclasses (which ``RoutedOptimizer`` is without running
    ``Optimizer.__init__``). The global hooks of ``torch.optim.optimizer`` run where torch runs
    them: in each route optimizer's own ``step``."""

    def wrapper(self: RoutedOptimizer, *args: Any, **kwargs: Any) -> Any:
        if self._optimizer_step_pre_hooks:  # (usually none: no list to build every step)
            for pre_hook in list(self._optimizer_step_pre_hooks.values()):
                result = pre_hook(self, args, kwargs)
                if result is not None:
                    if not (isinstance(result, tuple) and len(result) == 2):
                        raise RuntimeError(
                            f"an optimizer step pre-hook returned {result!r}; expected None "
                            "or a tuple (new_args, new_kwargs)"
                        )
                    args, kwargs = result
        out = step(self, *args, **kwargs)
        if self._optimizer_step_post_hooks:
            for post_hook in list(self._optimizer_step_post_hooks.values()):
                post_hook(self, args, kwargs)
        return out

    wrapper.__doc__, wrapper.__name__ = step.__doc__, step.__name__
    wrapper.hooked = True  # type: ignore[attr-defined]  # what Optimizer checks before patching
    return wrapper


class RoutedOptimizer(Optimizer):
    """One optimizer to Lightning; a dict of route optimizers underneath.

    ``param_groups`` is one list, the same object at every access, holding the route optimizers'
    own group dicts: what Lightning or a callback does to a group (LR changes, clipping over its
    params) reaches the route optimizer that owns it. A group added with ``add_param_group``
    goes to the route named by its ``"route"`` key, else to the ``"loss"`` route (the weighted
    total: what a plain optimizer would train it on), else to the only route; with several
    routes and no ``"loss"`` route a group without ``"route"`` is an error naming the routes.
    It is appended at the end of ``param_groups``, as with any optimizer.
    """

    def __init__(
        self,
        optimizers: Mapping[Route, Optimizer],
        frequencies: Mapping[Route, int] | None = None,
        clipping: Mapping[Route, tuple[float | None, str | None]] | None = None,
        parameter_names: Mapping[int, str] | None = None,
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
        #: Run the next closure with ``torch.compile`` off: the router asks for it when a graph
        #: it must inspect is hidden inside a compiled region (see ``Router``). On at first, so
        #: that the first step's graph is the eager one; with nothing compiled it changes nothing.
        self.eager_forward = True
        #: Set by the router once some step needs one backward per route: what is compiled from
        #: then on keeps its saved tensors for a second backward (no donated buffers).
        self.several_backwards = False
        #: Bumped whenever a route's parameters change (``add_param_group``, assigned groups), so
        #: that the router re-reads them.
        self.version = 0
        self._names = dict(parameter_names or {})
        #: (route, index in that route's param_groups) per group of ``param_groups``, in order.
        self._order: list[tuple[Route, int]] = [
            (route, i)
            for route, opt in self.optimizers.items()
            for i in range(len(opt.param_groups))
        ]
        self._groups: list[dict[str, Any]] = []
        self._groups[:] = self._expected_groups()
        self._sizes = self._route_sizes()
        self._state = RouteStates(self)
        self.views = {route: RouteView(self, route) for route in self.optimizers}
        self.defaults: dict[str, Any] = composite_defaults(self.optimizers)
        self._optimizer_step_pre_hooks: OrderedDict[int, Any] = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict[int, Any] = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()

    # ------------------------------------------------------------------ groups and state

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        self.refresh()
        return self._groups

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        """Replace every group (as ``BaseFinetuning`` does when it restores the groups it had
        added): each goes to the route named by its ``"route"`` key, else to the route that owns
        its parameters now, else by the rule of ``add_param_group``."""
        per_route: dict[Route, list[dict[str, Any]]] = {route: [] for route in self.optimizers}
        order: list[tuple[Route, int]] = []
        owners = {
            id(p): r for r, o in self.optimizers.items() for p in group_params(o.param_groups)
        }
        taken: dict[int, Route] = {}
        for group in groups:
            params = list(group["params"])
            route = named_route(self.optimizers, group)
            if route is None:
                found = {owners[id(p)] for p in params if id(p) in owners}
                if len(found) > 1:
                    raise ValueError(
                        f"a parameter group holds parameters of the routes "
                        f"{sorted(map(route_name, found))}; expected each group within one route "
                        "(or a 'route' key saying which)"
                    )
                route = found.pop() if found else default_route(self.optimizers, params, self._name)
            for param in params:
                other = taken.setdefault(id(param), route)
                if other != route:
                    raise ValueError(
                        f"parameter {self._name(param)} is in groups of the routes "
                        f"{route_name(other)!r} and {route_name(route)!r}; expected each parameter "
                        "in exactly one route"
                    )
            order.append((route, len(per_route[route])))
            per_route[route].append(group)
        for route, opt in self.optimizers.items():
            opt.param_groups = per_route[route]
        self._order = order
        self._groups[:] = self._expected_groups()
        self._changed()

    @property
    def state(self) -> RouteStates:  # type: ignore[override]
        return self._state

    def refresh(self) -> int:
        """Bring ``param_groups`` in line with the route optimizers (a group appended to the
        list directly is routed like ``add_param_group``'s; one added to a route optimizer or
        replaced by its ``load_state_dict`` is taken in). Returns ``version``."""
        groups = self._groups
        sizes = self._route_sizes()
        if (
            sizes == self._sizes
            and len(groups) == len(self._order)
            and all(  # (a list, not a generator: one call, not one per group)
                [
                    groups[k] is self.optimizers[r].param_groups[i]
                    for k, (r, i) in enumerate(self._order)
                ]
            )
        ):
            return self.version
        known = {id(g) for opt in self.optimizers.values() for g in opt.param_groups}
        foreign = [g for g in groups if id(g) not in known]
        if sizes != self._sizes:  # groups added to a route optimizer directly
            for route, opt in self.optimizers.items():
                had = sum(1 for r, _ in self._order if r == route)
                self._order += [(route, i) for i in range(had, len(opt.param_groups))]
            self._changed()
        groups[:] = self._expected_groups()
        for group in foreign:  # appended to our list, not through add_param_group
            self.add_param_group(group)
        return self.version

    def parameters_version(self) -> int:
        """``version``, cheaply (the routes' group counts): what the router checks every step."""
        if self._route_sizes() != self._sizes or len(self._groups) != len(self._order):
            self.refresh()
        return self.version

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        param_group["params"] = [params] if isinstance(params, Tensor) else list(params)
        route = named_route(self.optimizers, param_group)
        if route is None:
            route = default_route(self.optimizers, param_group["params"], self._name)
        for param in param_group["params"]:
            other = self.owner(param)
            if other is not None and other != route:
                raise ValueError(
                    f"parameter {self._name(param)} of a new parameter group for route "
                    f"{route_name(route)!r} is already in route {route_name(other)!r}; expected "
                    "each parameter in exactly one route"
                )
        optimizer = self.optimizers[route]
        optimizer.add_param_group(param_group)
        self._order.append((route, len(optimizer.param_groups) - 1))
        self._groups.append(optimizer.param_groups[-1])
        self._changed()

    def owner(self, param: Any) -> Route | None:
        """The route whose optimizer holds ``param`` (``None``: none does)."""
        for route, opt in self.optimizers.items():
            if any(p is param for p in group_params(opt.param_groups)):
                return route
        return None

    def _name(self, param: Any) -> str:
        name = self._names.get(id(param))
        return repr(name) if name is not None else f"of shape {tuple(param.shape)}"

    def _expected_groups(self) -> list[dict[str, Any]]:
        return [self.optimizers[r].param_groups[i] for r, i in self._order]

    def _route_sizes(self) -> tuple[int, ...]:
        return tuple(map(len, map(_GROUPS, self.optimizers.values())))

    def _changed(self) -> None:
        self._sizes = self._route_sizes()
        self.version += 1

    # ------------------------------------------------------------------ stepping

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

    @_run_step_hooks
    def step(self, closure: Any = None) -> Any:
        # (no no_grad here: each route optimizer's step has its own, and Lightning's closure
        # enables grad itself)
        loss = None
        if self.sequential and closure is not None:
            # One pass of Lightning's closure (training_step, zero_grad, backward, clipping,
            # on_before_optimizer_step) per route, each followed by that route's step.
            try:
                for route in self.active:
                    self.current = route
                    loss = self._run(closure)
                    self._step_route(route)
            finally:
                self.current = None
            return loss
        if closure is not None:
            loss = self._run(closure)
        for route in self.active:
            self._step_route(route)
        return loss

    def _run(self, closure: Any) -> Any:
        # (Lightning's closure enables grad itself)
        if not self.compiling():
            return closure()  # no context to enter
        with self.forward_context():
            return closure()

    def compiling(self) -> bool:
        """Whether a forward needs :meth:`forward_context`: at the first step (the router looks
        at an eager graph) and once some route needs a backward of its own."""
        return self.eager_forward or self.several_backwards

    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        """What a training step's forward runs under for the router to do its job under
        ``torch.compile``: eagerly once when the router must see an eager graph, and without
        donated buffers once some route needs a backward of its own (nothing otherwise).
        ``step`` applies it to Lightning's closure; a forward run outside ``step`` (the
        micro-batches before the last under gradient accumulation) needs it too."""
        eager, self.eager_forward = self.eager_forward, False
        if not eager and not self.several_backwards:
            return NOTHING
        return CompileContext(eager, self.several_backwards)

    def _step_route(self, route: Route) -> None:
        optimizer = self.optimizers[route]
        # identity checks at C speed, stopping at the first gradient (list.count(None) would
        # compare every gradient with None through Tensor.__eq__: ~40 us a route)
        grads = map(_GRAD, chain.from_iterable(map(_PARAMS, optimizer.param_groups)))
        if all(map(is_, grads, repeat(None))):
            return  # no term of the route reached its parameters (in any micro-batch)
        optimizer.step()
        self.steps_taken[route] += 1

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    # ------------------------------------------------------------------ state dicts

    def state_dict(self) -> dict[str, Any]:
        """Shaped like any optimizer's, each group carrying its ``"route"``; a route that has
        not stepped yet holds, in it, the state its first step would create (see
        :mod:`~lightning_losses.routing.state_dict`)."""
        for pre_hook in list(self._optimizer_state_dict_pre_hooks.values()):
            pre_hook(self)
        unstarted = [route for route, opt in self.optimizers.items() if not opt.state]
        with initialized([self.optimizers[route] for route in unstarted]):
            state_dict = pack(self._order, self.param_groups, self.state)
        for post_hook in list(self._optimizer_state_dict_post_hooks.values()):
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads :meth:`state_dict`'s shape, and the ``{route name: optimizer state dict}`` that
        checkpoints written before 0.3 hold."""
        state_dict = dict(state_dict)
        for pre_hook in list(self._optimizer_load_state_dict_pre_hooks.values()):
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        per_route = unpack(state_dict, self.optimizers)
        for route, opt in self.optimizers.items():
            opt.load_state_dict(per_route[route])
        self._groups[:] = self._expected_groups()  # load_state_dict replaces the group dicts
        for post_hook in list(self._optimizer_load_state_dict_post_hooks.values()):
            post_hook(self)

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{route_name(r)!r}: {type(o).__name__}" for r, o in self.optimizers.items()
        )
        return f"RoutedOptimizer({{{inner}}})"

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def routed_optimizer(optimizers: Iterable[Any]) -> RoutedOptimizer | None:
    for optimizer in optimizers:
        # Lightning hands hooks its LightningOptimizer wrapper; .optimizer is the one inside
        inner = optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer
        if isinstance(inner, RoutedOptimizer):
            return inner
    return None


_GRAD = attrgetter("grad")
_PARAMS = itemgetter("params")
_GROUPS = attrgetter("param_groups")
