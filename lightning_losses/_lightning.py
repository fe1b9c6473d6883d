"""Where the library reaches past Lightning's public API, each place with its reason.

Kept in one module so that a Lightning upgrade has one file to check.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch


def writes_step_metrics(trainer: pl.Trainer) -> bool:
    """Whether Lightning writes step-level metrics to the loggers after the current batch.

    Mirrors ``_LoggerConnector.update_train_step_metrics`` (no write while accumulating gradients,
    else every ``log_every_n_steps`` batches that stepped, on the last batch before a stop, and
    every batch under ``fast_dev_run``), so our windows close exactly when Lightning's do;
    Lightning's own ``LearningRateMonitor`` asks the same private property.
    """
    if (
        trainer.accumulate_grad_batches > 1  # only then can a batch be an accumulating one
        and trainer.fit_loop._should_accumulate()
        and trainer.lightning_module.automatic_optimization
    ):
        return False
    fast_dev_run = trainer.fast_dev_run  # type: ignore[attr-defined]  # set in __init__
    return bool(trainer._logger_connector.should_update_logs or fast_dev_run)


def publish_step_metrics(
    trainer: pl.Trainer,
    metrics: Mapping[str, float],
    progress_bar: Collection[str] = (),
    to_callbacks: bool = True,
) -> None:
    """Write already-reduced step values to every logger, to callbacks and to the progress bar.

    Not ``self.log``: a value logged with ``on_step=True`` stays in Lightning's result collection
    and is written again at every later write of the epoch, even when the key was absent since;
    the contract forbids repeating a stale value. ``log_metrics`` is the function Lightning itself
    uses to write step metrics (same ``step``, same ``epoch`` column).
    """
    if not metrics:
        return
    tensors = {name: torch.tensor(value, dtype=torch.float64) for name, value in metrics.items()}
    connector = trainer._logger_connector
    connector.log_metrics(tensors)
    # callback_metrics feed ModelCheckpoint / EarlyStopping monitors; the property returns the
    # connector's own dict, so updating it is what self.log would have done.
    if to_callbacks:
        trainer.callback_metrics.update(tensors)
    connector._progress_bar_metrics.update(
        {name: value for name, value in metrics.items() if name in progress_bar}
    )


def configured_by_cli() -> bool:
    """Whether ``LightningCLI`` is constructing the module right now.

    Then ``save_hyperparameters`` stores the CLI's own config (module arguments as
    ``class_path`` dicts) and ``load_from_checkpoint`` rebuilds through the CLI's instantiator,
    so nothing needs to be left out or replaced (see hparams.py).
    """
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

    return _given_hyperparameters.get() is not None


def checkpoint_entry(path: Any, key: str) -> dict[str, Any]:
    """``checkpoint[key]`` read with ``weights_only=True`` (and memory-mapped where the file is
    local, so the tensors are not read); ``{}`` if the file needs more than ``weights_only``."""
    from lightning.fabric.utilities.cloud_io import _load

    try:
        if isinstance(path, (str, os.PathLike)) and os.path.isfile(path):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        elif hasattr(path, "seek"):  # a file object: Lightning reads it again afterwards
            position = path.tell()
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            path.seek(position)
        else:  # a remote URL or fsspec path
            checkpoint = _load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return {}
    entry = checkpoint.get(key) if isinstance(checkpoint, dict) else None
    return entry if isinstance(entry, dict) else {}


def running(trainer: pl.Trainer) -> str:
    """What the trainer runs now: ``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``."""
    fn = trainer.state.fn
    return fn.value if fn is not None else ""


def current_dataloader_idx(module: pl.LightningModule) -> int:
    """The index of the evaluation loader whose batch is being run, for a ``total_loss`` call
    from a user's own ``validation_step`` that does not pass it.

    Lightning keeps it on the result collection (``on_batch_start``), where ``self.log`` reads it
    to add the ``/dataloader_idx_<i>`` suffix; it is ``None`` with one loader.
    """
    trainer = module._trainer
    results = getattr(trainer, "_results", None) if trainer is not None else None
    index = getattr(results, "dataloader_idx", None)
    return int(index) if index is not None else 0


def num_eval_dataloaders(trainer: pl.Trainer, stage: str) -> int:
    """How many loaders the running evaluation iterates (Lightning's public batch counts)."""
    counts = trainer.num_val_batches if stage == "val" else trainer.num_test_batches
    return max(1, len(counts))


def publish_eval_metrics(trainer: pl.Trainer, per_loader: Sequence[Mapping[str, float]]) -> None:
    """Hand each loader's epoch means to Lightning as if that loader's steps had logged them.

    Not ``self.log`` from the epoch-end hook: Lightning adds what is logged there to *every*
    loader's result dict, so ``trainer.validate()`` would return the same dict for all loaders.
    The evaluation loop keeps one dict per loader (``_logged_outputs``, filled before the
    epoch-end hook and written to the loggers as one row right after it); adding our values there
    gives exactly Lightning's own per-loader behaviour, in float64. ``callback_metrics`` (what
    ``ModelCheckpoint`` and ``EarlyStopping`` monitor) and ``logged_metrics`` get them too.
    """
    loop = trainer._evaluation_loop
    outputs: list[dict[str, Any]] = loop._logged_outputs
    connector = trainer._logger_connector
    for index, means in enumerate(per_loader):
        tensors = {name: torch.tensor(value, dtype=torch.float64) for name, value in means.items()}
        while len(outputs) <= index:  # a loader that ran no batch has no dict yet
            outputs.append({})
        outputs[index].update(tensors)
        trainer.callback_metrics.update(tensors)
        connector._logged_metrics.update(tensors)


_UNUSED_VALIDATION_STEP = r"You defined a `validation_step` but have no `val_dataloader`"


def quiet_unused_validation_step() -> Any:
    """Silence Lightning's "validation_step but no val_dataloader" warning until ``unquiet``;
    returns the filter entry added (Lightning issues it from its loop checks, between attaching
    the trainer and ``setup``)."""
    warnings.filterwarnings("ignore", message=_UNUSED_VALIDATION_STEP)
    return warnings.filters[0]


def unquiet(entry: Any) -> None:
    filters: list[Any] = warnings.filters  # type: ignore[assignment]  # a list at run time
    if entry is not None and entry in filters:
        filters.remove(entry)
        mutated = getattr(warnings, "_filters_mutated", None)  # what filterwarnings calls
        if mutated is not None:
            mutated()


def attached_trainer(module: Any) -> pl.Trainer | None:
    """The module's trainer, or ``None`` outside one (``module.trainer`` raises then)."""
    return getattr(module, "_trainer", None)


#: An optimizer -> its parts as ``(series name, optimizer-like)`` pairs, or None if it is whole.
Parts = Callable[[Any], "list[tuple[str, Any]] | None"]


def name_lr_series_by_parts(trainer: pl.Trainer, parts: Parts) -> None:
    """Make every ``LearningRateMonitor`` of ``trainer`` log an optimizer made of parts (per-key
    routes) as one series per part, named by ``parts``: ``lr-seg``, not ``lr-RoutedOptimizer/pg1``.

    The monitor names an optimizer without a scheduler after its class and its groups
    (``_find_names_from_optimizers``), and no public hook lets an optimizer name its series, so
    that private method is replaced on each monitor instance (by a picklable object: spawned
    processes pickle the trainer's callbacks). A part already named through its own scheduler
    (whose ``optimizer`` is that part) keeps that name: the monitor lists it among
    ``seen_optimizers``. Parts read their own groups and ``defaults`` (so ``log_momentum`` finds
    ``betas`` for Adam and ``momentum`` for SGD).
    """
    from lightning.pytorch.callbacks import LearningRateMonitor

    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, LearningRateMonitor) and not isinstance(
            callback.__dict__.get("_find_names_from_optimizers"), _NamesByParts
        ):
            callback._find_names_from_optimizers = _NamesByParts(callback, parts)  # type: ignore[method-assign]


