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

Alternating optimizers (GANs) live here too. A route's dict may carry
``"frequency": n`` (routes take turns, ``n`` consecutive optimizer steps each, in the order given)
and its own ``"gradient_clip_val"``/``"gradient_clip_algorithm"``. The turn is a function of
``trainer.global_step`` alone (the number of optimizer steps so far), so it needs no state of its
own: a turn spans whole accumulated steps, and a resumed run continues mid-cycle exactly. Only the
active routes' optimizers step, only their schedulers follow, and the other routes' parameters
get zero gradients (so DDP, without ``find_unused_parameters``, hears from every parameter).
``route_mode="sequential"`` runs Lightning's closure once per active route inside the one
``optimizer.step(closure)`` Lightning calls (the mechanism LBFGS uses): each pass re-runs
``training_step``, so each route's ``forward`` sees the previous routes' update, and clipping and
``on_before_optimizer_step`` apply per pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypedDict

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lightning_losses.cache import BoundedCache
from lightning_losses.terms import TOTAL, describe

Route = tuple[str, ...]  # the terms of a route; ("loss",) is the weighted total


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


class _EveryRoute(frozenset):
    """``active_routes`` before the routes are known (evaluation before any fit): every route
    counts, so ``name in active_routes`` holds for every name."""

    def __contains__(self, name: object) -> bool:
        return True

    def __repr__(self) -> str:
        return "EVERY_ROUTE"


EVERY_ROUTE: frozenset[str] = _EveryRoute()


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
    composite = RoutedOptimizer(optimizers, frequencies, clipping)
    configs = []
    for route, scheduler in schedulers:
        entry = dict(scheduler) if isinstance(scheduler, Mapping) else {"scheduler": scheduler}
        inner = entry["scheduler"]
        proxy = _RoutePlateau if isinstance(inner, ReduceLROnPlateau) else _RouteScheduler
        entry["scheduler"] = proxy(inner, composite, route)
        configs.append(entry)
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


def reached_parameters(output: Tensor) -> set[int]:
    """Ids of the leaf tensors ``output``'s autograd graph reaches (walked once per key set)."""
    seen: set[Any] = set()
    leaves: set[int] = set()
    stack: list[Any] = [output.grad_fn] if output.grad_fn is not None else []
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


class _InjectGradients(torch.autograd.Function):
    """A zero whose backward hands each parameter a precomputed gradient (for ``None``: no
    gradient, or zeros where DDP must hear from every parameter).

    What Lightning backpropagates when the gradients were computed with ``autograd.grad``: one
    graph node instead of a multiply and a sum per parameter, and a real backward through every
    parameter (DDP's hooks fire on it, clipping and the AMP scaler see its result). The incoming
    gradient scales them: ``1/accumulate_grad_batches`` under accumulation, the loss scale under
    a GradScaler, exactly 1 otherwise.
    """

    @staticmethod
    def forward(
        ctx: Any, none_for_missing: bool, grads: list[Tensor | None], *params: Tensor
    ) -> Tensor:
        ctx.grads, ctx.none_for_missing = grads, none_for_missing
        ctx.shapes = [(p.shape, p.dtype, p.device) for p in params]
        return params[0].new_zeros(())

    @staticmethod
    def backward(ctx: Any, scale: Tensor) -> tuple[Any, ...]:
        out: list[Tensor | None] = []
        for grad, (shape, dtype, device) in zip(ctx.grads, ctx.shapes):
            if grad is not None:
                out.append(grad * scale.to(grad.dtype))
            elif ctx.none_for_missing:
                out.append(None)  # no gradient: the optimizer skips the parameter
            else:
                out.append(torch.zeros(shape, dtype=dtype, device=device))
        ctx.grads = None
        return (None, None, *out)


