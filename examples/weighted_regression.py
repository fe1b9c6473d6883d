"""Weighted MSE + 0.5 * L1 regression: two criteria on one prediction, each with its own curve.

    python examples/weighted_regression.py

``train/loss`` is the weighted total ``mse + 0.5 * l1``; ``train/mse`` and ``train/l1`` are the
unweighted terms, so changing a weight never changes what a term's curve means.
"""

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossDictModule


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, batch):
        x, y = batch
        pred = self.net(x).squeeze(-1)
        return {"mse": F.mse_loss(pred, y), "l1": F.l1_loss(pred, y)}


def main() -> None:
    L.seed_everything(0, verbose=False)
    x = torch.randn(2048, 5)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.1 * torch.randn(2048)
    y[::50] += 10.0  # outliers: where L1 earns its place next to MSE
    train = DataLoader(TensorDataset(x[:1536], y[:1536]), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(x[1536:], y[1536:]), batch_size=128)
    module = LossDictModule(
        Regressor(),
        loss_weights={"l1": 0.5},
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
    )
    trainer = L.Trainer(
        max_epochs=6,
        logger=CSVLogger("runs", name="weighted_regression", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, train, val)
    print(f"per-loss logs: {Path(trainer.log_dir) / 'metrics.csv'}")
    final = sorted(trainer.callback_metrics.items())
    print("final values: " + ", ".join(f"{name}={float(value):.4f}" for name, value in final))


if __name__ == "__main__":
    main()
