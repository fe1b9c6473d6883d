"""``LossDictModule``: the Lightning hooks, wired to the pure functions of the other modules.

A batch's losses travel one way: ``forward`` -> :func:`~lightning_losses.terms.parse_output` ->
weighted total -> Lightning's backward and step; beside that, the stacked values go into on-device
accumulators (:mod:`lightning_losses.tracking`) that are reduced and written once per logging
interval. This class decides *when* things happen; the other modules decide *what*.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import GradClipAlgorithmType, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import _restricted_classmethod
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lightning_losses import (
    _lightning,
    aggregation,
    collectives,
    context,
    evaluation,
    hparams,
    routing,
    summaries,
)
from lightning_losses.batches import batch_size
from lightning_losses.calling import Call, ModelCall, describe_batch
from lightning_losses.diagnostics import GradientDiagnostics, diagnostic_names, gradient_statistics
from lightning_losses.log import EPOCH_SUFFIX, SKIPPED_STEPS, LossLog
from lightning_losses.names import KINDS_FILE, NameCheck
from lightning_losses.plan import StepPlan
from lightning_losses.shared import SharedParameters
from lightning_losses.terms import (
    TOTAL,
    KeySelector,
    LossKeys,
    ParsedOutput,
    check_term_devices,
    describe,
    no_terms_message,
    parse_output,
)
from lightning_losses.tracking import Reduced, accumulator_dtype
from lightning_losses.weighting.scalarizer import ScalarizerWeighting, is_scalarizer
from lightning_losses.weights import LossWeights, WeightValue

Stage = Literal["train", "val", "test"]
NonFinite = Literal["raise", "skip", "off"]
NONFINITE_MODES = ("raise", "skip", "off")
RouteMode = Literal["joint", "sequential"]
ROUTE_MODES = ("joint", "sequential")
STAGES = ("train", "val", "test")
#: Lightning's advice for epoch-level values under DDP; ours are reduced over ranks already.
_SYNC_DIST_ADVICE = r"It is recommended to use `self\.log\('"
OptimizerFactory = Callable[[Iterable[Any]], Optimizer]
# Class return types let LightningCLI build these from ``class_path`` + ``init_args``.
SchedulerFactory = Callable[[Optimizer], LRScheduler | ReduceLROnPlateau | Mapping[str, Any]]
StepOutput = Tensor | dict[str, Any] | None

_CHECKPOINT_KEY = "lightning_losses"


def default_optimizer(params: Iterable[Any]) -> Optimizer:
    """Adam with lr=1e-3, the optimizer used when neither ``optimizer=`` nor
    ``configure_optimizers`` is given."""
    return torch.optim.Adam(params, lr=1e-3)


class LossDictModule(pl.LightningModule):
    """A ``LightningModule`` whose model returns its losses.

    Subclass it and write ``forward(batch)``, or wrap a model: ``LossDictModule(model)`` calls
    ``model(batch)``. ``forward`` returns a 0-dim loss, a (nested) mapping of losses and other
    values, or ``None`` for a batch with nothing to learn; everything else (reducing, weighting,
    logging every term, non-finite checks) happens here.

    Args:
        model: the module to wrap; ``None`` when subclassing.
        loss_keys: which entries are loss terms: ``None`` for every 0-dim floating tensor, names or
            glob patterns (``"loss_*"``), or a callable ``name -> bool``.
        loss_weights: name or glob pattern -> constant weight or schedule ``global_step -> weight``;
            unlisted terms weigh 1.
        weighting: an ``nn.Module`` that computes per-term weights (see
            :class:`~lightning_losses.weighting.Weighting`); trained and checkpointed with the
            model.
        aggregator: combines the terms' gradients on the shared parameters: a callable from
            the ``[K, P]`` Jacobian to a ``[P]`` gradient, such as torchjd's ``UPGrad()``
            (see :mod:`lightning_losses.aggregation`).
        optimizer: ``params -> Optimizer``, used by the default ``configure_optimizers``.
        lr_scheduler: ``optimizer -> scheduler`` (or a Lightning scheduler dict), likewise.
        nonfinite: ``"raise"``, ``"skip"`` or ``"off"``: what a non-finite loss term does.
        prog_bar: names (without ``train/``) shown in the progress bar at each write.
        grad_diagnostics_every_n_steps: log each term's gradient norm on the shared parameters
            (``grad_norm/<term>``) and the cosine between every two terms' gradients
            (``grad_cos/<a>_vs_<b>``) every this many steps; ``None`` (default) never.
        shared_parameters: qualified-name prefixes (``"trunk"``, ``["backbone", "neck"]``) of the
            parameters that gradient diagnostics and ``aggregator`` look at; default: every
            trainable parameter that two or more terms reach.
        call: how a wrapped ``model`` is called with a batch: ``"auto"`` (unpack a mapping as
            keywords and a tuple as positional arguments when ``forward``'s signature takes
            them, else pass it whole), ``"batch"``, ``"positional"``, ``"keyword"``, or a
            callable ``(model, batch) -> output`` (see :mod:`lightning_losses.calling`).
        total_key: the entry that already is the model's weighted total (``"loss"`` for
            HuggingFace outputs, whose ``loss`` includes ``aux_loss`` or DETR's ``loss_dict``):
            it is backpropagated and logged as ``train/loss``; every other scalar is logged
            under its own name and never added to it again.
        eval_losses: where ``val/`` and ``test/`` losses come from: ``"forward"`` (the eval-mode
            forward returns them), ``"train_forward"`` (a training-mode forward with
            normalisation and dropout layers in eval mode and the random state restored, for
            models that predict in eval mode, such as detectors) or ``None`` (none).
        metrics: torchmetrics for evaluation (a ``Metric``, ``MetricCollection``, or a mapping
            or list of them), updated with the eval-mode forward's output and logged as
            ``val/<name>``/``test/<name>`` per dataloader; ``compute()`` syncs them over ranks.
        metric_inputs: ``(predictions, batch) -> args of metric.update``; default
            ``(predictions, batch[-1])``, or ``batch["labels"]`` for a mapping batch.
        route_mode: with per-key optimizers, ``"joint"`` (every active route steps on one
            forward's gradients) or ``"sequential"`` (within each batch the routes step one
            after another, ``forward`` re-run before each: the classic GAN loop). Routes whose
            dict has ``"frequency"`` take turns either way; ``self.active_routes`` tells
            ``forward`` which routes step now.

    If you override ``setup``, ``on_fit_start``, ``on_train_epoch_end``, ``on_train_end``,
    ``on_validation_start``, ``on_test_start``, ``on_validation_epoch_start/end``,
    ``on_test_epoch_start/end``, the ``on_*_batch_start/end`` hooks,
    ``on_before_optimizer_step`` or ``configure_gradient_clipping``, call ``super()`` there.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        loss_keys: LossKeys = None,
        loss_weights: Mapping[str, WeightValue] | None = None,
        weighting: nn.Module | None = None,
        aggregator: Callable[[Tensor], Tensor] | None = None,
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: SchedulerFactory | None = None,
        nonfinite: NonFinite = "raise",
        prog_bar: Iterable[str] = (TOTAL,),
        grad_diagnostics_every_n_steps: int | None = None,
        shared_parameters: str | Sequence[str] | None = None,
        call: Call = "auto",
        total_key: str | None = None,
        eval_losses: evaluation.EvalLosses = "forward",
        metrics: evaluation.Metrics | None = None,
        metric_inputs: evaluation.MetricInputs | None = None,
        route_mode: RouteMode = "joint",
    ) -> None:
        super().__init__()
        # Plain values only, never code (see hparams.py for what is stored and how it reloads).
        self._configured_by_cli = _lightning.configured_by_cli()
        hparams.save(self, cli=self._configured_by_cli)
        self._unsaved_hparams: set[str] = set()  # warned about at saving
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model is {describe(model)}; expected an nn.Module or None")
        if weighting is not None and not isinstance(weighting, nn.Module):
            raise TypeError(f"weighting is {describe(weighting)}; expected an nn.Module or None")
        if weighting is not None and is_scalarizer(
            weighting
        ):  # torchjd's FAMO, IMTLL, UW, DWA, ...
            weighting = ScalarizerWeighting(weighting)
        if aggregator is not None and not callable(aggregator):
            raise TypeError(
                f"aggregator is {describe(aggregator)}; expected a callable [K, P] -> [P] such as "
                "torchjd.aggregation.UPGrad() or None"
            )
        if aggregator is not None and weighting is not None:
            raise ValueError(
                f"weighting={type(weighting).__name__}(...) and aggregator={aggregator!r} both "
                "decide how the terms combine; expected one of them (static loss_weights still "
                "scale the terms before aggregation)"
            )
        for name, factory in (("optimizer", optimizer), ("lr_scheduler", lr_scheduler)):
            if factory is not None and not callable(factory):
                raise TypeError(f"{name} is {describe(factory)}; expected a callable or None")
        if nonfinite not in NONFINITE_MODES:
            raise ValueError(
                f"nonfinite={nonfinite!r}; expected one of {', '.join(map(repr, NONFINITE_MODES))}"
            )
        for module in (model, weighting, aggregator):
            if isinstance(module, nn.Module) and hparams.is_skeleton(module):
                hparams.materialize(module)  # a skeleton from a checkpoint's hyperparameters
        evaluation.check_eval_losses(eval_losses)
        if route_mode not in ROUTE_MODES:
            raise ValueError(
                f"route_mode={route_mode!r}; expected 'joint' (every route on one forward's "
                "gradients) or 'sequential' (routes step one after another within a batch)"
            )
        self.route_mode = route_mode
        self.model = model
        self._model_call = ModelCall(call)
        self.eval_losses = eval_losses
        #: The metrics' template; each evaluation epoch updates fresh copies of it.
        self.eval_metrics = None if metrics is None else evaluation.as_collection(metrics)
        if metric_inputs is not None and not callable(metric_inputs):
            raise TypeError(
                f"metric_inputs is {describe(metric_inputs)}; expected a callable "
                "(predictions, batch) -> arguments of metric.update"
            )
        self._metrics = (
            None
            if self.eval_metrics is None
            else evaluation.EvalMetrics(self.eval_metrics, metric_inputs)
        )
        self.weighting = weighting
        self._weighting_bound = False
        self.aggregator = aggregator
        self._aggregated = SharedParameters(shared_parameters)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.nonfinite = nonfinite
        self.loss_keys = loss_keys
        self._select = KeySelector(loss_keys, total_key)
        self._weights = LossWeights(loss_weights)
        # before the first training step, what the configuration names decides (API.md §1)
        self._select.name_terms(list(loss_weights or ()))
        weighted_terms = getattr(weighting, "terms", None)
        if isinstance(weighted_terms, tuple):
            self._select.name_terms(weighted_terms, all_terms=True)
        self._prog_bar = frozenset(f"train/{name}" for name in prog_bar)
        self._diagnostics = (
            GradientDiagnostics(grad_diagnostics_every_n_steps, shared_parameters)
            if grad_diagnostics_every_n_steps is not None
            else None
        )
        self._undiagnosable: set[tuple[str, ...]] = set()  # key sets warned about
        #: Registry, windows, epoch and evaluation means, plans: see log.py.
        self._log = LossLog()
        self._names = NameCheck()
        self._warned_untrained: set[str] = set()
        #: Route names of the checkpoint being resumed (None: one optimizer), see on_fit_start.
        self._restored_routes: list[str] | bool | None = False
        self._warned_no_grad: set[str] = set()
        self._checked_unmatched = False
        self._drop_gradients = False
        self._summarized: set[str] = set()
        self._router: routing.Router | None = None
        self._checked_alternation = False
        self._single_optimizer = False
        self._epoch_just_ended = False
        self._step_at_batch_start = 0
        self._restored_route_steps: dict[str, int] | None = None
        self._default_prog_bar = tuple(prog_bar) == (TOTAL,)
        #: route_mode="sequential": each name's value from the pass that logs it (see _pend).
        self._pending_terms: dict[str, Tensor] = {}
        self._pending_metrics: dict[str, Tensor | float] = {}
        # add_loss/add_metric from submodules: a step's collection opens with its forward when
        # no batch-start hook opened one (see context.py)
        self.register_forward_pre_hook(_open_step_collection)
        #: Training steps skipped for non-finite losses (``nonfinite="skip"``), over all epochs.
        self.skipped_steps = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A subclass's configure_optimizers may return a route map ({"seg": Adam, ...}), which
        # Lightning would not accept: translate it on the way out.
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("configure_optimizers")
        if own is not None and not getattr(own, "_routes_translated", False):

            @functools.wraps(own)
            def configure_optimizers(self: LossDictModule) -> Any:
                return self._translate_routes(own(self))

            configure_optimizers._routes_translated = True  # type: ignore[attr-defined]
            cls.configure_optimizers = configure_optimizers  # type: ignore[method-assign]

    @property
    def trainer(self) -> pl.Trainer:
        trainer = self._trainer
        if trainer is not None and self._fabric is None:  # the common case, read every step
            return trainer
        return pl.LightningModule.trainer.fget(self)  # type: ignore[attr-defined]

    @trainer.setter
    def trainer(self, trainer: pl.Trainer | None) -> None:
        pl.LightningModule.trainer.fset(self, trainer)  # type: ignore[attr-defined]
        if trainer is not None and getattr(self, "_quiet", None) is None:
            # Lightning attaches the trainer just before it checks the loops: this module
            # provides validation_step for those who validate, and a fit without a val loader
            # should not be told "You defined a validation_step" (removed again in setup()).
            self._quiet = _lightning.quiet_unused_validation_step()

    def setup(self, stage: str) -> None:
        self._lift_loop_check_silence()

    def _lift_loop_check_silence(self) -> None:
        """Lift the loop-check silence (see the ``trainer`` setter); also from ``on_fit_start``,
        for a subclass whose ``setup`` does not call ``super()``."""
        _lightning.unquiet(getattr(self, "_quiet", None))
        self._quiet = None

    # ------------------------------------------------------------------ forward and steps

    def forward(self, batch: Any) -> Any:
        if self.model is None:
            raise NotImplementedError(
                f"{type(self).__name__} has no model: subclass LossDictModule and define "
                "forward(batch), or wrap one with LossDictModule(model)"
            )
        return self._model_call(self.model, batch)

    def training_step(self, batch: Any, batch_idx: int = 0) -> StepOutput:
        if not self.automatic_optimization:
            # Lightning would run no backward and no optimizer step for what this returns.
            raise RuntimeError(
                f"{type(self).__name__}.automatic_optimization is False, but the training_step "
                "it runs is LossDictModule's, which relies on Lightning's automatic optimization; "
                "expected automatic_optimization=True, or your own training_step that calls "
                "self.manual_backward(self.total_loss(self(batch))) and steps the optimizers"
            )
        return self.total_loss(self(batch), stage="train", batch=batch)

    def validation_step(
        self, batch: Any, batch_idx: int = 0, dataloader_idx: int = 0
    ) -> StepOutput:
        return self.evaluate(batch, "val", dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int = 0, dataloader_idx: int = 0) -> StepOutput:
        return self.evaluate(batch, "test", dataloader_idx)

    def evaluate(self, batch: Any, stage: Stage = "val", dataloader_idx: int = 0) -> StepOutput:
        """One evaluation batch: its losses (as ``eval_losses`` says) and ``metrics`` updates.

        This is the whole of the provided ``validation_step`` and ``test_step``.
        """
        metrics = self._metrics
        if self.eval_losses == "train_forward":
            with evaluation.training_mode_losses(self):
                output = self(batch)
            result = self.total_loss(output, stage, batch, dataloader_idx)
            if metrics is not None:
                metrics.update(stage, dataloader_idx, self(batch), batch)
            return result
        output = self(batch)
        if metrics is not None:
            metrics.update(stage, dataloader_idx, output, batch)
        if self.eval_losses is None:
            return None
        if isinstance(output, (list, tuple)) or (
            isinstance(output, Tensor) and not (output.dim() == 0 and output.is_floating_point())
        ):
            raise TypeError(
                f"{stage}: forward returned {describe_batch(output, depth=1)} in eval mode, "
                "not losses: the model predicts in eval mode. Expected eval_losses="
                "'train_forward' (losses from a training-mode forward that changes neither "
                "BatchNorm statistics nor the random state) with metrics= for the predictions, "
                "or eval_losses=None for metrics only"
            )
        return self.total_loss(output, stage, batch, dataloader_idx)

    def get_batch_size(self, batch: Any) -> int:
        """The weight of a batch in ``val/`` and ``test/`` epoch means: its number of samples
        (see :func:`lightning_losses.batches.batch_size`); override for odd batches."""
        return batch_size(batch)

    def total_loss(
        self,
        output: Any,
        stage: Stage = "train",
        batch: Any = None,
        dataloader_idx: int | None = None,
    ) -> StepOutput:
        """Reduce what ``forward`` returned to the weighted total, and record every value.

        This is the whole of the provided ``*_step`` methods; call it from your own
        ``training_step`` to keep the reduction and logging. Returns what Lightning expects from a
        step: the total (with pass-through outputs, as a dict), or ``None`` when there is nothing
        to learn from the batch. ``dataloader_idx`` defaults to the loader Lightning is running.
        """
        if stage not in STAGES:
            raise ValueError(f"stage={stage!r}; expected one of {', '.join(map(repr, STAGES))}")
        collected = context.drain(self)
        if collected is not None:
            if collected.metrics:
                self._select.added_metrics.update(collected.metrics)  # never a term
            output = context.merge(output, collected)
        if dataloader_idx is None:
            dataloader_idx = _lightning.current_dataloader_idx(self) if stage != "train" else 0
        result = self._reduce(output, stage, batch, dataloader_idx)
        if stage == "train":
            current = self._sequential_pass()
            if current is not None:
                if current != self._router.optimizer.active[-1]:  # type: ignore[union-attr]
                    return result  # the batch's values are recorded after its last pass
                self._record_passes(batch)
            self._log.step_taken()
        if (
            stage == "train"
            and self._trainer_attached()
            and _lightning.writes_step_metrics(self.trainer)
        ):
            self._write_window()
        return result

    def _reduce(self, output: Any, stage: Stage, batch: Any, loader: int) -> StepOutput:
        parsed = parse_output(output, self._select, stage)
        training = stage == "train"
        if parsed is None or not parsed.terms:
            if training and parsed is not None:
                raise ValueError(no_terms_message(parsed, self._select, repr(self.loss_keys)))
            if parsed is not None and parsed.metrics:
                if training and self._sequential_pass() is not None:
                    self._pend(parsed)
                else:
                    self._record(stage, parsed, None, None, None, batch, loader)
            return self._nothing_to_learn() if training else _step_output(None, parsed)
        if (
            not training
            and not self._select.explicit
            and self._select.total_key is None
            and not self._select.trained
            and (len(parsed.terms) > 1 or parsed.metrics)  # a lone value can only be the loss
        ):
            self._warn_untrained_eval(stage, parsed)

        plan = self._plan(stage, parsed, loader)
        losses = _stack_terms(parsed.terms)
        if losses.dtype is not torch.float32 and losses.dtype is not torch.float64:
            losses = losses.float()  # half-precision terms: reduce and log in full precision
        step = self._global_step()
        weights = None
        if not plan.weights.all_ones:
            weights = plan.weights.vector(step, losses.device, losses.dtype)
        penalty = None
        if self.weighting is not None:
            if training and not self._weighting_bound:
                self._weighting_bound = True
                bind = getattr(self.weighting, "bind", None)  # any nn.Module may weigh
                if bind is not None:
                    bind(self)
            learned = self.weighting(losses, plan.terms).to(losses.dtype)
            weights = learned if weights is None else weights * learned
            penalty_of = getattr(self.weighting, "penalty", None)
            penalty = penalty_of(losses, plan.terms) if penalty_of is not None else None
        # One op either way: the per-step path is bound by dispatch overhead, not arithmetic.
        total = losses.sum() if weights is None else torch.dot(losses, weights)
        if penalty is not None:
            total = total + penalty

        objective = total
        if training:
            self._warn_no_grad(parsed)
            if self.nonfinite == "skip" and self._skip_nonfinite(losses):
                return self._nothing_to_learn(skipped=True)
            terms = list(parsed.terms.values())
            if torch.is_grad_enabled() and not total.requires_grad:
                return self._nothing_requires_grad(plan.terms)
            # before any surrogate below: they consume the graph that diagnostics differentiate
            if self._diagnostics is not None and self._diagnostics.due(step):
                self._diagnose(plan.terms, terms)
            objective = self._gradient_objective(plan.terms, terms, losses, weights, total)
            if penalty is not None and objective is not total:
                objective = objective + penalty  # the strategy's own parameters learn from it
        if training and self._sequential_pass() is not None:
            self._pend(parsed)
        else:
            self._record(stage, parsed, plan, losses, total, batch, loader, weights, step)
        return _step_output(objective, parsed)

    # ------------------------------------------------------------------ sequential routes

    def _sequential_pass(self) -> routing.Route | None:
        """The route whose pass is running (``route_mode="sequential"``, training), else None."""
        router = self._router
        return None if router is None else router.optimizer.current

    def _pend(self, parsed: ParsedOutput) -> None:
        """Keep this pass's share of the batch's values: a term from the pass of its own route
        (the first route that includes it; it may be computed in every pass), a term of no
        stepping route and every metric from the first pass that returns it."""
        router = self._router
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

    def _record_passes(self, batch: Any) -> None:
        """Record the batch's values, gathered over its passes, as one training step."""
        parsed = ParsedOutput(terms=self._pending_terms, metrics=self._pending_metrics)
        self._pending_terms, self._pending_metrics = {}, {}
        if not parsed.terms:
            if parsed.metrics:
                self._record("train", parsed, None, None, None, batch, 0)
            return
        plan = self._plan("train", parsed, 0)
        losses = _stack_terms(parsed.terms)
        if losses.dtype is not torch.float32 and losses.dtype is not torch.float64:
            losses = losses.float()
        step = self._global_step()
        weights = None
        if not plan.weights.all_ones:
            weights = plan.weights.vector(step, losses.device, losses.dtype)
        total = losses.sum() if weights is None else torch.dot(losses, weights)
        self._record("train", parsed, plan, losses, total, batch, 0, weights, step)

    @property
    def active_routes(self) -> frozenset[str]:
        """The routes that step now, for ``forward`` to skip losses no active route needs.

        In training with per-key optimizers: the routes whose turn it is (``"frequency"``), or in
        ``route_mode="sequential"`` the route whose pass runs. Outside training (validation,
        test) every route, so that evaluation computes every loss; before the optimizers exist
        (``validate()`` before ``fit``) a set that contains every name. With one optimizer:
        ``{"loss"}``.
        """
        router = self._router if self._trainer_attached() else None
        if router is None:
            if self._trainer_attached() and not self.trainer.training:
                # validate()/test() before any fit: the routes are unknown, and all of them count
                return routing.EVERY_ROUTE
            return frozenset({TOTAL})
        if self.trainer.training:
            return frozenset(routing.route_name(r) for r in router.stepping())
        return frozenset(router.route_names())

    def _begin_routed_batch(self) -> None:
        """Set which routes step at this batch (turns follow ``global_step``)."""
        if self._single_optimizer:
            return  # this fit has one optimizer: nothing to route (checked at its first batch)
        router = self._route_for_step()
        if router is None:
            self._single_optimizer = True
            if self.route_mode == "sequential":
                raise ValueError(
                    "route_mode='sequential' steps per-key optimizers one after another, but "
                    "configure_optimizers returned one optimizer; expected a route map such as "
                    "{'discriminator': Adam(...), 'generator': Adam(...)}"
                )
            return
        composite = router.optimizer
        if self._restored_route_steps:  # a resumed run: what each route's scheduler follows
            for route in composite.optimizers:
                name = routing.route_name(route)
                composite.steps_taken[route] = int(self._restored_route_steps.get(name, 0))
            self._restored_route_steps = None
        composite.sequential = self.route_mode == "sequential"
        composite.current = None
        composite.active = composite.turn(self.trainer.global_step)
        if router.alternating and not self._checked_alternation:
            self._checked_alternation = True
            self._check_alternation(router)

    def _check_alternation(self, router: routing.Router) -> None:
        if self.weighting is not None or self.aggregator is not None:
            chosen = "weighting" if self.weighting is not None else "aggregator"
            raise ValueError(
                f"{chosen}= combines every term into one gradient, but the per-key optimizers "
                "take turns (frequency) or run in sequence; expected one or the other"
            )
        if self.route_mode == "sequential":
            if self.trainer.accumulate_grad_batches > 1:
                raise ValueError(
                    "route_mode='sequential' re-runs forward before each route's step within "
                    f"a batch; with accumulate_grad_batches={self.trainer.accumulate_grad_batches}"
                    " a route would have to step before the others' micro-batches ran; expected "
                    "accumulate_grad_batches=1, or turns ('frequency') with route_mode='joint', "
                    "which span whole accumulated steps"
                )
            if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
                raise ValueError(
                    "route_mode='sequential' runs one closure per route inside the optimizer "
                    "step, which a GradScaler (precision='16-mixed') does not allow (it runs the "
                    "closure before stepping); expected precision='bf16-mixed' or '32', or turns "
                    "('frequency') with route_mode='joint'"
                )
        if self._default_prog_bar:
            # the sum of a generator's and a discriminator's loss means nothing: show each
            names = [t for route in router.routes for t in route if t != TOTAL]
            self._prog_bar = frozenset(f"train/{name}" for name in names) or self._prog_bar

    def _gradient_objective(
        self,
        names: tuple[str, ...],
        terms: list[Tensor],
        losses: Tensor,
        weights: Tensor | None,
        total: Tensor,
    ) -> Tensor:
        """What Lightning backpropagates: the total, or a surrogate that leaves per-route or
        aggregated gradients in ``.grad`` (see routing.py and aggregation.py)."""
        router = self._route_for_step()
        if router is not None:
            if self.aggregator is not None:
                raise ValueError(
                    "aggregator= cannot be combined with per-key optimizers: both decide the "
                    "shared parameters' gradient; expected one optimizer with aggregator=, or "
                    "per-key optimizers without it"
                )
            router.note(names)
            weighted = losses if weights is None else losses * weights
            if router.alternating:
                # only the stepping routes' gradients; zeros for every other parameter
                return router.surrogate(names, weighted, router.stepping())
            if router.one_backward_suffices(names, terms):
                return total
            return router.surrogate(names, weighted)
        if self.aggregator is None or not torch.is_grad_enabled():
            return total
        shared = self._aggregated(self, names, terms)
        if len(names) < 2 or not shared:
            return total  # nothing to combine: the total's gradient is the aggregate
        ids = {id(p) for p in shared}
        others = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        weighted = losses if weights is None else losses * weights
        return aggregation.surrogate(weighted, shared, others, self.aggregator)

    def _diagnose(self, names: tuple[str, ...], terms: list[Tensor]) -> None:
        """Record gradient norms and cosines on the shared parameters (see diagnostics.py)."""
        assert self._diagnostics is not None
        if not torch.is_grad_enabled() or not any(t.requires_grad for t in terms):
            return
        params = self._diagnostics.parameters(self, names, terms)
        if not params:
            if names not in self._undiagnosable:
                self._undiagnosable.add(names)
                rank_zero_warn(
                    f"gradient diagnostics: no trainable parameter is reached by two or more of "
                    f"the terms {list(names)}; pass shared_parameters= to name the shared ones"
                )
            return
        values = gradient_statistics(terms, params).detach()
        values = values.to(accumulator_dtype(values.device))
        self._log.record_diagnostics(diagnostic_names(names), values)

    # ------------------------------------------------------------------ recording

    def _plan(self, stage: Stage, parsed: ParsedOutput, loader: int) -> StepPlan:
        terms = tuple(parsed.terms)
        if parsed.metrics:
            metrics = parsed.metrics.items()
            tensor_metrics = tuple(k for k, v in metrics if isinstance(v, Tensor))
            number_metrics = tuple(k for k, v in metrics if not isinstance(v, Tensor))
        else:
            tensor_metrics = number_metrics = ()
        # (a change of the number of loaders drops the stage's plans, see LossLog.begin_eval)
        key = (stage, loader, terms, tensor_metrics, number_metrics)
        plan = self._log.cached_plan(key)
        if plan is not None:
            return plan
        weight_plan = self._weights.plan(terms)
        if stage != "train":
            logged: tuple[int, ...] = ()
        elif self.weighting is not None:
            logged = tuple(range(len(terms)))
        else:
            logged = weight_plan.logged
        if self._trainer_attached():  # a key set new to this run: names MLflow would change
            self._names.check(
                (f"{stage}/{name}" for name in (*terms, *tensor_metrics, *number_metrics)),
                self.trainer.loggers,
            )
        return self._log.plan(
            key, stage, loader, terms, tensor_metrics, number_metrics, weight_plan, logged
        )

    def _record(
        self,
        stage: Stage,
        parsed: ParsedOutput,
        plan: StepPlan | None,
        losses: Tensor | None,
        total: Tensor | None,
        batch: Any,
        loader: int,
        weights: Tensor | None = None,
        step: int = 0,
    ) -> None:
        """Add this step's values, in the plan's layout, to the stage's accumulator."""
        if plan is None:
            plan = self._plan(stage, parsed, loader)
        device = self.device if losses is None else losses.device
        with torch.no_grad():
            values = self._concatenate(plan, parsed, losses, total, weights, device)
        if stage == "train":
            check = self.nonfinite == "raise" and losses is not None
            self._log.record_train(plan, values, step, check)
        else:
            self._log.record_eval(plan, values, loader, float(self.get_batch_size(batch)))

    @staticmethod
    def _concatenate(
        plan: StepPlan,
        parsed: ParsedOutput,
        losses: Tensor | None,
        total: Tensor | None,
        weights: Tensor | None,
        device: torch.device,
    ) -> Tensor:
        """The step's values in the plan's layout, cast into its float64 buffer in one op."""
        buffer = plan.buffer(device)
        if plan.terms_and_total and total is not None:
            if plan.sole_total:
                return buffer.copy_(total.view(1))
            return torch.cat((losses, total.view(1)), out=buffer)  # type: ignore[arg-type]
        parts: list[Tensor] = []
        if losses is not None and not plan.sole_total:
            parts.append(losses)
        if total is not None:
            parts.append(total.view(1))
        if plan.tensor_metrics:
            metrics = {k: parsed.metrics[k] for k in plan.tensor_metrics}
            try:
                stacked = torch.stack([m.to(device) for m in metrics.values()])  # type: ignore[union-attr]
            except (RuntimeError, NotImplementedError):
                check_term_devices({**parsed.terms, **metrics}, "logged values")
                raise
            parts.append(stacked.to(buffer.dtype))
        if plan.number_metrics:
            numbers = [float(parsed.metrics[k]) for k in plan.number_metrics]
            parts.append(torch.tensor(numbers, dtype=buffer.dtype).to(device, non_blocking=True))
        if plan.logged_weights and weights is not None:
            parts.append(weights if plan.logs_every_weight else weights[plan.weight_index(device)])
        return torch.cat([p.to(buffer.dtype) for p in parts], out=buffer)

    def _warn_untrained_eval(self, stage: Stage, parsed: ParsedOutput) -> None:
        # once, and only where the guess can be wrong: a name nothing in the configuration calls
        # a term, beside other values
        names = [name for name in parsed.terms if self._select.guessed(name)]
        if not names or self._warned_untrained:
            return
        self._warned_untrained.update(names)
        rank_zero_warn(
            f"{stage}: no training step has told loss terms from metrics yet (it goes by which "
            f"values carry a gradient), so every 0-dim floating value counts as a term of "
            f"{stage}/loss: {', '.join(map(repr, names))}. Pass loss_keys= to decide, or load a "
            "checkpoint of a trained model."
        )

    def _warn_no_grad(self, parsed: ParsedOutput) -> None:
        if not torch.is_grad_enabled():
            return
        for name, term in parsed.terms.items():
            if not term.requires_grad and name not in self._warned_no_grad:
                self._warned_no_grad.add(name)
                rank_zero_warn(
                    f"loss term {name!r} does not require grad although grad is enabled in "
                    "training: it cannot train anything (was it computed under no_grad, or from "
                    "detached tensors?)"
                )

    # ------------------------------------------------------------------ nothing to learn / skip

    def _nothing_requires_grad(self, names: tuple[str, ...]) -> StepOutput:
        """No term carries a graph: Lightning's backward would fail deep inside autograd."""
        if self._trainer_attached() and self.trainer.world_size > 1:
            # Raising on one rank would leave the others waiting in the gradient all-reduce;
            # the per-term warning has named the terms already.
            return self._nothing_to_learn()
        raise ValueError(
            f"no loss term requires grad (terms {list(names)}); expected at least one term "
            "computed from trainable parameters (was forward run under torch.no_grad, from "
            "detached tensors, or are all parameters frozen?)"
        )

    def _skip_nonfinite(self, losses: Tensor) -> bool:
        # The one place a training step syncs with the host: deciding to skip must happen before
        # the optimizer steps, and every rank must decide the same.
        if not collectives.any_rank(~torch.isfinite(losses.detach()).all()):
            return False
        self.skipped_steps += 1
        return True

    def _nothing_to_learn(self, skipped: bool = False) -> StepOutput:
        """What a training step returns when it has no loss (``None``) or must not update."""
        if isinstance(self.weighting, ScalarizerWeighting) and not skipped:
            self.weighting.absent(self.device)  # the other ranks pool their terms: join, raise
        if skipped:
            # Cancels the whole optimizer step this batch belongs to (also with accumulation).
            self._drop_gradients = True
        if not (self._trainer_attached() and self.trainer.world_size > 1):
            return None
        # Under DDP every rank must run backward, or the ranks that did wait forever in the
        # gradient all-reduce: a zero through every trainable parameter contributes zero gradients.
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.stack([p.sum() for p in params]).sum() * 0.0 if params else None

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        if self._drop_gradients:
            self._drop_gradients = False
            for param in self.parameters():
                param.grad = None  # the optimizer skips parameters without a gradient

    # ------------------------------------------------------------------ writing

    def _write_window(
        self, to_callbacks: bool = True, labels: tuple[int, int] | None = None
    ) -> None:
        reduced = self._log.write(self.device)
        self._raise_if_nonfinite(reduced)
        metrics = reduced.means
        if self.nonfinite == "skip":
            metrics[f"train/{SKIPPED_STEPS}"] = float(self.skipped_steps)
        self._define_summaries(metrics)
        _lightning.publish_step_metrics(self.trainer, metrics, self._prog_bar, to_callbacks, labels)

    def _define_summaries(self, metrics: Mapping[str, float]) -> None:
        """Give loss names their ``min`` summary in W&B, once each, before their first write."""
        if metrics.keys() <= self._summarized:
            return
        kind_of = self._log.kind_of
        new = [
            name
            for name in metrics
            if name not in self._summarized
            and (kind_of(name) or kind_of(name.removesuffix(EPOCH_SUFFIX))) in ("term", "total")
        ]
        self._summarized.update(metrics)
        summaries.define_min_summaries(self.trainer, new)

    def _raise_if_nonfinite(self, reduced: Reduced) -> None:
        if self.nonfinite != "raise" or not reduced.nonfinite:
            return
        step, rank = min(reduced.nonfinite.values())
        names = [
            name.split("/", 1)[1] for name, first in reduced.nonfinite.items() if first[0] == step
        ]
        where = (
            f" on rank {rank}" if self._trainer_attached() and self.trainer.world_size > 1 else ""
        )
        raise FloatingPointError(
            f"non-finite loss term{'s' if len(names) > 1 else ''} "
            f"{', '.join(map(repr, names))} at step {step}{where}; expected finite losses. "
            "Pass nonfinite='skip' to skip such steps, or nonfinite='off' to disable this check."
        )

    # ------------------------------------------------------------------ lifecycle hooks

    def on_fit_start(self) -> None:
        self._lift_loop_check_silence()
        self._log.begin("fit")
        self._router, self._checked_alternation = None, False  # this fit's optimizers
        self._single_optimizer = False
        self._check_restored_routes()

    def on_train_epoch_end(self) -> None:
        reduced = self._log.end_train_epoch(self.device)
        self._raise_if_nonfinite(reduced)
        epoch_end = getattr(self.weighting, "epoch_end", None)
        if epoch_end is not None:
            kind_of = self._log.kind_of
            epoch_end(
                {
                    name.split("/", 1)[1]: value
                    for name, value in reduced.means.items()
                    if name.startswith("train/") and kind_of(name) == "term"
                }
            )
        epoch_means = {
            f"{name}{EPOCH_SUFFIX}": value
            for name, value in reduced.means.items()
            if name.startswith("train/")
        }
        self._epoch_just_ended = True
        # As Lightning's own on_step + on_epoch logging does: after the epoch, the plain name
        # holds the epoch mean for monitors (which run after this hook), not the last window.
        self.trainer.callback_metrics.update(
            {
                name: torch.tensor(value, dtype=torch.float64)
                for name, value in reduced.means.items()
                if name.startswith("train/")
            }
        )
        self._define_summaries(epoch_means)
        # self.log (not a direct logger write) so that these land in Lightning's own epoch-end
        # row and callbacks can monitor them. The values are already means over all ranks:
        # Lightning's advice to pass sync_dist=True would cost one collective per key, so that
        # one warning is silenced here, locally, rather than by a global filter per name.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SYNC_DIST_ADVICE)
            for name, value in epoch_means.items():
                self.log(
                    name,
                    torch.tensor(value, dtype=torch.float64),
                    on_step=False,
                    on_epoch=True,
                    batch_size=1,
                    sync_dist=False,
                )
        if not self._checked_unmatched:
            self._checked_unmatched = True
            routes = self._router.unmatched() if self._router is not None else []
            for source, entries in (
                ("loss_weights", self._weights.unmatched()),
                ("loss_keys", self._select.unmatched()),
                ("optimizer route", routes),
            ):
                for entry in entries:
                    rank_zero_warn(
                        f"{source} entry {entry!r} matched no loss term during the first "
                        "training epoch; check its spelling"
                    )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._epoch_just_ended = False
        if isinstance(self.weighting, ScalarizerWeighting):  # FAMO: did this batch step?
            self._step_at_batch_start = self.trainer.global_step
        context.open_step(self, fresh=True)
        self._begin_routed_batch()

    def on_validation_batch_start(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        context.open_step(self, fresh=True)

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        context.open_step(self, fresh=True)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        context.close(self)  # a step that never reached total_loss keeps nothing
        # a callback asked to stop after this batch (Timer, EarlyStopping): Lightning writes its
        # own step metrics here, so the last window is written here too, with its labels
        trainer = self.trainer
        log = self._log
        if trainer.should_stop and log.window_open and _lightning.writes_step_metrics(trainer):
            self._write_window()
        weighting = self.weighting
        if (
            isinstance(weighting, ScalarizerWeighting)
            and weighting.needs_after_step
            and self.trainer.global_step > self._step_at_batch_start  # an optimizer step ran
        ):
            self._after_step(weighting, batch)

    def _after_step(self, weighting: ScalarizerWeighting, batch: Any) -> None:
        """FAMO's update: the batch's losses recomputed after the model's step (a forward
        without gradients, in the mode training runs in)."""
        with torch.no_grad():
            context.open_step(self, fresh=True)
            try:
                output = self(batch)
                collected = context.drain(self)
            finally:
                context.close(self)
        if collected is not None:
            output = context.merge(output, collected)
        parsed = parse_output(output, self._select, "train")
        if parsed is None or not parsed.terms:
            weighting.absent(self.device)
            return
        weighting.after_step(_stack_terms(parsed.terms), tuple(parsed.terms))

    def on_validation_batch_end(
        self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        context.close(self)

    def on_test_batch_end(
        self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        context.close(self)

    def on_train_end(self) -> None:
        # Training stopped (max_epochs, max_steps, a callback's should_stop, a Timer): the steps
        # since the last write are still to be written.
        if self._log.window_open:
            # after an epoch's end the monitors keep its means (see on_train_epoch_end); a run
            # stopped mid-epoch has none, and the last window is what it has
            self._write_window(
                to_callbacks=not self._epoch_just_ended,
                labels=_lightning.last_batch_labels(self.trainer),
            )
        self._write_kinds()

    def _write_kinds(self) -> None:
        """Beside a file logger's run (CSV, TensorBoard): which names are loss terms, totals
        and metrics, which the logs themselves cannot tell (``python -m lightning_losses plot``
        draws metrics apart from losses with it)."""
        if not self.trainer.is_global_zero:
            return
        kinds = {
            name.split("/", 1)[1]: kind
            for name, kind in self._log.session.registry.kind_of.items()
            if name.startswith("train/") and kind in ("term", "total", "metric")
        }
        if not kinds:
            return
        for logger in self.trainer.loggers:
            log_dir = getattr(logger, "log_dir", None)
            if isinstance(log_dir, str) and os.path.isdir(log_dir):
                with open(os.path.join(log_dir, KINDS_FILE), "w") as handle:
                    json.dump(kinds, handle, indent=1, sort_keys=True)

    def on_validation_start(self) -> None:
        # validate(): a call of its own; a validation inside fit belongs to the fit's session
        if _lightning.running(self.trainer) != "fit":
            self._log.begin("validate")

    def on_test_start(self) -> None:
        self._log.begin("test")

    def on_validation_epoch_start(self) -> None:
        loaders = _lightning.num_eval_dataloaders(self.trainer, "val")
        self._log.begin_eval("val", loaders)
        if self._metrics is not None:
            self._metrics.begin("val", loaders)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_start(self) -> None:
        loaders = _lightning.num_eval_dataloaders(self.trainer, "test")
        self._log.begin_eval("test", loaders)
        if self._metrics is not None:
            self._metrics.begin("test", loaders)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def _log_eval(self, stage: Stage) -> None:
        per_loader = [dict(reduced.means) for reduced in self._log.end_eval(stage, self.device)]
        if self.trainer.sanity_checking:
            if self._metrics is not None:
                self._metrics.discard(stage)
            return  # Lightning writes nothing of the sanity check either
        if self._metrics is not None:
            for loader, values in self._metrics.compute(stage).items():
                while len(per_loader) <= loader:
                    per_loader.append({})
                clash = sorted(set(values) & set(per_loader[loader]))
                if clash:
                    raise ValueError(
                        f"metrics log {', '.join(map(repr, clash))}, which forward also returns; "
                        "expected distinct names (rename the metric in a mapping or "
                        "MetricCollection)"
                    )
                per_loader[loader].update(values)
        for means in per_loader:
            self._define_summaries(means)
        _lightning.publish_eval_metrics(self.trainer, per_loader)

    # ------------------------------------------------------------------ optimizers, checkpoints

    def _translate_routes(self, config: Any) -> Any:
        if not routing.is_route_map(config):
            return config
        # route names are term names: before the first training step they decide (API.md §1);
        # without a "loss" route (the total) they are all the terms there are
        routed = [name for key in config for name in ((key,) if isinstance(key, str) else key)]
        self._select.name_terms([n for n in routed if n != TOTAL], all_terms=TOTAL not in routed)
        return routing.parse_route_map(config, self)

    def _route_for_step(self) -> routing.Router | None:
        if self._single_optimizer:
            return None
        if self._router is None and self._trainer_attached():
            composite = routing.routed_optimizer(self.trainer.optimizers)
            if composite is not None:
                self._router = routing.Router(composite)
        return self._router

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        # With per-key optimizers each route optimizer is clipped on its own parameters.
        composite = routing.routed_optimizer([optimizer])
        if composite is None:
            if gradient_clip_val is None:
                return  # nothing to clip (Lightning's own hook would validate, then do nothing)
            super().configure_gradient_clipping(
                optimizer, gradient_clip_val, gradient_clip_algorithm
            )
            return
        stepping = composite.active if composite.current is None else (composite.current,)
        for route in stepping:  # the others hold zero gradients
            inner = composite.optimizers[route]
            if route not in composite.clipping:
                self.clip_gradients(inner, gradient_clip_val, gradient_clip_algorithm)
                continue
            # The route's own setting replaces the Trainer's. Straight to the precision plugin:
            # LightningModule.clip_gradients refuses a value that differs from the Trainer's.
            own_val, own_algorithm = composite.clipping[route]
            clip_val = gradient_clip_val if own_val is None else own_val  # 0: no clipping
            algorithm = own_algorithm or gradient_clip_algorithm or "norm"
            self.trainer.precision_plugin.clip_gradients(
                inner, clip_val or 0.0, gradient_clip_algorithm=GradClipAlgorithmType(algorithm)
            )

    def configure_routes(self) -> routing.RouteMap | None:
        """Per-key optimizers, for typed code: override this instead of ``configure_optimizers``
        and return the route map (``{"seg": Adam(...), ("d", "gp"): {"optimizer": ...,
        "frequency": 5}}``). Returning a route map from ``configure_optimizers`` works the same
        at run time, but Lightning's annotation of that hook cannot express it, so a type checker
        rejects the override. ``None`` (the default): ``configure_optimizers`` decides."""
        return None

    def configure_optimizers(self) -> Any:
        routes = self.configure_routes()
        if routes is not None:
            return self._translate_routes(routes)
        factory = self.optimizer_factory or default_optimizer
        optimizer = factory(self.parameters())
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer(params) returned {describe(optimizer)}; expected a "
                "torch.optim.Optimizer"
            )
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler_factory(optimizer)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        router = self._route_for_step()
        ours: dict[str, Any] = {
            "skipped_steps": self.skipped_steps,
            # the partly filled window and epoch, so that a resumed run writes what an
            # uninterrupted one would have (see LossLog.load_state for DDP)
            **self._log.state(),
            # training's term/metric verdicts, so that evaluation after a reload sums the same
            "classification": self._select.state(),
            "routes": router.route_names() if router is not None else None,
            "route_steps": (
                {routing.route_name(r): n for r, n in router.optimizer.steps_taken.items()}
                if router is not None
                else None
            ),
        }
        stored = checkpoint.get(self.CHECKPOINT_HYPER_PARAMS_KEY)
        if stored is not None:  # plain values only; what is left out is named (see hparams.py)
            checkpoint[self.CHECKPOINT_HYPER_PARAMS_KEY] = hparams.for_checkpoint(self, stored)
        checkpoint[_CHECKPOINT_KEY] = ours

    @_restricted_classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: Any,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Lightning's ``load_from_checkpoint``, which also rebuilds our arguments that the
        checkpoint records as ``{"class_path": ..., "init_args": {...}}`` (a wrapped model, a
        ``functools.partial`` optimizer; see hparams.py), below any ``kwargs`` you give. Nothing
        from the file is unpickled or executed; what it could not record (a class defined in
        ``__main__``, a lambda schedule) is named, and must be passed: ``model=Net()``.
        """
        kwargs = hparams.from_checkpoint(cls, checkpoint_path, hparams_file, kwargs)
        return super().load_from_checkpoint(
            checkpoint_path,
            map_location=map_location,
            hparams_file=hparams_file,
            strict=strict,
            weights_only=weights_only,
            **kwargs,
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(_CHECKPOINT_KEY, {})
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if "classification" in state:
            self._select.load_state(state["classification"])
        # Resuming a fit (Lightning restores the module just before the fit starts): the saved
        # windows continue and the optimizers must match; any other load starts whatever runs
        # next from empty windows, with whatever optimizers it configures.
        resuming = self._trainer_attached() and _lightning.running(self.trainer) == "fit"
        rank = self.trainer.global_rank if self._trainer_attached() else 0
        if resuming:
            if "routes" in state:
                self._restored_routes = state["routes"]
            self._restored_route_steps = state.get("route_steps")
            # Most strategies restore before on_fit_start (which begins the fit's session);
            # FSDP-like ones after it, into the session already begun.
            after_start = bool(
                getattr(self.trainer.strategy, "restore_checkpoint_after_setup", False)
            )
            self._log.load_state(state, apply_now=after_start, rank=rank)

    def _check_restored_routes(self) -> None:
        """Resuming with other per-key routes (or per-key <-> one optimizer) cannot work: say
        which routes differ before Lightning fails inside ``load_state_dict``."""
        saved, self._restored_routes = self._restored_routes, False
        if saved is False or saved is True:
            return
        router = self._route_for_step()
        current = router.route_names() if router is not None else None
        if saved == current:
            return

        def describe_routes(routes: list[str] | None) -> str:
            return "one optimizer" if routes is None else f"routes {routes}"

        detail = ""
        if saved is not None and current is not None:
            missing = sorted(set(saved) - set(current))
            new = sorted(set(current) - set(saved))
            detail = f" (in the checkpoint only: {missing}; in this module only: {new})"
        raise ValueError(
            f"the checkpoint being resumed was trained with {describe_routes(saved)}, but "
            f"configure_optimizers now returns {describe_routes(current)}{detail}; expected the "
            "same optimizers to resume their state. To start a new fit from the weights, load "
            "them with load_from_checkpoint and call fit without ckpt_path."
        )

    # ------------------------------------------------------------------ helpers

    def _trainer_attached(self) -> bool:
        return self._trainer is not None

    def _global_step(self) -> int:
        return self.trainer.global_step if self._trainer_attached() else 0


def _open_step_collection(module: LossDictModule, args: Any) -> None:
    """Forward pre-hook: open the step's add_loss collection if a Trainer loop is running and no
    batch-start hook opened one (a user's batch hooks that do not call ``super()``)."""
    trainer = module._trainer
    if trainer is not None and (
        trainer.training or trainer.validating or trainer.testing or trainer.sanity_checking
    ):
        context.open_step(module)


def _stack_terms(terms: Mapping[str, Tensor]) -> Tensor:
    """The terms as one vector; a clear error where torch's would not name the keys."""
    try:
        losses = torch.stack(list(terms.values()))
    except (RuntimeError, NotImplementedError):  # devices that do not mix; meta has no data
        check_term_devices(terms)
        raise
    if losses.is_meta:
        check_term_devices(terms)
    return losses


def _step_output(total: Tensor | None, parsed: ParsedOutput | None) -> StepOutput:
    """What a ``*_step`` returns: the total, with any pass-through outputs beside it.

    A pass-through output named ``loss`` (a tensor of shape (1,), an HF model's ``loss=None``) is
    dropped: under that name Lightning backpropagates, and only the total may be there.
    """
    if parsed is None or not parsed.outputs:
        return total
    outputs = {name: value for name, value in parsed.outputs.items() if name != TOTAL}
    if total is None:
        return outputs or None
    return {TOTAL: total, **outputs} if outputs else total
