"""Main example: a multi-task model that returns its losses, trained on synthetic data.

    python examples/multitask.py            # ~10 s on a laptop CPU

Two tasks share a trunk: 4-class segmentation-like classification and depth-like regression. The
model's ``forward`` returns ``{"seg": ..., "depth": ..., "acc": ...}``; ``LossDictModule`` sums
the losses with their weights, logs every term (train and val) and ``acc`` as a metric. The run
writes CSV logs under ``runs/multitask`` and draws one panel per loss into
``runs/multitask/curves.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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


class MultiTask(LossDictModule):
    def __init__(self, depth_weight: float = 0.5, lr: float = 3e-3) -> None:
        # `acc` is a 0-dim float tensor too: naming the loss terms keeps it a metric.
        super().__init__(loss_keys=["seg", "depth"], loss_weights={"depth": depth_weight})
        self.lr = lr
        self.trunk = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.seg_head, self.depth_head = nn.Linear(64, 4), nn.Linear(64, 1)

    def forward(self, batch):
        x, seg, depth = batch
        h = self.trunk(x)
        logits = self.seg_head(h)
        return {
            "seg": F.cross_entropy(logits, seg),
            "depth": F.mse_loss(self.depth_head(h).squeeze(-1), depth),
            "acc": (logits.argmax(-1) == seg).float().mean(),
        }

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/multitask", help="where logs and curves go")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()

    L.seed_everything(0, verbose=False)
    train = DataLoader(synthetic_tasks(2048, seed=0), batch_size=64, shuffle=True)
    val = DataLoader(synthetic_tasks(512, seed=1), batch_size=128)
    logger = CSVLogger(args.out, name="", version="")
    trainer = L.Trainer(
        max_epochs=args.epochs,
        logger=logger,
        log_every_n_steps=8,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(MultiTask(), train, val)
    final = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if "val/" in k}
    print(f"final validation: {final}")
    print(f"per-loss logs: {Path(logger.log_dir) / 'metrics.csv'}")
    try:
        from lightning_losses.plot import plot_run
    except ImportError:  # matplotlib is the optional `plot` extra
        return
    print(f"per-loss curves: {plot_run(logger.log_dir, Path(args.out) / 'curves.png')}")


if __name__ == "__main__":
    main()
