"""The epoch's means before any callback reads them; a failed call's fit session dropped.

Lightning calls an ordinary callback's ``on_train_epoch_end`` (and ``on_validation_epoch_end``,
``on_test_epoch_end``) before the module's hook of the same name, and a value logged with
``self.log(on_epoch=True)`` is already this epoch's when the callback reads it. The library's
epoch means are computed by :class:`EpochEnds`, a callback put first in the trainer's list, so
every callback and the module's own hook see them; ``ModelCheckpoint`` and ``EarlyStopping``
run after the module, as always.

Lightning asks every callback about every hook of every step, through a profiler context: seven
Python calls or so each time, more than the library's whole per-step budget. It skips an
attribute that is not callable, so every per-step hook of this callback is ``None``: on a step,
it costs Lightning one ``getattr`` per hook and no Python call.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

#: Callback hooks Lightning runs at every batch (no work of ours there: see the docstring).
_PER_STEP = (
    "on_train_batch_start",
    "on_train_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
)


class EpochEnds(Callback):
    """Computes a ``LossDictModule``'s epoch means first (see the module docstring)."""

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        fit = _core_of(module, "fit")
        if fit is not None:
            fit.end_epoch()

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        evaluation = _core_of(module, "evaluation")
        if evaluation is not None:
            evaluation.end("val")

    def on_test_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        evaluation = _core_of(module, "evaluation")
        if evaluation is not None:
            evaluation.end("test")

    def on_exception(
        self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException
    ) -> None:
        # A call that fails never reaches the module's teardown (and a module hears of no
        # exception): the fit session is dropped here, so the module keeps no run.
        core = module.__dict__.get("_core") if module is not None else None
        if core is not None:
            core.teardown("")


for _hook in _PER_STEP:
    setattr(EpochEnds, _hook, None)


def _core_of(module: Any, part: str) -> Any:
    """``module._core.<part>`` for a ``LossDictModule`` (a trainer may run another module)."""
    core = module.__dict__.get("_core") if module is not None else None
    return None if core is None else getattr(core, part)


def attach(trainer: pl.Trainer) -> None:
    """Put one :class:`EpochEnds` first among ``trainer``'s callbacks (once per trainer)."""
    callbacks = trainer.callbacks  # type: ignore[attr-defined]  # a public list attribute
    if not any(type(callback) is EpochEnds for callback in callbacks):
        callbacks.insert(0, EpochEnds())
