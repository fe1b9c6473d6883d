"""Step time of a GAN in automatic optimization (``route_mode="sequential"``) against the same GAN
written with Lightning's manual optimization, in one run.

    python benchmarks/gan.py [--steps 400] [--repeats 3]

Both run the classic loop on the same batches: the discriminator steps, then the generator steps
against the updated discriminator. (a) is what Lightning's GAN tutorial writes: manual
optimization, ``toggle_optimizer``, two ``manual_backward`` calls, ``self.log`` of both losses.
(b) is ``LossDictModule`` with a route map and ``route_mode="sequential"``: ``forward`` returns both
losses and runs once per route; each route's gradient comes from ``torch.autograd.grad`` and one
backward of a surrogate. Prints each variant's ms per batch, b/a, and whether the two end with the
same parameters (they should: same algorithm, same batches).
"""

from __future__ import annotations

import argparse
import tempfile

import lightning as L
import torch
import torch.nn.functional as F
from _common import best_of, time_fit
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossDictModule


def networks() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    width = 128
    generator = nn.Sequential(
        nn.Linear(8, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2)
    )
    critic = nn.Sequential(
        nn.Linear(2, width), nn.LeakyReLU(0.2), nn.Linear(width, width), nn.LeakyReLU(0.2),
        nn.Linear(width, 1),
    )  # fmt: skip
    return generator, critic


def losses(generator, critic, batch) -> dict[str, torch.Tensor]:
    real, z = batch
    fake = generator(z)
    real_logits, fake_logits = critic(real), critic(fake.detach())
    ones, zeros = torch.ones_like(real_logits), torch.zeros_like(fake_logits)
    return {
        "d": F.binary_cross_entropy_with_logits(real_logits, ones)
        + F.binary_cross_entropy_with_logits(fake_logits, zeros),
        "g": F.binary_cross_entropy_with_logits(critic(fake), ones),
    }


def adam(params):
    return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))


class ManualGAN(L.LightningModule):
    """Lightning's GAN tutorial, on this model."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator, self.critic = networks()

    def training_step(self, batch, batch_idx):
        opt_d, opt_g = self.optimizers()
        self.toggle_optimizer(opt_d)
        d = losses(self.generator, self.critic, batch)["d"]
        self.manual_backward(d)
        opt_d.step()
        opt_d.zero_grad()
        self.untoggle_optimizer(opt_d)
        self.toggle_optimizer(opt_g)
        g = losses(self.generator, self.critic, batch)["g"]
        self.manual_backward(g)
        opt_g.step()
        opt_g.zero_grad()
        self.untoggle_optimizer(opt_g)
        self.log_dict({"train/d": d, "train/g": g})

    def configure_optimizers(self):
        return [adam(self.critic.parameters()), adam(self.generator.parameters())]


class SequentialGAN(LossDictModule):
    def __init__(self) -> None:
        super().__init__(route_mode="sequential")
        self.generator, self.critic = networks()

    def forward(self, batch):
        return losses(self.generator, self.critic, batch)

    def configure_optimizers(self):
        return {"d": adam(self.critic.parameters()), "g": adam(self.generator.parameters())}


def data(steps: int, batch_size: int = 256) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    real = torch.randn(steps * batch_size, 2, generator=g) * 0.5 + 1.0
    return DataLoader(TensorDataset(real, torch.randn(steps * batch_size, 8, generator=g)), 256)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import _common

    _common.data = data  # both variants: (real, z) batches of 256
    variants = {"a: manual optimization": ManualGAN, "b: route_mode='sequential'": SequentialGAN}
    times: dict[str, list[float]] = {k: [] for k in variants}
    finals: dict[str, list[torch.Tensor]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, make in variants.items():
                module = make()
                times[name].append(
                    time_fit(module, args.steps, CSVLogger(tmp), log_every_n_steps=50)
                )
                finals[name] = [p.detach().clone() for p in module.parameters()]
    best = {k: best_of(v) for k, v in times.items()}
    for name, value in best.items():
        print(f"{name:>28}: {value * 1e3:.3f} ms/batch")
    a, b = best.values()
    same = all(torch.equal(x, y) for x, y in zip(*finals.values()))
    close = all(torch.allclose(x, y, atol=1e-6) for x, y in zip(*finals.values()))
    print(
        f"b/a {b / a:.2f}   same parameters after {args.steps} batches: {same} "
        f"(within 1e-6: {close})"
    )


if __name__ == "__main__":
    main()
