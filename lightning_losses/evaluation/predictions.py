"""Evaluating models that predict in eval mode: their losses, and torchmetrics on their predictions.

A detector (torchvision's, DETR-style ones) computes losses only in training mode; in eval mode it
returns predictions. Its validation therefore needs two forwards: a training-mode one for
``val/`` losses and an eval-mode one for task metrics such as mAP. The first must not change
training: run naively (``model.train()``) it would update BatchNorm running statistics with
validation data, draw dropout masks, and advance the random stream that training's proposal
sampling and augmentations read. :func:`training_mode_losses` runs it with every layer whose
numbers depend on the mode (normalisation with running statistics, dropout, attention dropout)
kept in eval mode and the random state restored afterwards, so only the model's own
``if self.training:`` branches (compute losses, sample proposals) see training mode.

:class:`EvalMetrics` keeps one copy of the user's torchmetrics per (stage, dataloader), updates it
with each batch's predictions and logs ``compute()`` at the epoch's end. ``compute()`` syncs the
metric's states across DDP ranks itself (torchmetrics' own ``dist_reduce_fx``); its result is
logged as it is, never reduced again.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.dropout import _DropoutNd
from torchmetrics import Metric, MetricCollection

from lightning_losses.logging.windows import loader_suffix
from lightning_losses.terms.calling import describe_batch
from lightning_losses.terms.values import describe

#: ``eval_losses=``: where ``val/`` and ``test/`` losses come from (see LossDictModule).
EvalLosses = Literal["forward", "train_forward"] | None
EVAL_LOSSES = ("forward", "train_forward", None)
Metrics = Metric | MetricCollection | Mapping[str, Metric] | Sequence[Metric]
MetricInputs = Callable[[Any, Any], Sequence[Any]]

#: Layers whose outputs differ between train and eval mode for the same weights and input.
_MODE_DEPENDENT = (_NormBase, _DropoutNd, nn.MultiheadAttention)


def check_eval_losses(value: Any) -> None:
    if value not in EVAL_LOSSES:
        raise ValueError(
            f"eval_losses={value!r}; expected 'forward' (the eval-mode forward returns the "
            "losses), 'train_forward' (losses from a training-mode forward, predictions from the "
            "eval-mode one) or None (no evaluation losses)"
        )


@contextlib.contextmanager
def training_mode_losses(module: nn.Module) -> Iterator[None]:
    """``module`` in training mode for its own branching, but with normalisation, dropout and
    attention layers in eval mode, functional dropout off, and torch's random state restored on
    exit.

    The modes are restored module by module (``nn.Module.train(flag)`` would recurse and lose
    a submodule the user froze in eval mode on purpose).
    """
    modes = [(m, m.training) for m in module.modules()]
    devices = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices), _functional_dropout_off():
            for submodule, _ in modes:
                submodule.training = not isinstance(submodule, _MODE_DEPENDENT)
            yield
    finally:
        for submodule, training in modes:
            submodule.training = training


#: ``torch.nn.functional`` dropouts, called as ``F.dropout(x, p, training=self.training)`` by
#: models without ``nn.Dropout`` modules (HuggingFace's attention and MLP blocks).
_FUNCTIONAL_DROPOUTS = (
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "alpha_dropout",
    "feature_alpha_dropout",
)


@contextlib.contextmanager
def _functional_dropout_off() -> Iterator[None]:
    """Functional dropout, and ``scaled_dot_product_attention``'s ``dropout_p``, off for the pass.

    Such dropout reads the module's ``training`` flag, which the training-mode pass must set; no
    module attribute turns it off, so the functions themselves are replaced for the duration
    (PyTorch has no switch for this; the originals are put back on exit, also on error).
    """
    functional = torch.nn.functional
    originals = {name: getattr(functional, name) for name in _FUNCTIONAL_DROPOUTS}
    attention = functional.scaled_dot_product_attention

    def identity(input: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return input  # what every dropout returns with training=False

    def attention_without_dropout(*args: Any, **kwargs: Any) -> Tensor:
        if len(args) > 4:  # (query, key, value, attn_mask, dropout_p, ...)
            args = (*args[:4], 0.0, *args[5:])
        if "dropout_p" in kwargs:
            kwargs["dropout_p"] = 0.0
        return attention(*args, **kwargs)

    try:
        for name in originals:
            setattr(functional, name, identity)
        functional.scaled_dot_product_attention = attention_without_dropout
        yield
    finally:
        for name, original in originals.items():
            setattr(functional, name, original)
        functional.scaled_dot_product_attention = attention


def default_metric_inputs(predictions: Any, batch: Any) -> tuple[Any, Any]:
    """``(predictions, targets)`` for ``metric.update``: the targets are the batch's last element
    (``(images, targets)``, ``(x, y)``) or its ``"labels"`` entry (HuggingFace batches); a
    HuggingFace output's predictions are its ``logits``."""
    if isinstance(predictions, Mapping) and "logits" in predictions:
        predictions = predictions["logits"]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return predictions, batch[-1]
    if isinstance(batch, Mapping) and "labels" in batch:
        return predictions, batch["labels"]
    raise TypeError(
        f"metrics: cannot tell the targets in a batch that is {describe_batch(batch)}; "
        "expected a tuple or list whose last element is the targets, a mapping with 'labels', "
        "or metric_inputs=(predictions, batch) -> (preds, target) to say what metric.update gets"
    )