class _NamesByParts:
    """``LearningRateMonitor._find_names_from_optimizers`` for optimizers made of parts."""

    def __init__(self, callback: Any, parts: Parts) -> None:
        self.callback, self.parts = callback, parts

    def __call__(
        self, optimizers: list[Any], seen_optimizers: list[Any], seen_optimizer_types: Any
    ) -> tuple[list[list[str]], list[Any]]:
        whole, split = [], []
        for optimizer in optimizers:
            found = self.parts(optimizer)
            if found is None:
                whole.append(optimizer)
            elif not any(optimizer is seen for seen in seen_optimizers):
                split.append(found)  # else a scheduler of the whole (SWA's SWALR) named it
        original = type(self.callback)._find_names_from_optimizers
        names, without_scheduler = original(
            self.callback, whole, seen_optimizers, seen_optimizer_types
        )
        for found in split:
            for name, part in found:
                if any(part is seen for seen in seen_optimizers):
                    continue  # named through its scheduler
                seen_optimizers.append(part)
                names.append(_series_names(name, part.param_groups))
                without_scheduler.append(part)
        return names, without_scheduler


def _series_names(name: str, groups: Sequence[Mapping[str, Any]]) -> list[str]:
    """Lightning's suffix rule (``LearningRateMonitor._add_suffix``): one group keeps the name
    (plus ``/<group name>`` if named), several get ``/<group name>`` or ``/pg<i>``."""
    if len(groups) == 1:
        group_name = groups[0].get("name")
        return [f"{name}/{group_name}" if group_name else name]
    return [f"{name}/{g.get('name', f'pg{i}')}" for i, g in enumerate(groups, start=1)]


def fit_has_val_loader(trainer: pl.Trainer) -> bool:
    """Whether the running fit has a validation loader: passed to ``fit``, a datamodule's, or
    the module's own ``val_dataloader``.

    Read from the validation loop's data source (what its ``setup_data`` requests): Lightning
    has no public way to ask before the loaders are loaded, and ``Tuner.scale_batch_size``
    requests them whenever ``validation_step`` is defined, loader or not.
    """
    return bool(trainer.fit_loop.epoch_loop.val_loop._data_source.is_defined())
