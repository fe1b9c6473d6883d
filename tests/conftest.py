"""Shared test helpers: a logger that keeps every write in memory, tiny models and data."""

from __future__ import annotations

import os
import warnings
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossDictModule

# One torch thread, here and in every subprocess a test starts: CI's 2-core machine runs the
# suite, and torch's default of one thread per core makes the threads fight for busy cores.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
warnings.filterwarnings("ignore", message=".*litlogger.*|.*litmodels.*")


class MemoryLogger(Logger):
    """Keeps every ``log_metrics`` call as ``(step, metrics)``, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def series(self, name: str) -> list[tuple[int, float]]:
        """Every ``(step, value)`` written for ``name``."""
        return [(step, m[name]) for step, m in self.rows if name in m]


def make_trainer(logger: Logger | None = None, **kwargs: Any) -> L.Trainer:
    options: dict[str, Any] = dict(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=logger if logger is not None else False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return L.Trainer(**options)


def multitask_data(n: int = 64, batch_size: int = 8, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return DataLoader(
        TensorDataset(x, torch.randint(0, 3, (n,), generator=g), torch.randn(n, generator=g)),
        batch_size=batch_size,
    )


class MultiTask(LossDictModule):
    """Two heads on a trunk; records the detached values ``forward`` returned, step by step."""

    def __init__(self, lr: float = 0.1, **kwargs: Any) -> None:
        super().__init__(optimizer=lambda p: torch.optim.SGD(p, lr=lr), **kwargs)
        torch.manual_seed(0)
        self.trunk, self.seg, self.depth = nn.Linear(6, 8), nn.Linear(8, 3), nn.Linear(8, 1)
        self.records: list[dict[str, float]] = []

    def losses(self, batch: Any) -> dict[str, torch.Tensor]:
        x, y_seg, y_depth = batch
        h = self.trunk(x).relu()
        return {
            "seg": F.cross_entropy(self.seg(h), y_seg),
            "depth": F.mse_loss(self.depth(h).squeeze(-1), y_depth),
        }

    def forward(self, batch: Any) -> Any:
        out = self.losses(batch)
        if self.training:
            self.records.append({k: float(v.detach()) for k, v in out.items()})
        return out


def run_hung_safe(args: list[str], timeout: float, what: str) -> str:
    """Run a multi-process job (a script in a subprocess) and return its output; a job that
    hangs is killed with every rank it started and fails the test instead of stalling CI."""
    import signal
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    process = subprocess.Popen(
        [sys.executable, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a timeout kills every rank
    )
    try:
        log, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        log, _ = process.communicate()
        pytest.fail(f"{what} hung for {timeout}s:\n{log[-3000:]}")
    return log


@pytest.fixture
def memory_logger() -> MemoryLogger:
    return MemoryLogger()