def as_collection(metrics: Any) -> MetricCollection:
    """The user's ``metrics=`` as one ``MetricCollection`` (which names and flattens results)."""
    if isinstance(metrics, MetricCollection):
        return metrics
    if isinstance(metrics, Metric):
        return MetricCollection([metrics])
    if isinstance(metrics, Mapping):
        for name, metric in metrics.items():
            if not isinstance(metric, Metric):
                raise TypeError(
                    f"metrics[{name!r}] is {describe(metric)}; expected a torchmetrics Metric"
                )
        return MetricCollection(dict(metrics))
    if isinstance(metrics, Sequence) and not isinstance(metrics, str):
        for index, metric in enumerate(metrics):
            if not isinstance(metric, Metric):
                raise TypeError(
                    f"metrics[{index}] is {describe(metric)}; expected a torchmetrics Metric"
                )
        return MetricCollection(list(metrics))
    raise TypeError(
        f"metrics is {describe(metrics)}; expected a torchmetrics Metric, a MetricCollection, "
        "a mapping of names to Metrics, a list of Metrics, or None"
    )


class EvalMetrics:
    """One copy of the metrics per (stage, dataloader), updated per batch, logged per epoch.

    The template (registered on the module, so it follows it across devices) is never updated
    itself; copies are plain attributes, so they add nothing to the state dict.
    """

    def __init__(self, template: MetricCollection, inputs: MetricInputs | None) -> None:
        self.template = template
        self.inputs = inputs or default_metric_inputs
        self._live: dict[tuple[str, int], MetricCollection] = {}
        self._loaders: dict[str, int] = {}

    def begin(self, stage: str, loaders: int) -> None:
        """Fresh copies for each loader of the epoch starting now, on every rank alike (the
        epoch's ``compute`` is a collective)."""
        self.discard(stage)
        self._loaders[stage] = loaders
        for loader in range(loaders):
            self._live[(stage, loader)] = self.template.clone()

    def update(self, stage: str, loader: int, predictions: Any, batch: Any) -> None:
        collection = self._live.get((stage, loader))
        if collection is None:  # a step called outside Lightning's evaluation loop
            collection = self._live[(stage, loader)] = self.template.clone()
        inputs = self.inputs(predictions, batch)
        if not isinstance(inputs, (tuple, list)):
            raise TypeError(
                f"metric_inputs returned {describe(inputs)}; expected a tuple of the arguments "
                "of metric.update, such as (preds, target)"
            )
        try:
            collection.update(*inputs)
        except Exception as error:
            add_note = getattr(error, "add_note", None)  # Python >= 3.11
            if add_note is not None:
                shown = ", ".join(describe_batch(value, depth=1) for value in inputs)
                how = (
                    "the default metric_inputs (predictions, batch[-1] or batch['labels'])"
                    if self.inputs is default_metric_inputs
                    else "your metric_inputs"
                )
                add_note(
                    f"lightning_losses: metrics.update was called with ({shown}) from {how}; "
                    "pass metric_inputs=(predictions, batch) -> (preds, target) to give the "
                    "metric what it expects"
                )
            raise

    def compute(self, stage: str) -> dict[int, dict[str, float]]:
        """Each loader's metric values as ``{"<stage>/<name>": float}``; the copies are dropped.

        Values that are not scalars (mAP's ``classes``, per-class tensors) are not logged.
        """
        results: dict[int, dict[str, float]] = {}
        loaders = self._loaders.get(stage, 1)
        for key in sorted(k for k in self._live if k[0] == stage):  # the same order on every rank
            collection = self._live.pop(key)
            suffix = loader_suffix(key[1], loaders)
            with warnings.catch_warnings():
                # a loader with no batch on this rank still joins the states' sync
                warnings.filterwarnings("ignore", message=".*compute.*before.*update")
                computed = collection.compute()
            results[key[1]] = {
                f"{stage}/{name}{suffix}": value for name, value in _flatten(computed).items()
            }
        return results

    def discard(self, stage: str) -> None:
        for key in [k for k in self._live if k[0] == stage]:
            del self._live[key]


def _flatten(computed: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for name, value in computed.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{key}/"))
        elif _is_real_scalar(value):
            flat[key] = float(value)
    return flat


def _is_real_scalar(value: Any) -> bool:
    if isinstance(value, Tensor):
        return value.dim() == 0 and not value.is_complex()
    return isinstance(value, (int, float)) and not isinstance(value, bool)
