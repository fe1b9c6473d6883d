"""What loggers are told about the logged names beyond their values: W&B's summaries.

W&B groups charts into sections by the prefix before the first ``/`` (``train/``, ``val/``,
``weight/``, ``grad_norm/``), which our names already give. By default a run's summary holds each
metric's *last* value, which the runs table, scripts (``run.summary[name]``) and sweeps read; for
a loss the minimum is worth comparing too, so every loss name (terms and totals, step and epoch)
gets ``define_metric(name, summary="last,min")`` once, before its first value is written: the last
value stays where readers expect it, and the best is kept beside it. ``wandb`` is never imported
here: a ``WandbLogger`` among the trainer's loggers already holds the run.
"""

from __future__ import annotations

from collections.abc import Iterable

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger

#: The x-axis Lightning's WandbLogger declares for every metric (its ``define_metric("*")``).
WANDB_STEP = "trainer/global_step"


def define_min_summaries(trainer: pl.Trainer, names: Iterable[str]) -> None:
    """``define_metric(name, summary="last,min")`` on every attached W&B run (rank zero only)."""
    names = list(names)
    if not names or not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if not isinstance(logger, WandbLogger):
            continue
        define = getattr(logger.experiment, "define_metric", None)  # None for a disabled run
        if define is None:
            continue
        prefix = f"{logger._prefix}{logger.LOGGER_JOIN_CHAR}" if logger._prefix else ""
        for name in names:
            # step_metric again: an explicit definition replaces the "*" glob's for this name
            define(f"{prefix}{name}", step_metric=WANDB_STEP, step_sync=True, summary="last,min")
