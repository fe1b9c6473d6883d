"""One optimizer to Lightning, a dict of route optimizers underneath, and the routes' schedulers.

Lightning only allows several optimizers through manual optimization, which refuses gradient
clipping and accumulation and counts every optimizer's step in ``global_step``. Instead, the route
optimizers are presented to Lightning as one :class:`RoutedOptimizer`. It keeps the
``torch.optim.Optimizer`` contract that Lightning and callbacks rely on (one stable
``param_groups`` list holding the route optimizers' own group dicts, ``add_param_group``,
``state``, ``defaults``, step and state-dict hooks, a ``state_dict`` shaped like any optimizer's),
so progressive unfreezing, LR finders and distributed checkpointing see an ordinary optimizer.
Alternating routes (``"frequency"``) and ``route_mode="sequential"`` are carried out in its
``step``; a route's scheduler follows only its own optimizer's steps.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lightning_losses.routing.route import Route, route_name
from lightning_losses.terms.values import TOTAL


class RouteStates(MutableMapping[Tensor, Any]):
    """``RoutedOptimizer.state``: every route optimizer's per-parameter state as one mapping.

    A live view, not a copy: a route optimizer replaces its ``state`` dict when it loads a state
    dict, and whoever reads the composite's (DCP's ``_init_optim_state``, Lightning moving state
    to a device) must see the current one. Writing a parameter's state writes its route's.
    """

    def __init__(self, composite: RoutedOptimizer) -> None:
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

    def __init__(self, composite: RoutedOptimizer, route: Route) -> None:
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


def _run_step_hooks(step: Callable[..., Any]) -> Callable[..., Any]:
    """``step`` with the instance's step pre- and post-hooks around it, as ``Optimizer`` wraps
    the ``step`` of its subclasses (which ``RoutedOptimizer`` is without running
    ``Optimizer.__init__``). The global hooks of ``torch.optim.optimizer`` run where torch runs
    them: in each route optimizer's own ``step``."""

    def wrapper(self: RoutedOptimizer, *args: Any, **kwargs: Any) -> Any:
        for pre_hook in list(self._optimizer_step_pre_hooks.values()):
            result = pre_hook(self, args, kwargs)
            if result is not None:
                if not (isinstance(result, tuple) and len(result) == 2):
                    raise RuntimeError(
                        f"an optimizer step pre-hook returned {result!r}; expected None or a "
                        "tuple (new_args, new_kwargs)"
                    )
                args, kwargs = result
        out = step(self, *args, **kwargs)
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
        self.defaults: dict[str, Any] = self._composite_defaults()
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
        owners = {id(p): r for r, o in self.optimizers.items() for p in _params(o.param_groups)}
        taken: dict[int, Route] = {}
        for group in groups:
            params = list(group["params"])
            route = self._named_route(group)
            if route is None:
                found = {owners[id(p)] for p in params if id(p) in owners}
                if len(found) > 1:
                    raise ValueError(
                        f"a parameter group holds parameters of the routes "
                        f"{sorted(map(route_name, found))}; expected each group within one route "
                        "(or a 'route' key saying which)"
                    )
                route = found.pop() if found else self._default_route(params)
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
        route = self._named_route(param_group)
        if route is None:
            route = self._default_route(param_group["params"])
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
            if any(p is param for p in _params(opt.param_groups)):
                return route
        return None

    def _named_route(self, group: Mapping[str, Any]) -> Route | None:
        if "route" not in group:
            return None
        name = group["route"]
        key = tuple(name) if isinstance(name, (tuple, list)) else (name,)
        if key in self.optimizers:
            return key
        for route in self.optimizers:
            if route_name(route) == name:
                return route
        raise ValueError(
            f"parameter group has route {name!r}; expected one of "
            f"{[route_name(r) for r in self.optimizers]}"
        )

    def _default_route(self, params: Iterable[Any]) -> Route:
        if (TOTAL,) in self.optimizers:
            return (TOTAL,)
        if len(self.optimizers) == 1:
            return next(iter(self.optimizers))
        params = list(params)
        shown = ", ".join(self._name(p) for p in params[:4]) + (" ..." if len(params) > 4 else "")
        raise ValueError(
            f"a new parameter group ({shown}) has no 'route' key and the routes "
            f"{[route_name(r) for r in self.optimizers]} have no {TOTAL!r} route to take it; "
            f"expected 'route': one of those names in the group, or a {TOTAL!r} route"
        )

    def _name(self, param: Any) -> str:
        name = self._names.get(id(param))
        return repr(name) if name is not None else f"of shape {tuple(param.shape)}"

    def _expected_groups(self) -> list[dict[str, Any]]:
        return [self.optimizers[r].param_groups[i] for r, i in self._order]

    def _route_sizes(self) -> tuple[int, ...]:
        return tuple([len(opt.param_groups) for opt in self.optimizers.values()])

    def _changed(self) -> None:
        self._sizes = self._route_sizes()
        self.version += 1

    def _composite_defaults(self) -> dict[str, Any]:
        """What a group without ``"route"`` is filled with: its route's defaults; with no such
        route, the defaults every route optimizer agrees on."""
        try:
            return self.optimizers[self._default_route(())].defaults
        except ValueError:
            pass
        first, *others = (opt.defaults for opt in self.optimizers.values())
        return {k: v for k, v in first.items() if all(k in o and _same(o[k], v) for o in others)}

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
            return _NOTHING
        return _CompileContext(eager, self.several_backwards)

    def _step_route(self, route: Route) -> None:
        optimizer = self.optimizers[route]
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
        if grads.count(None) == len(grads):
            return  # no term of the route reached its parameters (in any micro-batch)
        optimizer.step()
        self.steps_taken[route] += 1

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    # ------------------------------------------------------------------ state dicts

    def state_dict(self) -> dict[str, Any]:
        """Shaped like any optimizer's: ``{"state": {index: ...}, "param_groups": [...]}`` over
        ``param_groups`` in order (what ``torch.distributed.checkpoint`` maps to parameter
        names), each group carrying the name of its ``"route"``.

        Every parameter has a ``"state"`` entry: ``{}`` where its route's optimizer keeps none
        (SGD without momentum). ``torch.distributed.checkpoint`` loads an optimizer's state
        strictly as soon as any parameter has some (as soon as one route is stateful), and then
        requires an entry for every parameter that requires grad."""
        for pre_hook in list(self._optimizer_state_dict_pre_hooks.values()):
            pre_hook(self)
        index: dict[int, int] = {}
        packed_groups = []
        for (route, _), group in zip(self._order, self.param_groups):
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["route"] = route_name(route)
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            packed_groups.append(packed)
        packed_state = {
            (index[id(k)] if isinstance(k, Tensor) else k): v for k, v in self.state.items()
        }
        for position in index.values():
            packed_state.setdefault(position, {})
        state_dict: dict[str, Any] = {"state": packed_state, "param_groups": packed_groups}
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
        expected = [route_name(r) for r in self.optimizers]
        if "param_groups" in state_dict:
            groups = state_dict["param_groups"]
            if not all(isinstance(g, Mapping) and "route" in g for g in groups):
                raise ValueError(
                    "cannot load optimizer state saved for the state of one optimizer into "
                    f"per-key optimizers with routes {expected}; expected a checkpoint saved with "
                    "the same routes"
                )
            per_route = self._split(state_dict, expected)
        elif set(state_dict) == set(expected):  # written before 0.3
            per_route = {route: state_dict[route_name(route)] for route in self.optimizers}
        else:
            raise ValueError(
                f"cannot load optimizer state saved for routes {sorted(state_dict)} into per-key "
                f"optimizers with routes {expected}; expected a checkpoint saved with the same "
                "routes"
            )
        for route, opt in self.optimizers.items():
            opt.load_state_dict(per_route[route])
        self._groups[:] = self._expected_groups()  # load_state_dict replaces the group dicts
        for post_hook in list(self._optimizer_load_state_dict_post_hooks.values()):
            post_hook(self)

    def _split(self, state_dict: Mapping[str, Any], expected: list[str]) -> dict[Route, Any]:
        """One route optimizer's state dict per route, from the composite's."""
        saved = [g["route"] for g in state_dict["param_groups"]]
        if sorted(set(saved)) != sorted(expected):
            raise ValueError(
                f"cannot load optimizer state saved for routes {sorted(set(saved))} into per-key "
                f"optimizers with routes {expected}; expected a checkpoint saved with the same "
                "routes"
            )
        state = state_dict["state"]
        per_route: dict[Route, Any] = {}
        for route in self.optimizers:
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

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{route_name(r)!r}: {type(o).__name__}" for r, o in self.optimizers.items()
        )
        return f"RoutedOptimizer({{{inner}}})"

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def _params(groups: Iterable[Mapping[str, Any]]) -> Iterator[Any]:
    for group in groups:
        yield from group["params"]


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (RuntimeError, TypeError, ValueError):  # tensors of several elements
        return a is b


