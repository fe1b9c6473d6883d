"""Optional tasks: each batch carries labels for some tasks only, so the key set changes.

    python examples/optional_tasks.py

A batch without depth labels simply returns no ``depth`` term. ``train/depth`` is then the mean
over the steps where depth was present; a logging window with no depth at all writes no depth
value (never a stale repeat). A batch with no labels at all returns ``None`` and is skipped.
"""

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_losses import LossDictModule


class PartiallyLabelled(Dataset):
    """Batches from three sources: class labels only, depth only, or both (and some with none)."""

    def __init__(self, batches: int = 120, batch_size: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.items = []
        for i in range(batches):
            x = torch.randn(batch_size, 8, generator=g)
            source = i % 4
            self.items.append(
                {
                    "x": x,
                    "cls": (x[:, 0] > 0).long() if source in (0, 2) else None,
                    "depth": x[:, 1] * 2 if source in (1, 2) else None,
                }
            )

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class OptionalHeads(LossDictModule):
    def __init__(self) -> None:
        super().__init__(optimizer=lambda params: torch.optim.Adam(params, lr=1e-2))
        self.trunk = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
        self.cls, self.depth = nn.Linear(32, 2), nn.Linear(32, 1)

    def forward(self, batch):
        h = self.trunk(batch["x"])
        losses = {}
        if batch["cls"] is not None:
            losses["cls"] = F.cross_entropy(self.cls(h), batch["cls"])
        if batch["depth"] is not None:
            losses["depth"] = F.mse_loss(self.depth(h).squeeze(-1), batch["depth"])
        return losses or None  # nothing labelled: nothing to learn


def main() -> None:
    L.seed_everything(0, verbose=False)
    loader = DataLoader(PartiallyLabelled(), batch_size=None, shuffle=True)
    trainer = L.Trainer(
        max_epochs=4,
        logger=CSVLogger("runs", name="optional_tasks", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        log_every_n_steps=5,
    )
    trainer.fit(OptionalHeads(), loader)
    print(f"per-loss logs: {Path(trainer.log_dir) / 'metrics.csv'}")
    final = sorted(trainer.callback_metrics.items())
    print("final values: " + ", ".join(f"{name}={float(value):.4f}" for name, value in final))


if __name__ == "__main__":
    main()
