"""Main example: a multi-task model that returns its losses, trained on synthetic data.

    python examples/multitask.py            # a few seconds on a CPU

Two tasks share a trunk: 4-class segmentation-like classification and depth-like regression. The
model's ``forward`` returns ``{"seg": ..., "depth": ..., "acc": ...}``; ``LossDictModule`` sums
the losses with their weights, logs every term (train and val) and ``acc`` as a metric. The run
writes CSV logs under ``runs/multitask`` and draws one panel per loss into
``runs/multitask/curves.png`` (with matplotlib; without it, it says what to install).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossDictModule


def synthetic_tasks(n: int, seed: int) -> TensorDataset:
    """Inputs with a class label and a continuous target, both functions of the input plus noise."""
    task = torch.randn(4, 4, generator=torch.Generator().manual_seed(1234))  # same task everywhere
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    seg = (x[:, :4] @ task).argmax(-1)
    depth = x[:, 4:8].sum(-1) + 0.1 * torch.randn(n, generator=g)
    return TensorDataset(x, seg, depth)


class SyntheticTasks(L.LightningDataModule):
    """Train and validation splits of :func:`synthetic_tasks`."""

    def __init__(self, batch_size: int = 64, train_size: int = 2048) -> None:
        super().__init__()
        self.batch_size, self.train_size = batch_size, train_size

    def train_dataloader(self) -> DataLoader:
        data = synthetic_tasks(self.train_size, seed=0)
        return DataLoader(data, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(synthetic_tasks(512, seed=1), batch_size=128)


class MultiTask(LossDictModule):
    """Every ``LossDictModule`` option (``loss_weights``, ``optimizer``, ``weighting``, ...) passes
    through ``**options``, so LightningCLI can set them from YAML (examples/configs/)."""

    def __init__(
        self,
        hidden: int = 64,
        loss_keys: list[str] | None = None,
        loss_weights: dict[str, float] | None = None,
        **options: Any,
    ) -> None:
        if options.get("optimizer") is None:
            options["optimizer"] = functools.partial(torch.optim.Adam, lr=3e-3)
        # `acc` is a 0-dim float tensor too: naming the loss terms keeps it a metric.
        super().__init__(
            loss_keys=loss_keys or ["seg", "depth"],
            loss_weights={"depth": 0.5} if loss_weights is None else loss_weights,
            **options,
        )
        self.trunk = nn.Sequential(
            nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.seg_head, self.depth_head = nn.Linear(hidden, 4), nn.Linear(hidden, 1)

    def forward(self, batch):
        x, seg, depth = batch
        h = self.trunk(x)
        logits = self.seg_head(h)
        return {
            "seg": F.cross_entropy(logits, seg),
            "depth": F.mse_loss(self.depth_head(h).squeeze(-1), depth),
            "acc": (logits.argmax(-1) == seg).float().mean(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/multitask", help="where logs and curves go")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()

    L.seed_everything(0, verbose=False)
    logger = CSVLogger(args.out, name="", version="")
    trainer = L.Trainer(
        max_epochs=args.epochs,
        logger=logger,
        log_every_n_steps=8,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    # Gradient diagnostics every 8 steps: are the two tasks pulling the trunk apart?
    trainer.fit(MultiTask(grad_diagnostics_every_n_steps=8), datamodule=SyntheticTasks())
    final = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if "val/" in k}
    print(f"final validation: {final}")
    print(f"per-loss logs: {Path(logger.log_dir) / 'metrics.csv'}")
    try:
        from lightning_losses.plot import plot_run
    except ImportError:  # matplotlib is the optional `plot` extra
        print("per-loss curves: not drawn, matplotlib is missing (pip install matplotlib)")
        return
    print(f"per-loss curves: {plot_run(logger.log_dir, Path(args.out) / 'curves.png')}")


if __name__ == "__main__":
    main()
