"""What the logs cannot tell by themselves: which names are losses and which are metrics.

Two readers need it. W&B keeps each metric's *last* value in a run's summary; for a loss the
minimum is worth comparing too, so every loss name (terms and totals, step and epoch) gets
``define_metric(name, summary="last,min")`` once, before its first value is written. And a file
logger's run (CSV, TensorBoard) gets ``lightning_losses_kinds.json`` beside it, from which
``python -m lightning_losses plot`` draws metrics apart from losses.

Summaries follow the final classification: values of the sanity check are never written, so a
name is defined only when it is first written, by which time training has decided what it is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger

from lightning_losses import _lightning
from lightning_losses.logging.names import KINDS_FILE
from lightning_losses.logging.windows import EPOCH_SUFFIX

#: The x-axis Lightning's WandbLogger declares for every metric (its ``define_metric("*")``).
WANDB_STEP = "trainer/global_step"
LOSS_KINDS = ("term", "total")


class Summaries:
    """Gives each loss name its ``last,min`` summary in W&B, once, before its first write."""

    def __init__(self) -> None:
        self._defined: set[str] = set()

    def reset(self) -> None:
        self._defined.clear()

    def define(
        self, trainer: pl.Trainer, names: Iterable[str], kind_of: Callable[[str], str | None]
    ) -> None:
        if self._defined.issuperset(names):
            return
        new = [
            name
            for name in names
            if name not in self._defined
            and (kind_of(name) or kind_of(name.removesuffix(EPOCH_SUFFIX))) in LOSS_KINDS
        ]
        self._defined.update(names)
        define_min_summaries(trainer, new)


def define_min_summaries(trainer: pl.Trainer, names: Iterable[str]) -> None:
    """``define_metric(name, summary="last,min")`` on every attached W&B run (rank zero only).
    ``wandb`` is never imported here: a ``WandbLogger`` among the loggers holds the run."""
    names = list(names)
    if not names or not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if not isinstance(logger, WandbLogger):
            continue
        define = getattr(logger.experiment, "define_metric", None)  # None for a disabled run
        if define is None:
            continue
        prefix = _lightning.wandb_prefix(logger)
        for name in names:
            # step_metric again: an explicit definition replaces the "*" glob's for this name
            define(f"{prefix}{name}", step_metric=WANDB_STEP, step_sync=True, summary="last,min")


def write_kinds_file(trainer: pl.Trainer, kind_of: Mapping[str, str]) -> None:
    """Beside each file logger's run: ``{name: "term" | "total" | "metric"}`` of the training
    names (rank zero only)."""
    if not trainer.is_global_zero:
        return
    kinds = {
        name.split("/", 1)[1]: kind
        for name, kind in kind_of.items()
        if name.startswith("train/") and kind in ("term", "total", "metric")
    }
    if not kinds:
        return
    for logger in trainer.loggers:
        log_dir = getattr(logger, "log_dir", None)
        if isinstance(log_dir, str) and os.path.isdir(log_dir):
            with open(os.path.join(log_dir, KINDS_FILE), "w") as handle:
                json.dump(kinds, handle, indent=1, sort_keys=True)
