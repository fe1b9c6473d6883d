"""One fit's routing state: which optimizer setup it has, whose turn it is, the passes of a
sequential batch, per-route clipping and what a resumed checkpoint said about its routes.

The per-key optimizers themselves (``RoutedOptimizer``) and the gradients each route receives
(``Router``) live in :mod:`lightning_losses.routing`; this object only tracks one ``fit`` with
them. A fit with one plain optimizer finds that out at its first batch and pays nothing after.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch import Tensor
from torch.optim import Optimizer

from lightning_losses import _lightning
from lightning_losses.distributed import fsdp2, sharding
from lightning_losses.routing.config import is_route_map, parse_route_map
from lightning_losses.routing.optimizer import RoutedOptimizer, routed_optimizer
from lightning_losses.routing.route import EVERY_ROUTE, Route, route_name
from lightning_losses.routing.router import Router
from lightning_losses.terms.parse import ParsedOutput
from lightning_losses.terms.values import TOTAL

RouteMode = Literal["joint", "sequential"]
ROUTE_MODES = ("joint", "sequential")


def check_route_mode(route_mode: Any) -> None:
    if route_mode not in ROUTE_MODES:
        raise ValueError(
            f"route_mode={route_mode!r}; expected 'joint' (every route on one forward's "
            "gradients) or 'sequential' (routes step one after another within a batch)"
        )


class RoutingSession:
    """The routing state of the running fit (see the module docstring)."""

    def __init__(self, route_mode: RouteMode) -> None:
        self.set_route_mode(route_mode)
        self.router: Router | None = None
        #: FSDP2 on several processes: the blocks' outputs per step (see distributed.fsdp2).
        self.blocks: fsdp2.BlockSteps | None = None
        self._watched = False
        #: This fit has one optimizer: nothing to route (found at its first batch).
        self.single_optimizer = False
        self._checked_alternation = False
        #: Route names of the checkpoint being resumed (None: one optimizer; False: no resume).
        self.restored_routes: list[str] | bool | None = False
        self.restored_route_steps: dict[str, int] | None = None
        #: route_mode="sequential": each name's value from the pass that logs it (see pend).
        self._pending_terms: dict[str, Tensor] = {}
        self._pending_metrics: dict[str, Tensor | float] = {}

    def set_route_mode(self, route_mode: Any) -> None:
        check_route_mode(route_mode)
        self.route_mode: RouteMode = route_mode

    def begin_fit(self) -> None:
        self.router, self._checked_alternation, self.single_optimizer = None, False, False
        self.blocks, self._watched = None, False
        self._pending_terms, self._pending_metrics = {}, {}

    def end_fit(self) -> None:
        """The fit ended: its optimizers are not kept (the module holds no run)."""
        self.begin_fit()

    def router_for_step(self, trainer: pl.Trainer | None) -> Router | None:
        if self.single_optimizer:
            return None
        if self.router is None and trainer is not None:
            composite = routed_optimizer(trainer.optimizers)
            if composite is not None:
                module = trainer.lightning_module
                self.router = Router(composite, sharding.leaf_resolver(module), self.blocks)
                if self.blocks is not None:
                    self.blocks.routed = True
        return self.router

    def begin_batch(self, trainer: pl.Trainer, combines_terms: str | None) -> bool:
        """Set which routes step at this batch (turns follow ``global_step``). Returns whether
        the routes alternate and were checked for the first time (the caller adapts its
        progress bar). ``combines_terms`` names a ``weighting=``/``aggregator=`` in use."""
        if self.single_optimizer:
            return False
        if not self._watched:
            # before the fit's first forward: FSDP2's blocks are recorded from it on (a rank
            # whose objective misses a block covers it through its outputs; see absent_terms)
            self._watched = True
            self.blocks = fsdp2.watch(trainer.lightning_module, trainer.world_size > 1)
            if self.router is not None and self.blocks is not None:  # made by a resume's check
                self.router.blocks, self.blocks.routed = self.blocks, True
        router = self.router_for_step(trainer)
        if router is None:
            self.single_optimizer = True
            if self.route_mode == "sequential":
                raise ValueError(
                    "route_mode='sequential' steps per-key optimizers one after another, but "
                    "configure_optimizers returned one optimizer; expected a route map such as "
                    "{'discriminator': Adam(...), 'generator': Adam(...)}"
                )
            return False
        composite = router.optimizer
        if self.restored_route_steps:  # a resumed run: what each route's scheduler follows
            for route, optimizer in composite.optimizers.items():
                steps = int(self.restored_route_steps.get(route_name(route), 0))
                composite.steps_taken[route] = steps
                if not steps:  # the state the checkpoint made for it (routing.state_dict)
                    optimizer.state.clear()
            self.restored_route_steps = None
        composite.sequential = self.route_mode == "sequential"
        composite.current = None
        if composite.frequencies:  # turns follow global_step
            composite.active = composite.turn(trainer.global_step)
        elif len(composite.active) != len(composite.optimizers):
            composite.active = tuple(composite.optimizers)
        if self._checked_alternation:
            return False
        self._checked_alternation = True  # (the routes' kind is fixed for the fit)
        if router.blocks is not None:
            router.blocks.alternating = router.alternating
        if not router.alternating:
            return False
        self._check_alternation(trainer, combines_terms)
        return True

    def _check_alternation(self, trainer: pl.Trainer, combines_terms: str | None) -> None:
        if combines_terms is not None:
            raise ValueError(
                f"{combines_terms}= combines every term into one gradient, but the per-key "
                "optimizers take turns (frequency) or run in sequence; expected one or the other"
            )
        if self.route_mode != "sequential":
            return
        if trainer.accumulate_grad_batches > 1:
            raise ValueError(
                "route_mode='sequential' re-runs forward before each route's step within "
                f"a batch; with accumulate_grad_batches={trainer.accumulate_grad_batches}"
                " a route would have to step before the others' micro-batches ran; expected "
                "accumulate_grad_batches=1, or turns ('frequency') with route_mode='joint', "
                "which span whole accumulated steps"
            )
        if _lightning.grad_scaler(trainer) is not None:
            raise ValueError(
                "route_mode='sequential' runs one closure per route inside the optimizer "
                "step, which a GradScaler (precision='16-mixed') does not allow (it runs the "
                "closure before stepping); expected precision='bf16-mixed' or '32', or turns "
                "('frequency') with route_mode='joint'"
            )

    # ------------------------------------------------------------------ sequential passes

    def sequential_pass(self) -> Route | None:
        """The route whose pass is running (``route_mode="sequential"``, training), else None."""
        router = self.router
        return None if router is None else router.optimizer.current

    def last_pass(self) -> bool:
        router = self.router
        assert router is not None
        return router.optimizer.current == router.optimizer.active[-1]

    def pend(self, parsed: ParsedOutput) -> None:
        """Keep this pass's share of the batch's values: a term from the pass of its own route
        (the first route that includes it; it may be computed in every pass), a term of no
        stepping route and every metric from the first pass that returns it."""
        router = self.router
        assert router is not None
        current, active = router.optimizer.current, router.optimizer.active
        for name, value in parsed.terms.items():
            owner = router.owner(name)
            if owner == current or (
                (owner is None or owner not in active) and name not in self._pending_terms
            ):
                self._pending_terms[name] = value.detach()
        for name, metric in parsed.metrics.items():
            if name not in self._pending_metrics:
                self._pending_metrics[name] = (
                    metric.detach() if isinstance(metric, Tensor) else metric
                )

    def take_passes(self) -> ParsedOutput:
        """The batch's values gathered over its passes, recorded as one training step."""
        parsed = ParsedOutput(terms=self._pending_terms, metrics=self._pending_metrics)
        self._pending_terms, self._pending_metrics = {}, {}
        return parsed

    # ------------------------------------------------------------------ gradients

    def objective(
        self,
        router: Router,
        names: tuple[str, ...],
        terms: list[Tensor],
        weighted: Tensor,
        total: Tensor,
    ) -> Tensor:
        """What Lightning backpropagates with per-key optimizers: the total where one backward
        leaves each parameter its own route's gradient, else a surrogate (see routing)."""
        router.note(names)
        if router.alternating:
            # only the stepping routes' gradients; zeros for every other parameter
            return router.surrogate(names, weighted, router.stepping())
        if router.one_backward_suffices(names, terms):
            router.before_backward(False)
            return total
        return router.surrogate(names, weighted)

    def active_routes(self, trainer: pl.Trainer | None) -> frozenset[str]:
        router = self.router if trainer is not None else None
        if router is None:
            if trainer is not None and not trainer.training:
                # validate()/test() before any fit: the routes are unknown, and all of them count
                return EVERY_ROUTE
            return frozenset({TOTAL})
        if trainer.training:  # type: ignore[union-attr]
            return frozenset(route_name(r) for r in router.stepping())
        return frozenset(router.route_names())

    def clip(
        self,
        module: pl.LightningModule,
        composite: RoutedOptimizer,
        gradient_clip_val: float | None,
        gradient_clip_algorithm: str | None,
    ) -> None:
        """Each stepping route optimizer clipped on its own parameters, with its own setting
        where its dict gives one."""
        if gradient_clip_val is None and not composite.clipping:
            return  # (no loop over the routes when nothing clips)
        stepping = composite.active if composite.current is None else (composite.current,)
        for route in stepping:  # the others hold zero gradients
            inner = composite.optimizers[route]
            if route not in composite.clipping:
                if gradient_clip_val is not None:  # (None: the Trainer clips nothing)
                    module.clip_gradients(inner, gradient_clip_val, gradient_clip_algorithm)
                continue
            # The route's own setting replaces the Trainer's. Straight to the precision plugin:
            # LightningModule.clip_gradients refuses a value that differs from the Trainer's.
            own_val, own_algorithm = composite.clipping[route]
            clip_val = gradient_clip_val if own_val is None else own_val  # 0: no clipping
            algorithm = own_algorithm or gradient_clip_algorithm or "norm"
            module.trainer.precision_plugin.clip_gradients(
                inner, clip_val or 0.0, gradient_clip_algorithm=GradClipAlgorithmType(algorithm)
            )

    # ------------------------------------------------------------------ checkpoints

    def state(self, trainer: pl.Trainer | None) -> dict[str, Any]:
        router = self.router_for_step(trainer)
        if router is None:
            return {"routes": None, "route_steps": None}
        return {
            "routes": router.route_names(),
            "route_steps": {route_name(r): n for r, n in router.optimizer.steps_taken.items()},
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """A fit resumes from a checkpoint: its routes are checked at the fit's start."""
        if "routes" in state:
            self.restored_routes = state["routes"]
        self.restored_route_steps = state.get("route_steps")

    def check_restored_routes(self, trainer: pl.Trainer) -> None:
        """Resuming with other per-key routes (or per-key <-> one optimizer) cannot work: say
        which routes differ before Lightning fails inside ``load_state_dict``."""
        saved, self.restored_routes = self.restored_routes, False
        if saved is False:
            return
        router = self.router_for_step(trainer)
        current = router.route_names() if router is not None else None
        if saved == current:
            return

        def describe_routes(routes: Any) -> str:
            return "one optimizer" if routes is None else f"routes {routes}"

        detail = ""
        if saved is not None and current is not None:
            missing = sorted(set(saved) - set(current))  # type: ignore[arg-type]
            new = sorted(set(current) - set(saved))  # type: ignore[arg-type]
            detail = f" (in the checkpoint only: {missing}; in this module only: {new})"
        raise ValueError(
            f"the checkpoint being resumed was trained with {describe_routes(saved)}, but "
            f"configure_optimizers now returns {describe_routes(current)}{detail}; expected the "
            "same optimizers to resume their state. To start a new fit from the weights, load "
            "them with load_from_checkpoint and call fit without ckpt_path."
        )

    def unmatched(self) -> list[str]:
        return self.router.unmatched() if self.router is not None else []


def translate(config: Any, module: Any) -> Any:
    """What ``configure_optimizers`` returned, with a route map made one ``RoutedOptimizer``
    that Lightning accepts (anything else as it is)."""
    if not is_route_map(config):
        return config
    return parse_route_map(config, module)


def is_routed(optimizer: Optimizer) -> RoutedOptimizer | None:
    return routed_optimizer([optimizer])
