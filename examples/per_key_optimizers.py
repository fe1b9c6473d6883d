"""Each loss with its own optimizer: task1 with Adam, task2 with SGD, the shared trunk on the total.

    python examples/per_key_optimizers.py

``configure_optimizers`` returns a mapping from a *route* (a loss term, a tuple of terms, or
``"loss"`` for the weighted total) to an optimizer or a Lightning optimizer dict. Every parameter's
optimizer receives exactly the gradient of its route's weighted loss. Lightning still sees one
optimizer, so ``gradient_clip_val`` (per route), ``accumulate_grad_batches``, ``precision`` and
``trainer.global_step`` (one per batch) keep their meaning — no manual optimization.
"""

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossDictModule


class TwoTasks(LossDictModule):
    def __init__(self) -> None:
        super().__init__(loss_weights={"task2": 0.5})
        self.trunk = nn.Sequential(nn.Linear(10, 64), nn.ReLU())
        self.head1, self.head2 = nn.Linear(64, 3), nn.Linear(64, 1)

    def forward(self, batch):
        x, y1, y2 = batch
        h = self.trunk(x)
        return {
            "task1": F.cross_entropy(self.head1(h), y1),
            "task2": F.mse_loss(self.head2(h).squeeze(-1), y2),
        }

    def configure_optimizers(self):
        sgd = torch.optim.SGD(self.head2.parameters(), lr=0.05, momentum=0.9)
        return {
            "task1": torch.optim.Adam(self.head1.parameters(), lr=1e-2),
            "task2": {
                "optimizer": sgd,
                "lr_scheduler": torch.optim.lr_scheduler.StepLR(sgd, step_size=2),
            },
            "loss": torch.optim.AdamW(self.trunk.parameters(), lr=3e-3),  # the weighted total
        }


def main() -> None:
    L.seed_everything(0, verbose=False)
    x = torch.randn(2048, 10)
    y1 = (x[:, :3] @ torch.randn(3, 3)).argmax(-1)
    y2 = x[:, 3:6].sum(-1)
    loader = DataLoader(TensorDataset(x, y1, y2), batch_size=64, shuffle=True)
    trainer = L.Trainer(
        max_epochs=5,
        logger=CSVLogger("runs", name="per_key_optimizers", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        gradient_clip_val=1.0,
        log_every_n_steps=8,
    )
    module = TwoTasks()
    trainer.fit(module, loader)
    print(f"global_step={trainer.global_step} (one per batch), optimizer: {trainer.optimizers[0]}")
    print(f"per-loss logs: {Path(trainer.log_dir) / 'metrics.csv'}")
    final = sorted(trainer.callback_metrics.items())
    print("final values: " + ", ".join(f"{name}={float(value):.4f}" for name, value in final))


if __name__ == "__main__":
    main()