class Router:
    """Routes one step's weighted terms to the route optimizers' parameters."""

    def __init__(
        self,
        optimizer: RoutedOptimizer,
        leaves: Callable[[list[Tensor]], list[Tensor]] | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.routes = list(optimizer.optimizers)
        #: Each route's parameters as the step's graph holds them (see ``note``).
        self.params = {
            route: [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
            for route, opt in optimizer.optimizers.items()
        }
        # FSDP2: the optimizers hold sharded parameters, the graph their unsharded twins, which
        # exist from the first forward on (sharding.leaf_resolver)
        self._leaves = leaves
        self.sharded = leaves is not None
        self._fast: BoundedCache[tuple[str, ...], bool] = BoundedCache()
        self.matched: set[Route] = set()
        self._noted: BoundedCache[tuple[str, ...], bool] = BoundedCache()  # checked key sets
        self._unrouted_warned: set[str] = set()

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
        if self._leaves is not None:  # the first step, after its forward
            self.params = {route: self._leaves(ps) for route, ps in self.params.items()}
            self._leaves = None
        for route in self.routes:
            if self.members(route, terms):
                self.matched.add(route)
        if self._noted.get(terms):
            return
        self._noted.put(terms, True)
        for term in terms:
            if term not in self._unrouted_warned and self.owner(term) is None:
                self._unrouted_warned.add(term)
                rank_zero_warn(
                    f"loss term {term!r} belongs to no optimizer route (routes "
                    f"{self.route_names()}): it is logged and counted in train/loss but trains "
                    f"nothing; expected it in a route (a tuple route such as ('g', {term!r})) "
                    "or a 'loss' route"
                )

    @property
    def alternating(self) -> bool:
        """Whether routes take turns or run in sequence (not every route steps every pass)."""
        return bool(self.optimizer.frequencies) or self.optimizer.sequential

    def stepping(self) -> tuple[Route, ...]:
        """The routes whose gradients this backward computes (all of them unless alternating)."""
        composite = self.optimizer
        if composite.current is not None:
            return (composite.current,)
        return composite.active

    def surrogate(
        self, terms: tuple[str, ...], weighted: Tensor, routes: tuple[Route, ...] | None = None
    ) -> Tensor:
        """A loss whose gradient w.r.t. each parameter of ``routes`` (default: all) is its
        route's gradient; every other parameter gets a zero gradient."""
        stepping = self.routes if routes is None else [r for r in self.routes if r in routes]
        params: list[Tensor] = []
        grads: list[Tensor | None] = []
        for index, route in enumerate(stepping):
            members = self.members(route, terms)
            owned = self.params[route]
            if not members or not owned:
                continue
            route_loss = weighted[members].sum()
            # outside autocast, like the backward Lightning runs after training_step: a backward
            # under autocast would recast ops and differ from it
            with torch.autocast(route_loss.device.type, enabled=False):
                found = torch.autograd.grad(
                    route_loss,
                    owned,
                    retain_graph=self.sharded or index < len(stepping) - 1,
                    allow_unused=True,
                )
            params += owned
            grads += [None if g is None else g.detach() for g in found]
        # Parameters of routes without a term this step (or not stepping now) still join the
        # backward (with zero gradients), so DDP's reducer hears from every parameter.
        given = {id(p) for p in params}
        for route in self.routes:
            for param in self.params[route]:
                if id(param) not in given:
                    params.append(param)
                    grads.append(None)
        # A route without a term must not step: an optimizer with momentum or weight decay would
        # move its parameters on zero gradients. Alone, its parameters get no gradient at all
        # (so RoutedOptimizer skips the route and its scheduler waits); under DDP every rank
        # must hear from every parameter, so they get zeros and the route steps on them (whether
        # another rank had the term is not known without a collective).
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        injected = _InjectGradients.apply(not distributed, grads, *params)
        if self.sharded:
            # FSDP2 unshards and reduce-scatters from hooks on forward's outputs, which a backward
            # of the injected gradients alone never reaches: a zero through the terms makes the
            # backward Lightning runs one FSDP2 takes part in (one more backward pass).
            injected = injected + weighted.sum() * 0
        return injected

    def owner(self, term: str) -> Route | None:
        """The first route (in the order given) whose loss includes ``term``."""
        for route in self.routes:
            if route == (TOTAL,) or term in route:
                return route
        return None

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
