"""Wrap an existing encoder-decoder whose forward returns its output, its loss and its latent.

    python examples/autoencoder.py

The model is not a LightningModule and knows nothing of this library: ``LossDictModule(model,
loss_keys=[...])`` wraps it. Only ``reconstruction_loss`` is a loss term; ``output`` and ``latent``
are passed through untouched (they reach ``on_train_batch_end`` callbacks) and are not logged.
"""

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossDictModule


class AutoEncoder(nn.Module):
    def __init__(self, dim: int = 32, latent: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, 16), nn.ReLU(), nn.Linear(16, latent))
        self.decoder = nn.Sequential(nn.Linear(latent, 16), nn.ReLU(), nn.Linear(16, dim))

    def forward(self, batch):
        (x,) = batch
        latent = self.encoder(x)
        output = self.decoder(latent)
        return {"output": output, "reconstruction_loss": F.mse_loss(output, x), "latent": latent}


def main() -> None:
    L.seed_everything(0, verbose=False)
    # data on a 4-dimensional subspace: a 4-d latent can reconstruct it
    x = torch.randn(1024, 4) @ torch.randn(4, 32)
    loader = DataLoader(TensorDataset(x), batch_size=64, shuffle=True)
    module = LossDictModule(
        AutoEncoder(),
        loss_keys=["reconstruction_loss"],
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
    )
    trainer = L.Trainer(
        max_epochs=10,
        logger=CSVLogger("runs", name="autoencoder", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, loader)
    print(f"per-loss logs: {Path(trainer.log_dir) / 'metrics.csv'}")
    final = sorted(trainer.callback_metrics.items())
    print("final values: " + ", ".join(f"{name}={float(value):.4f}" for name, value in final))


if __name__ == "__main__":
    main()
