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

# ``load_from_checkpoint`` is a classmethod that Lightning refuses to run on an instance; its own
# decorator for that is private, and our override must keep the same behaviour.
from lightning.pytorch.utilities.model_helpers import _restricted_classmethod

restricted_classmethod = _restricted_classmethod


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


def last_batch_labels(trainer: pl.Trainer) -> tuple[int, int]:
    """The ``(step, epoch)`` Lightning's own ``self.log(on_step=True)`` gave the last training
    batch, asked once training has ended (``on_train_end``).

    By then the loops have moved on: ``_batches_that_stepped`` counts the last batch if it stepped
    (it did not when a stop came while accumulating), and the last epoch has been counted as
    completed, so ``current_epoch`` is one past it. Lightning itself undoes the first of these the
    same way (``_batches_that_stepped -= 1``) for its epoch-end row.
    """
    epoch_loop = trainer.fit_loop.epoch_loop
    stepped = epoch_loop._batches_that_stepped
    accumulating = trainer.accumulate_grad_batches > 1 and epoch_loop._should_accumulate()
    step = stepped if accumulating else stepped - 1
    return max(step, 0), max(trainer.current_epoch - 1, 0)


def batches_that_stepped(trainer: pl.Trainer) -> int:
    """The step label Lightning gives the batch being run, until it is counted: at its end, in a
    validation it triggers and in a checkpoint saved then (Lightning counts it afterwards)."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def as_tensors(values: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Python numbers as 0-dim float64 tensors (what monitors read from ``callback_metrics``):
    one tensor and its views, where a tensor per name costs a microsecond each."""
    if not values:
        return {}
    return dict(zip(values, torch.tensor(list(values.values()), dtype=torch.float64).unbind()))


def publish_step_metrics(
    trainer: pl.Trainer,
    metrics: Mapping[str, float],
    progress_bar: Collection[str] = (),
    to_callbacks: bool = True,
    labels: tuple[int, int] | None = None,
) -> None:
    """Write already-reduced step values to every logger, to callbacks and to the progress bar.

    Not ``self.log``: a value logged with ``on_step=True`` stays in Lightning's result collection
    and is written again at every later write of the epoch, even when the key was absent since;
    the contract forbids repeating a stale value. ``log_metrics`` is the function Lightning itself
    uses to write step metrics (same ``step``, same ``epoch`` column).
    """
    if not metrics:
        return
    tensors = as_tensors(metrics)
    connector = trainer._logger_connector
    if labels is None:
        connector.log_metrics(tensors)
    else:  # after the loops moved on: the last batch's own step and epoch (see last_batch_labels)
        step, epoch = labels
        connector.log_metrics({**tensors, "epoch": epoch}, step=step)  # type: ignore[dict-item]
        connector._logged_metrics.pop("epoch", None)
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


def stage_now(trainer: pl.Trainer | None) -> str:
    """The stage a ``total_loss`` call belongs to when it does not say: what the trainer runs
    (the sanity check is validation; predicting evaluates too), ``"train"`` without one."""
    if trainer is None or trainer.training:
        return "train"
    return "test" if trainer.testing else "val"


def current_dataloader_idx(trainer: pl.Trainer | None) -> int:
    """The index of the evaluation loader whose batch is being run, for a ``total_loss`` call
    from a user's own ``validation_step`` that does not pass it.

    Lightning keeps it on the result collection (``on_batch_start``), where ``self.log`` reads it
    to add the ``/dataloader_idx_<i>`` suffix; it is ``None`` with one loader.
    """
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
        tensors = as_tensors(means)
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


# ---------------------------------------------------------------- module and trainer internals


def trainer_or_none(module: Any) -> pl.Trainer | None:
    """The attached trainer, or ``None``: read every step, so without the public property's
    checks (which raise when none is attached and wrap Fabric in a shim)."""
    return module._trainer


def restores_after_setup(trainer: pl.Trainer) -> bool:
    """Whether the strategy restores the checkpoint after the fit starts (FSDP-like ones do)."""
    return bool(getattr(trainer.strategy, "restore_checkpoint_after_setup", False))


def grad_scaler(trainer: pl.Trainer) -> Any:
    """The precision plugin's GradScaler (``precision="16-mixed"``), or ``None``."""
    return getattr(trainer.precision_plugin, "scaler", None)


def wandb_prefix(logger: Any) -> str:
    """The prefix a ``WandbLogger(prefix=...)`` puts before every name it logs (kept private)."""
    prefix = getattr(logger, "_prefix", "")
    return f"{prefix}{logger.LOGGER_JOIN_CHAR}" if prefix else ""


def saved_hyperparameters(module: Any) -> bool:
    """Whether ``save_hyperparameters`` ran for ``module`` (Lightning keeps no public flag)."""
    return hasattr(module, "_hparams_initial")


def hparams_of(module: Any) -> Any:
    """The dict ``module.hparams`` shows, to be edited in place (the property returns it too,
    but typed as a mapping that may be a copy)."""
    return module._hparams


def set_initial_hparams(module: Any, stored: Any) -> None:
    """What ``hparams_initial`` and the checkpoint's ``hyper_parameters`` report: Lightning sets it
    inside ``save_hyperparameters`` from the raw arguments; ours are the plain-value encoding."""
    module._hparams_initial = stored


def hparams_name(module: Any) -> str | None:
    """How ``save_hyperparameters`` named the arguments it saved (``"kwargs"`` for keyword
    arguments, else the name of a dict or namespace argument), which rebuilding must follow."""
    return getattr(module, "_hparams_name", "kwargs")


class StepWrites:
    """Whether Lightning writes step metrics after the running batch, asked every training step.

    The same rule as :func:`writes_step_metrics`, read from objects looked up once per fit, so
    the common answer ("no") costs attribute reads only: ``(batches that stepped + 1) %
    log_every_n_steps``, a stop requested, ``fast_dev_run``; only then, or while accumulating
    gradients, the full rule.
    """

    __slots__ = ("_every", "_loop", "_trainer")

    def __init__(self, trainer: pl.Trainer) -> None:
        self._trainer = trainer
        self._loop = trainer.fit_loop.epoch_loop
        self._every = trainer.log_every_n_steps  # type: ignore[attr-defined]  # set in __init__

    def due(self) -> bool:
        trainer = self._trainer
        every = self._every
        if (
            every
            and (self._loop._batches_that_stepped + 1) % every
            and not trainer.should_stop
            and not trainer.fast_dev_run  # type: ignore[attr-defined]
        ):
            return False
        return writes_step_metrics(trainer)


def step_counter(trainer: pl.Trainer) -> Any:
    """An object whose ``completed`` is ``trainer.global_step`` under automatic optimization
    (the optimizer-step progress the property reads through three calls), or ``None``."""
    module = trainer.lightning_module
    if module is None or not module.automatic_optimization:
        return None
    return trainer.fit_loop.epoch_loop.automatic_optimization.optim_progress.optimizer.step.total


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
        whole: list[Any] = []
        split: list[list[tuple[str, Any]]] = []
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


def progress_bar_values(trainer: pl.Trainer) -> dict[str, Any]:
    """The dict Lightning's progress bars read their values from (``progress_bar_metrics``
    returns it, updated with what ``self.log(prog_bar=True)`` logged). Lightning replaces it
    when a run starts and around the sanity check, so it is looked up at the first training
    batch. Writing a value there is what ``self.log(prog_bar=True)`` ends up doing."""
    return trainer._logger_connector._progress_bar_metrics
