"""A classifier whose regulariser is a loss term of its own, logged beside the data term.

    python examples/regularized_classifier.py

Returning the L2 penalty as ``l2`` (instead of folding it into the optimizer's weight decay) puts
its curve next to the cross-entropy's, and its weight is one entry in ``loss_weights``.
"""

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossDictModule


class Classifier(LossDictModule):
    def __init__(self, l2: float = 1e-3) -> None:
        super().__init__(
            loss_weights={"l2": l2}, optimizer=lambda params: torch.optim.SGD(params, lr=0.1)
        )
        self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, batch):
        x, y = batch
        logits = self.net(x)
        return {
            "ce": F.cross_entropy(logits, y),
            "l2": sum(p.pow(2).sum() for p in self.net.parameters() if p.dim() > 1),
            "acc": float((logits.argmax(-1) == y).float().mean()),  # a Python number: a metric
        }


def main() -> None:
    L.seed_everything(0, verbose=False)
    x = torch.randn(1500, 10)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=50, shuffle=True)
    trainer = L.Trainer(
        max_epochs=5,
        logger=CSVLogger("runs", name="regularized_classifier", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(Classifier(), loader)
    print(f"per-loss logs: {Path(trainer.log_dir) / 'metrics.csv'}")
    final = sorted(trainer.callback_metrics.items())
    print("final values: " + ", ".join(f"{name}={float(value):.4f}" for name, value in final))


if __name__ == "__main__":
    main()
