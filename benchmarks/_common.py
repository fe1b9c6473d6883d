"""Shared pieces of the benchmarks: timing a fit, and a tiny model that returns K loss terms."""

from __future__ import annotations

import statistics
import time
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

warnings.filterwarnings("ignore")


class StepTimer(Callback):
    """Wall time per batch, excluding the warm-up batches.

    Counts batches itself: under manual optimization ``global_step`` counts every optimizer's
    step, not batches.
    """

    def __init__(self, warmup: int = 20) -> None:
        self.warmup = warmup
        self.start = self.end = 0.0
        self.batches = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.batches == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1
        if self.batches > self.warmup:
            self.end = time.perf_counter()

    @property
    def per_step(self) -> float:
        return (self.end - self.start) / (self.batches - self.warmup)


class TermsModel(nn.Module):
    """A tiny model whose forward returns ``terms`` scalar losses."""

    def __init__(self, terms: int) -> None:
        super().__init__()
        self.net = nn.Linear(16, terms)
        self.names = [f"t{i}" for i in range(terms)]

    def forward(self, batch) -> dict[str, torch.Tensor]:
        (x,) = batch
        return dict(zip(self.names, self.net(x).pow(2).mean(0).unbind()))


def data(steps: int, batch_size: int = 32) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(steps * batch_size, 16)), batch_size=batch_size)


def time_fit(module: L.LightningModule, steps: int, logger: Any, **trainer_kwargs: Any) -> float:
    """Seconds per batch over ``steps`` batches (``max_steps`` scaled for manual optimization)."""
    timer = StepTimer()
    optimizers_per_batch = 1
    if not module.automatic_optimization:
        optimizers_per_batch = len(module.configure_optimizers())
    trainer = L.Trainer(
        max_steps=steps * optimizers_per_batch,
        logger=logger,
        callbacks=[timer],
        accelerator=trainer_kwargs.pop("accelerator", "cpu"),
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.fit(module, data(steps))
    return timer.per_step


def best_of(times: list[float]) -> float:
    """The least disturbed repeat: noise on a shared machine only ever adds time."""
    return min(times)


def median(times: list[float]) -> float:
    return statistics.median(times)


def compare_variants(
    variants: dict[str, Any], steps: int, repeats: int, log_every_n_steps: int = 50
) -> None:
    """Time ``LossDictModule`` variants (name -> zero-argument module factory) and print each
    one's best step time and its ratio to the first variant.

    Repeats are interleaved, so drift on a shared machine hits every variant alike.
    """
    import tempfile

    from lightning.pytorch.loggers import CSVLogger

    times: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as log_dir:
        for _ in range(repeats):
            for name, make in variants.items():
                logger = CSVLogger(log_dir)
                times[name].append(
                    time_fit(make(), steps, logger, log_every_n_steps=log_every_n_steps)
                )
    baseline = next(iter(variants))
    base = best_of(times[baseline])
    print(f"{'variant':<18}{'ms/step':>10}{f'ratio to {baseline}':>22}")
    for name in variants:
        best = best_of(times[name])
        print(f"{name:<18}{best * 1e3:>10.3f}{best / base:>22.2f}")
