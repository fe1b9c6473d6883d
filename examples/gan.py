"""A GAN on a 2-D mixture of eight Gaussians, in Lightning's automatic optimization.

    python examples/gan.py          # the classic loop: D steps, then G against the updated D
    python examples/gan.py --wgan   # WGAN-GP: the critic steps 5 times per generator step

A few seconds on a CPU (600 batches). Writes its CSV logs and ``samples.png`` (real points and
generated ones, from the generator's exponential moving average) under ``runs/gan/``. The WGAN's
generator steps once per six batches, so in these few seconds it learns the ring less well than
the classic GAN.

The generator and the critic each have their own optimizer, given as a route map from
``configure_optimizers``. Since Lightning 2.0 that needs manual optimization, which gives up
``gradient_clip_val``, ``accumulate_grad_batches``, scheduler intervals and a ``global_step`` that
counts batches. Here everything stays automatic:

* ``"frequency"``: routes take turns, batch by batch, in the order given (WGAN's ``n_critic``);
  ``self.active_routes`` tells ``forward`` whose turn it is, so it computes only that loss;
* ``route_mode="sequential"``: within each batch the routes step one after another and
  ``forward`` runs again before each, so the generator sees the updated discriminator;
* the critic's route clips its own gradients (``"gradient_clip_val"`` in its dict);
* ``EMAWeightAveraging``, Lightning's own callback, keeps the moving average that is sampled.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossDictModule


def eight_gaussians(n: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    angles = torch.randint(0, 8, (n,), generator=g) * (2 * math.pi / 8)
    centres = torch.stack([angles.cos(), angles.sin()], dim=1) * 2.0
    return centres + 0.05 * torch.randn(n, 2, generator=g)


def mlp(inputs: int, outputs: int, width: int = 64) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, width), nn.LeakyReLU(0.2), nn.Linear(width, width), nn.LeakyReLU(0.2),
        nn.Linear(width, outputs),
    )  # fmt: skip


class GAN(LossDictModule):
    def __init__(self, sequential: bool = False, latent: int = 4) -> None:
        super().__init__(route_mode="sequential" if sequential else "joint")
        self.sequential, self.latent = sequential, latent
        self.generator, self.critic = mlp(latent, 2), mlp(2, 1)

    def forward(self, batch):
        (real,) = batch
        z = torch.randn(len(real), self.latent, device=real.device)
        fake = self.generator(z)
        if self.sequential:  # the non-saturating GAN: both losses, each logged from its pass
            real_logits, fake_logits = self.critic(real), self.critic(fake.detach())
            ones, zeros = torch.ones_like(real_logits), torch.zeros_like(fake_logits)
            return {
                "discriminator": F.binary_cross_entropy_with_logits(real_logits, ones)
                + F.binary_cross_entropy_with_logits(fake_logits, zeros),
                "generator": F.binary_cross_entropy_with_logits(self.critic(fake), ones),
            }
        if "generator" in self.active_routes:
            return {"generator": -self.critic(fake).mean()}
        losses = {"critic": self.critic(fake.detach()).mean() - self.critic(real).mean()}
        if torch.is_grad_enabled():  # the gradient penalty differentiates the critic
            eps = torch.rand(len(real), 1, device=real.device)
            mixed = (eps * real + (1 - eps) * fake.detach()).requires_grad_(True)
            (slope,) = torch.autograd.grad(self.critic(mixed).sum(), mixed, create_graph=True)
            losses["gradient_penalty"] = 10.0 * ((slope.norm(dim=1) - 1) ** 2).mean()
        return losses

    def configure_optimizers(self):
        generator = torch.optim.Adam(self.generator.parameters(), lr=2e-3, betas=(0.5, 0.9))
        critic = torch.optim.Adam(self.critic.parameters(), lr=2e-3, betas=(0.5, 0.9))
        if self.sequential:
            return {"discriminator": critic, "generator": generator}
        return {
            ("critic", "gradient_penalty"): {
                "optimizer": critic,
                "frequency": 5,  # n_critic
                "gradient_clip_val": 10.0,
            },
            "generator": {"optimizer": generator, "frequency": 1},
        }


def draw(real: Tensor, fake: Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4, 4))
    axes.scatter(*real.T, s=2, alpha=0.3, label="real")
    axes.scatter(*fake.T, s=2, alpha=0.3, label="generated (EMA)")
    axes.set_xlim(-3, 3), axes.set_ylim(-3, 3), axes.legend(loc="upper right")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wgan", action="store_true")
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    data = DataLoader(TensorDataset(eight_gaussians(12_800)), batch_size=128, shuffle=True)
    module = GAN(sequential=not args.wgan)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        log_every_n_steps=20,
        logger=CSVLogger("runs", name="gan", version=""),
        callbacks=[EMAWeightAveraging(decay=0.99)],  # the module holds the averages at the end
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, data)
    with torch.no_grad():
        fake = module.generator(torch.randn(2000, module.latent))
    draw(eight_gaussians(2000, seed=1), fake, Path("runs/gan/samples.png"))
    distance = torch.cdist(fake, eight_gaussians(2000, seed=1)).min(dim=1).values.mean()
    print(
        f"global_step={trainer.global_step} (batches), mean distance of a generated point to "
        f"the nearest real one: {float(distance):.3f}; samples in runs/gan/samples.png"
    )
    print(f"per-loss logs: {Path(trainer.log_dir) / 'metrics.csv'}")
    final = sorted(trainer.callback_metrics.items())
    print("final values: " + ", ".join(f"{name}={float(value):.4f}" for name, value in final))


if __name__ == "__main__":
    main()