class _RouteScheduler(LRScheduler):
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
        # Lightning hands hooks its LightningOptimizer wrapper; .optimizer is the one inside
        inner = optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer
        if isinstance(inner, RoutedOptimizer):
            return inner
    return None


_NOTHING = contextlib.nullcontext()


class _CompileContext:
    """``force_eager`` (``torch.compiler.set_stance``, torch 2.6+) and/or no donated buffers
    for one forward. The config is set and restored directly: ``config.patch`` costs ~70 us a
    step, set and restore ~10 us, paid only by routes that need several backwards."""

    def __init__(self, eager: bool, keep_buffers: bool) -> None:
        self.eager, self.keep_buffers = eager, keep_buffers
        self._stance: Any = None
        self._config: Any = None
        self._donated: Any = None

    def __enter__(self) -> None:
        set_stance = getattr(torch.compiler, "set_stance", None)
        if self.eager and set_stance is not None:
            self._stance = set_stance("force_eager")  # set on construction, undone on exit
        if self.keep_buffers:
            # torch's own remedy, named in its error: a compiled backward that donated its
            # buffers cannot run a second time (autograd.grad with retain_graph=True)
            config = getattr(getattr(torch, "_functorch", None), "config", None)
            if config is not None and getattr(config, "donated_buffer", False):
                self._config, self._donated = config, config.donated_buffer
                config.donated_buffer = False

    def __exit__(self, *exc: object) -> None:
        if self._config is not None:
            self._config.donated_buffer = self._donated
        if self._stance is not None:
            self._stance.__exit__(None, None, None)


def route_parts(optimizer: Any) -> list[tuple[str, RouteView]] | None:
    """A RoutedOptimizer's routes as ``("lr-<route>", view)`` (what LearningRateMonitor logs per
    route); ``None`` for any other optimizer."""
    composite = routed_optimizer([optimizer])
    if composite is None:
        return None
    return [(f"lr-{view.name}", view) for view in composite.views.values()]
