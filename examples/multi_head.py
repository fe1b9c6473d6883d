"""One trunk, three heads, three losses: each head's loss logged as its own curve.

    python examples/multi_head.py

A glob pattern weighs all auxiliary heads at once (``"aux_*": 0.3``); weights other than 1 are
logged as ``weight/<term>``. Nested returns are flattened: ``{"aux": {"a": ...}}`` logs as
``train/aux/a``.
"""

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossDictModule


class ThreeHeads(LossDictModule):
    def __init__(self) -> None:
        super().__init__(
            loss_weights={"aux/*": 0.3}, optimizer=lambda params: torch.optim.Adam(params, lr=1e-2)
        )
        self.trunk = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
        self.main, self.aux_a, self.aux_b = nn.Linear(32, 1), nn.Linear(32, 1), nn.Linear(32, 1)

    def forward(self, batch):
        x, y_main, y_a, y_b = batch
        h = self.trunk(x)
        return {
            "main": F.mse_loss(self.main(h).squeeze(-1), y_main),
            "aux": {
                "a": F.mse_loss(self.aux_a(h).squeeze(-1), y_a),
                "b": F.mse_loss(self.aux_b(h).squeeze(-1), y_b),
            },
        }


def main() -> None:
    L.seed_everything(0, verbose=False)
    x = torch.randn(1024, 8)
    targets = (x[:, 0] + x[:, 1], x[:, 2] * 2, x[:, 3] - x[:, 4])
    loader = DataLoader(TensorDataset(x, *targets), batch_size=64, shuffle=True)
    trainer = L.Trainer(
        max_epochs=6,
        logger=CSVLogger("runs", name="multi_head", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        log_every_n_steps=4,
    )
    trainer.fit(ThreeHeads(), loader)
    print(f"per-loss logs: {Path(trainer.log_dir) / 'metrics.csv'}")
    final = sorted(trainer.callback_metrics.items())
    print("final values: " + ", ".join(f"{name}={float(value):.4f}" for name, value in final))


if __name__ == "__main__":
    main()
