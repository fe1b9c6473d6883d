"""``LossDictModule``: the public surface. Its constructor, public methods and option
attributes; its Lightning hooks are made from one list (``session/hooks.py``) and ask the
module's ``Core`` (``session/core.py``) or the running ``FitSession`` (``session/fit.py``),
where each decision is made.

A subclass may override any hook without ``super()``: the library's part of it runs anyway,
exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lightning_losses import _lightning, routing
from lightning_losses.checkpoints import hparams
from lightning_losses.evaluation import predictions as evaluation
from lightning_losses.evaluation.batches import batch_size
from lightning_losses.routing.session import RouteMode
from lightning_losses.session import hooks, options
from lightning_losses.session.core import Core
from lightning_losses.session.guards import NonFinite
from lightning_losses.session.options import check_arguments
from lightning_losses.session.steps import StepOutput
from lightning_losses.terms.calling import Call
from lightning_losses.terms.selector import LossKeys
from lightning_losses.terms.values import TOTAL, describe
from lightning_losses.weighting.static import LossWeights, WeightValue

Stage = Literal["train", "val", "test"]
OptimizerFactory = Callable[[Iterable[Any]], Optimizer]
# Class return types let LightningCLI build these from ``class_path`` + ``init_args``.
SchedulerFactory = Callable[[Optimizer], LRScheduler | ReduceLROnPlateau | Mapping[str, Any]]


def default_optimizer(params: Iterable[Any]) -> Optimizer:
    """Adam with lr=1e-3, the optimizer used when neither ``optimizer=`` nor
    ``configure_optimizers`` is given."""
    return torch.optim.Adam(params, lr=1e-3)


class LossDictModule(pl.LightningModule):
    """A ``LightningModule`` whose model returns its losses.

    Subclass it and write ``forward(batch)``, or wrap a model: ``LossDictModule(model)``.
    ``forward`` returns a 0-dim loss, a (nested) mapping of losses and other values, or ``None``
    for a batch with nothing to learn; everything else (reducing, weighting, logging every term,
    non-finite checks) happens here. Override any Lightning hook as usual: ``super()`` is not
    needed, and nothing logged changes (``configure_gradient_clipping`` is the exception: an
    override replaces the clipping, as in Lightning).

    Args:
        model: the module to wrap; ``None`` when subclassing.
        loss_keys: which entries are loss terms. ``None`` (default): a 0-dim floating tensor that
            carries a gradient in training is a term, one that does not is a metric (never
            summed); before the first training step, whatever names the terms decides (a
            ``weighting``'s term list, ``loss_weights`` patterns, routes). Or names and glob
            patterns (``"loss_*"``), or a callable ``name -> bool``.
        loss_weights: name or glob pattern -> constant weight or schedule ``global_step -> weight``;
            unlisted terms weigh 1.
        weighting: an ``nn.Module`` that computes per-term weights (see
            :class:`~lightning_losses.weighting.Weighting`, or a torchjd scalarizer); trained
            and checkpointed with the model.
        aggregator: combines the terms' gradients on the shared parameters: a callable from
            the ``[K, P]`` Jacobian to a ``[P]`` gradient, such as torchjd's ``UPGrad()``
            (see :mod:`lightning_losses.gradients.aggregation`).
        optimizer: ``params -> Optimizer``, used by the default ``configure_optimizers``.
        lr_scheduler: ``optimizer -> scheduler`` (or a Lightning scheduler dict), likewise.
        nonfinite: ``"raise"``, ``"skip"`` or ``"off"``: what a non-finite loss term does.
        prog_bar: names (without ``train/``) shown in the progress bar, from the first step.
        grad_diagnostics_every_n_steps: log each term's gradient norm on the shared parameters
            (``grad_norm/<term>``) and the cosine between every two terms' gradients
            (``grad_cos/<a>_vs_<b>``) every this many steps; ``None`` (default) never.
        shared_parameters: qualified-name prefixes (``"trunk"``, ``["backbone", "neck"]``) of the
            parameters that gradient diagnostics and ``aggregator`` look at; default: every
            trainable parameter that two or more terms reach.
        call: how a wrapped ``model`` is called with a batch: ``"auto"`` (unpack a mapping as
            keywords and a tuple as positional arguments when ``forward``'s signature takes
            them, else pass it whole), ``"batch"``, ``"positional"``, ``"keyword"``, or a
            callable ``(model, batch) -> output`` (see :mod:`lightning_losses.terms.calling`).
        total_key: the entry that already is the model's weighted total (``"loss"`` for
            HuggingFace outputs): it is backpropagated and logged as ``train/loss``; every other
            scalar is logged under its own name and never added to it again.
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
        weighting = check_arguments(
            model, weighting, aggregator, optimizer, lr_scheduler, metric_inputs
        )
        LossWeights(loss_weights)  # (checked here, so that a bad one fails before anything)
        self.model = model
        self.weighting = weighting
        self.aggregator = aggregator
        # the metrics' template; each evaluation epoch updates fresh copies of it
        eval_metrics = None if metrics is None else evaluation.as_collection(metrics)
        self.eval_metrics = eval_metrics
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        #: Training steps skipped for non-finite losses (``nonfinite="skip"``), over all epochs.
        self.skipped_steps = 0
        self._core = Core(
            self,
            {
                "loss_keys": loss_keys,
                "total_key": total_key,
                "loss_weights": dict(loss_weights or {}),
                "aggregator": aggregator,
                "nonfinite": nonfinite,
                "prog_bar": tuple(prog_bar),
                "grad_diagnostics_every_n_steps": grad_diagnostics_every_n_steps,
                "shared_parameters": shared_parameters,
                "call": call,
                "eval_losses": eval_losses,
                "metrics": eval_metrics,
                "inputs": metric_inputs,
                "route_mode": route_mode,
                "provided_validation_step": LossDictModule.validation_step,
            },
            weighting,
        )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        hooks.chain(cls, LossDictModule)  # overrides without super(); route maps translated

    # ------------------------------------------------------------------ options (API.md §10)
    # Assigning one takes effect, or is refused saying how to change it; never ignored.

    loss_weights = options.attribute(
        "loss_weights", "The weights as given (names or patterns -> constant or schedule)."
    )
    nonfinite = options.attribute("nonfinite", "What a non-finite loss term does.")
    loss_keys = options.attribute("loss_keys", "Which entries are terms; fixed at construction.")
    route_mode = options.attribute("route_mode", "``joint`` or ``sequential``; between fits.")
    eval_losses = options.attribute("eval_losses", "Where val/ and test/ losses come from.")
    weighting = options.attribute("weighting", "The weighting strategy (``weighting=``).")
    aggregator = options.attribute("aggregator", "The gradient aggregator (``aggregator=``).")
    eval_metrics = options.attribute("eval_metrics", "The evaluation metrics' template.")

    # ------------------------------------------------------------------ forward and steps

    def forward(self, batch: Any) -> Any:
        """The wrapped model called with the batch as ``call=`` says; a subclass overrides
        this to return its losses."""
        if self.model is None:
            raise NotImplementedError(
                f"{type(self).__name__} has no model: subclass LossDictModule and define "
                "forward(batch), or wrap one with LossDictModule(model)"
            )
        return self._core.model_call(self.model, batch)

    def training_step(self, batch: Any, batch_idx: int = 0) -> StepOutput:
        """``total_loss(self(batch))``: the weighted total that Lightning backpropagates (with
        per-key optimizers, an objective that gives each route its own gradient). Every term
        and metric is recorded for logging."""
        if not self.automatic_optimization:
            # Lightning would run no backward and no optimizer step for what this returns.
            raise RuntimeError(
                f"{type(self).__name__}.automatic_optimization is False, but the training_step "
                "it runs is LossDictModule's, which relies on Lightning's automatic optimization; "
                "expected automatic_optimization=True, or your own training_step that calls "
                "self.manual_backward(self.total_loss(self(batch))) and steps the optimizers"
            )
        router = self._core.routing.router
        if router is None or not router.optimizer.compiling():
            return self.total_loss(self(batch), stage="train", batch=batch)
        with router.optimizer.forward_context():  # see RoutedOptimizer.forward_context
            output = self(batch)
        return self.total_loss(output, stage="train", batch=batch)

    def validation_step(
        self, batch: Any, batch_idx: int = 0, dataloader_idx: int = 0
    ) -> StepOutput:
        """``evaluate(batch, "val")``: ``val/<term>``, ``val/loss`` and metrics, as epoch means
        weighted by batch size."""
        return self.evaluate(batch, "val", dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int = 0, dataloader_idx: int = 0) -> StepOutput:
        """``evaluate(batch, "test")``, logged under ``test/``."""
        return self.evaluate(batch, "test", dataloader_idx)

    def predict_step(self, batch: Any, batch_idx: int = 0, dataloader_idx: int = 0) -> Any:
        """What ``trainer.predict`` returns per batch: the eval-mode forward's output, as is
        (predictions for a model that predicts in eval mode; its losses for one that always
        returns them). Nothing is reduced or logged."""
        return self(batch)

    def evaluate(self, batch: Any, stage: Stage = "val", dataloader_idx: int = 0) -> StepOutput:
        """One evaluation batch: its losses (as ``eval_losses`` says) and ``metrics`` updates.
        This is the whole of the provided ``validation_step`` and ``test_step``."""
        return self._core.evaluation.evaluate(batch, stage, dataloader_idx)

    def get_batch_size(self, batch: Any) -> int:
        """The weight of a batch in ``val/`` and ``test/`` epoch means: its number of samples
        (see :func:`lightning_losses.evaluation.batches.batch_size`); override for odd batches."""
        return batch_size(batch)

    def total_loss(
        self,
        output: Any,
        stage: Stage | None = None,
        batch: Any = None,
        dataloader_idx: int | None = None,
    ) -> StepOutput:
        """Reduce what ``forward`` returned to the weighted total, and record every value.

        This is the whole of the provided ``*_step`` methods; call it from your own
        ``training_step`` (or ``validation_step``, ``test_step``) to keep the reduction and
        logging. Returns what Lightning expects from a step: the total (with pass-through
        outputs, as a dict), or ``None`` when there is nothing to learn from the batch.
        ``stage`` defaults to what the trainer runs (training, validation or the sanity check,
        test; ``"train"`` outside a trainer), ``dataloader_idx`` to the loader it runs.
        """
        return self._core.step(output, stage, batch, dataloader_idx)

    @property
    def active_routes(self) -> frozenset[str]:
        """The routes that step now, for ``forward`` to skip losses no active route needs.

        In training with per-key optimizers: the routes whose turn it is (``"frequency"``), or in
        ``route_mode="sequential"`` the route whose pass runs. Outside training (validation,
        test) every route, so that evaluation computes every loss; before the optimizers exist
        (``validate()`` before ``fit``) a set that contains every name. With one optimizer:
        ``{"loss"}``.
        """
        return self._core.active_routes()

    # ------------------------------------------------------------------ optimizers

    def configure_routes(self) -> routing.RouteMap | None:
        """Per-key optimizers, for typed code: override this instead of ``configure_optimizers``
        and return the route map (``{"seg": Adam(...), ("d", "gp"): {"optimizer": ...,
        "frequency": 5}}``). Returning a route map from ``configure_optimizers`` works the same
        at run time, but Lightning's annotation of that hook cannot express it, so a type checker
        rejects the override. ``None`` (the default): ``configure_optimizers`` decides."""
        return None

    def configure_optimizers(self) -> Any:
        """The optimizers: ``configure_routes()`` if it returns a route map, else
        ``optimizer(self.parameters())`` (default Adam, lr=1e-3) with ``lr_scheduler``.

        Override it as in Lightning; unlike plain Lightning, it may also return a route map,
        ``{"seg": Adam(...), "depth": SGD(...)}``, which stays in automatic optimization:
        clipping, accumulation, precision and ``global_step`` keep their meaning."""
        routes = self.configure_routes()
        if routes is not None:
            return self._core.translate_routes(routes)
        optimizer = (self.optimizer_factory or default_optimizer)(self.parameters())
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer(params) returned {describe(optimizer)}; expected a "
                "torch.optim.Optimizer"
            )
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler_factory(optimizer)}

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning's clipping; with per-key optimizers each route's optimizer is clipped on its
        own parameters, with the route's own ``"gradient_clip_val"`` where its dict has one."""
        self._core.clip(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ------------------------------------------------------------------ checkpoints

    @_lightning.restricted_classmethod
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
        ``functools.partial`` optimizer, a built-in weighting; see hparams.py), below any
        ``kwargs`` you give. Nothing from the file is unpickled or executed; what it could not
        record (a class defined in ``__main__``, a lambda schedule) is named, and must be
        passed: ``model=Net()``.
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


hooks.install(LossDictModule)  # its Lightning hooks, from one list (session/hooks.py)
hparams.use_constructor(LossDictModule.__init__)
