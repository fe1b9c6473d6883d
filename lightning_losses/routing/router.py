"""Routes one step's weighted terms so that each parameter gets its own route's gradient.

* When every route's parameters are reached only by that route's terms (heads per task, a shared
  trunk on ``"loss"``), the plain backward of the total already does that: the fast path. Whether
  it holds is decided exactly, from the autograd graph, once per key set.
* Otherwise each route's gradient is computed with ``torch.autograd.grad`` and the step returns a
  surrogate ``sum_p <p, g_p>`` whose backward writes exactly ``g_p`` into ``p.grad``. That backward
  is the only one DDP sees (``autograd.grad`` does not fire its hooks), so gradients are
  synchronised once per step, and clipping, accumulation and AMP scaling apply to it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lightning_losses import _warnings
from lightning_losses.cache import BoundedCache
from lightning_losses.distributed.fsdp2 import BlockSteps
from lightning_losses.graph import walk
from lightning_losses.routing.optimizer import RoutedOptimizer
from lightning_losses.routing.route import Route, route_name
from lightning_losses.terms.patterns import closest
from lightning_losses.terms.values import TOTAL

#: Steps run eagerly to decide one key set whose graph was compiled, before settling for the
#: conservative verdict (a key set that never comes back in an eager step).
_EAGER_LOOKS = 2


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
        blocks: BlockSteps | None = None,
    ) -> None:
        self.optimizer = optimizer
        #: FSDP2 on several processes: what every rank does around a routed step's backward.
        self.blocks = blocks
        self.routes = list(optimizer.optimizers)
        # FSDP: the optimizers hold sharded parameters, the step's graph other tensors under the
        # same names, which exist from the first forward on (sharding.leaf_resolver)
        self._leaves = leaves
        self._resolved = leaves is None
        #: Whether the graph differentiates other tensors than the optimizers' (FSDP).
        self.sharded = False
        #: Whether those are views of a flat parameter (FSDP1), not leaves of the graph.
        self.views = False
        self._version = -1
        #: Each route's parameters as its optimizer holds them.
        self._held: dict[Route, list[Tensor]] = {}
        #: ... and as the step's graph holds them (the same tensors without FSDP).
        self.params: dict[Route, list[Tensor]] = {}
        self._fast: BoundedCache[tuple[str, ...], bool] = BoundedCache()
        #: Per key set that needs the surrogate: a term and a route whose parameters it reaches.
        self._crossings: BoundedCache[tuple[str, ...], tuple[str, Route]] = BoundedCache()
        self._looks: BoundedCache[tuple[str, ...], int] = BoundedCache()
        self._refresh()
        self.matched: set[Route] = set()
        self._noted: BoundedCache[tuple[str, ...], bool] = BoundedCache()  # checked key sets
        self._unrouted_warned: set[str] = set()
        #: Every term of the key sets noted so far, and the route names said to be misspelt.
        self._seen: set[str] = set()
        self._misspelt_warned: set[str] = set()

    def members(self, route: Route, terms: tuple[str, ...]) -> list[int]:
        """Positions of ``route``'s terms among this step's ``terms``."""
        if route == (TOTAL,):
            return list(range(len(terms)))
        return [i for i, t in enumerate(terms) if t in route]

    def one_backward_suffices(self, terms: tuple[str, ...], losses: list[Tensor]) -> bool:
        """Whether the plain backward of the total gives every parameter its route's gradient:
        no term outside a route reaches that route's parameters. Decided once per key set
        (after :meth:`note`, which brings the routes' parameters up to date)."""
        if self.views:  # no leaf to find in the graph: the surrogate, always right
            return False
        verdict = self._fast.get(terms)
        if verdict is None:
            walks = [walk(loss) for loss in losses]
            crossing = self._crossing(terms, [leaves for leaves, _ in walks])
            verdict = crossing is None
            looks = self._looks.get(terms) or 0
            if not verdict and looks < _EAGER_LOOKS and any(opaque for _, opaque in walks):
                # Hidden inside a compiled region: this step takes the per-route path (always
                # exact), and the next closure runs eagerly so that its graph decides.
                self._looks.put(terms, looks + 1)
                self.optimizer.eager_forward = True
                return False
            if not verdict:
                self.optimizer.several_backwards = True
                self._crossings.put(terms, crossing)  # type: ignore[arg-type]
            self._fast.put(terms, verdict)
        return verdict

    def _crossing(
        self, terms: tuple[str, ...], reached: list[set[int]]
    ) -> tuple[str, Route] | None:
        """A term and another route whose parameters it reaches, if any."""
        for route in self.routes:
            inside = set(self.members(route, terms))
            owned = {id(p) for p in self.params[route]}
            for i, term in enumerate(terms):
                if i not in inside and reached[i] & owned:
                    return term, route
        return None

    def before_backward(self, passes: bool, terms: tuple[str, ...] = ()) -> None:
        """Under FSDP2 on several processes, what every rank does before a routed step's
        backward, whatever this rank's terms: gather every group where this fit's routed steps
        gather (see ``fsdp2``). ``passes``: this step needs one backward per route, which a fit
        settled on one backward of the total cannot take (an error that says why)."""
        blocks = self.blocks
        if blocks is None:
            return
        if blocks.settle(passes):
            blocks.gather()
        elif passes:
            term, route = self._crossings.get(terms) or ("?", ("?",))
            raise RuntimeError(
                f"per-key routes {self.route_names()} under FSDP2: at the first training step "
                "no route's parameters were reached by another route's terms, on any rank, so "
                "every rank takes one backward of the total and keeps FSDP2's resharding; now "
                f"term {term!r} reaches parameters of route {route_name(route)!r}, which needs "
                "one backward per route, and under FSDP2 every rank must have gathered its "
                "blocks before the backward from the first step on; expected the terms that "
                "cross routes at the first training step (a term may weigh 0 there), or "
                "fully_shard(..., reshard_after_forward=False) on the blocks"
            )

    def _refresh(self) -> None:
        """Re-read the routes' parameters after they changed (``add_param_group``)."""
        version = self.optimizer.parameters_version()
        if version == self._version:
            return
        self._version = version
        self._held = {
            route: [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
            for route, opt in self.optimizer.optimizers.items()
        }
        self.params = self._held
        self._fast = BoundedCache()
        self._resolved = self._leaves is None

    def _resolve(self) -> None:
        """Each route's parameters as the step's graph holds them (during a step, after its
        forward)."""
        assert self._leaves is not None
        held = self._held
        self.params = {route: self._leaves(ps) for route, ps in held.items()}
        self._resolved = True
        pairs = [(a, b) for r in held for a, b in zip(held[r], self.params[r])]
        self.sharded = any(a is not b for a, b in pairs)
        self.views = any(not b.is_leaf for _, b in pairs)

    def note(self, terms: tuple[str, ...]) -> None:
        """Which routes this key set reaches, and a warning for its terms in no route (once
        per key set: what a step's key set says does not change)."""
        self._refresh()
        if not self._resolved or self.views:
            # FSDP1 makes new views of its flat parameter at every forward: found again each
            # step (FSDP2's unsharded parameters are the same tensors from step to step)
            self._resolve()
        if self._noted.get(terms):
            return
        self._noted.put(terms, True)
        for route in self.routes:
            if self.members(route, terms):
                self.matched.add(route)
        for term in terms:
            if term not in self._unrouted_warned and self.owner(term) is None:
                self._unrouted_warned.add(term)
                _warnings.warn(
                    f"loss term {term!r} belongs to no optimizer route (routes "
                    f"{self.route_names()}): it is logged and counted in train/loss but trains "
                    f"nothing; expected it in a route (a tuple route such as ('g', {term!r})) "
                    f"or a 'loss' route{self._suggest(term, terms)}",
                    ("configure_routes", "configure_optimizers"),
                )
        self._seen.update(terms)
        self._warn_misspelt(terms)

    def _warn_misspelt(self, terms: tuple[str, ...]) -> None:
        """A route name that matches no term seen yet but is close to a term of this step that
        the ``"loss"`` route takes instead (``{"segg": ..., "loss": ...}`` beside ``seg``): said
        at the first step, once per name (without a ``"loss"`` route the term's own warning
        says it)."""
        total = next((r for r in self.routes if r == (TOTAL,)), None)
        if total is None:
            return
        taken = [t for t in terms if self.owner(t) == total]
        for route in self.routes:
            for name in route:
                if name == TOTAL or name in self._seen or name in self._misspelt_warned:
                    continue
                meant = closest(name, taken)
                if meant is not None:
                    self._misspelt_warned.add(name)
                    _warnings.warn(
                        f"optimizer route name {name!r} matches no loss term of this step; did "
                        f"you mean {meant!r}? Until it is renamed, {meant!r} is trained by the "
                        f"'loss' route with the total (routes {self.route_names()})",
                        ("configure_routes", "configure_optimizers"),
                    )

    def _suggest(self, term: str, terms: tuple[str, ...]) -> str:
        """``term``, in no route, may be what a route's name that matches no term of this step
        meant (``"regg"`` for ``reg``): a sentence saying so, else nothing."""
        unmatched = {n for route in self.routes for n in route if n != TOTAL and n not in terms}
        meant = closest(term, unmatched)
        if meant is None:
            return ""
        return (
            f". The name {meant!r} in the routes matches no term of this step: did you mean "
            f"{term!r}?"
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
        self._refresh()
        self.before_backward(True, terms)
        stepping = self.routes if routes is None else [r for r in self.routes if r in routes]
        if self.blocks is not None:  # no collective in the passes (see fsdp2.held)
            with self.blocks.held():
                params, grads = self._route_gradients(terms, weighted, stepping)
        else:
            params, grads = self._route_gradients(terms, weighted, stepping)
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
            # FSDP unshards and reduces from hooks on forward's outputs, which a backward of the
            # injected gradients alone never reaches: a zero through the terms makes the backward
            # Lightning runs one FSDP takes part in (one more backward pass).
            injected = injected + weighted.sum() * 0
        return injected

    def _route_gradients(
        self, terms: tuple[str, ...], weighted: Tensor, stepping: list[Route]
    ) -> tuple[list[Tensor], list[Tensor | None]]:
        """Each stepping route's gradient on its parameters: one ``autograd.grad`` per route."""
        params: list[Tensor] = []
        grads: list[Tensor | None] = []
        for index, route in enumerate(stepping):
            members = self.members(route, terms)
            owned = self.params[route]
            if not members or not owned:
                continue
            # basic indexing: a list index is copied to the device, which synchronises
            route_loss = torch.stack([weighted[i] for i in members]).sum()
            # outside autocast, like the backward Lightning runs after training_step: a backward
            # under autocast would recast ops and differ from it
            retain = self.sharded or index < len(stepping) - 1
            with torch.autocast(route_loss.device.type, enabled=False):
                try:
                    found = torch.autograd.grad(
                        route_loss, owned, retain_graph=retain, allow_unused=True
                    )
                except RuntimeError as error:
                    if retain and "donated buffer" in str(error):
                        raise RuntimeError(
                            f"per-key routes {self.route_names()} need one backward per route "
                            "here (a term of one route reaches another route's parameters), "
                            "and torch.compile's donated buffers allow only one backward "
                            "through a compiled region; expected "
                            "torch._functorch.config.donated_buffer = False before compiling, "
                            "or routes whose terms reach only their own parameters"
                        ) from error
                    raise
            params += owned
            grads += [None if g is None else g.detach() for g in found]
        return params, grads

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
