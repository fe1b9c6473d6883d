"""Blocks that regularise their own activations, with ``add_loss`` where the activation is.

    python examples/activation_regularizer.py

Each residual block adds an L1 penalty on its activations (a sparsity regulariser) and reports the
fraction of dead units as a metric, from inside the block: ``forward`` returns the task loss only,
and nothing is threaded through the blocks' return values. ``loss_weights`` weighs every block's
penalty with one glob pattern, and each block gets its own curve (``train/act_l1/<i>``).
"""

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_losses as ll
from lightning_losses import LossDictModule


class Block(nn.Module):
    def __init__(self, index: int, width: int) -> None:
        super().__init__()
        self.index = index
        self.layer = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer(x).relu()
        ll.add_loss(f"act_l1/{self.index}", h.abs().mean())  # the regulariser, next to h
        ll.add_metric(f"dead_frac/{self.index}", (h <= 0).float().mean())
        return x + h


class SparseRegressor(LossDictModule):
    def __init__(self, blocks: int = 3, width: int = 32) -> None:
        super().__init__(
            loss_weights={"act_l1/*": 1e-2},
            optimizer=lambda params: torch.optim.Adam(params, lr=3e-3),
        )
        self.stem = nn.Linear(8, width)
        self.blocks = nn.Sequential(*(Block(i, width) for i in range(blocks)))
        self.head = nn.Linear(width, 1)

    def forward(self, batch):
        x, y = batch
        prediction = self.head(self.blocks(self.stem(x))).squeeze(-1)
        return {"mse": F.mse_loss(prediction, y)}


def main() -> None:
    L.seed_everything(0, verbose=False)
    x = torch.randn(2000, 8)
    y = x[:, 0] * 2 - x[:, 1] + 0.1 * torch.randn(2000)
    train = DataLoader(TensorDataset(x[:1600], y[:1600]), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(x[1600:], y[1600:]), batch_size=200)
    trainer = L.Trainer(
        max_epochs=4,
        logger=CSVLogger("runs", name="activation_regularizer", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(SparseRegressor(), train, val)
    print(f"per-loss logs: {Path(trainer.log_dir) / 'metrics.csv'}")
    final = sorted(trainer.callback_metrics.items())
    print("final values: " + ", ".join(f"{name}={float(value):.4f}" for name, value in final))


if __name__ == "__main__":
    main()
