"""Small GANs for the alternating-optimizer tests: the losses, written once, and the
plain-PyTorch training loops that are their references."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_losses import LossDictModule

CRITIC = ("critic", "gp")  # the critic's route: its loss and its gradient penalty


def networks(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    generator = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    critic = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    return generator, critic


def batches(n: int, size: int = 8, seed: int = 1) -> list[tuple[Tensor, Tensor, Tensor]]:
    """``(real, z, eps)``: everything random is in the batch, so both loops see the same."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        real = torch.randn(size, 2, generator=g) * 0.5 + torch.tensor([2.0, -1.0])
        out.append((real, torch.randn(size, 2, generator=g), torch.rand(size, 1, generator=g)))
    return out


# ---------------------------------------------------------------- the losses


def wgan_critic_losses(generator, critic, batch) -> dict[str, Tensor]:
    real, z, eps = batch
    fake = generator(z)  # not detached: the critic's route must keep its gradient to itself
    losses = {"critic": critic(fake).mean() - critic(real).mean()}
    if torch.is_grad_enabled():  # the penalty differentiates the critic: not in evaluation
        mixed = (eps * real + (1 - eps) * fake.detach()).requires_grad_(True)
        (slope,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
        losses["gp"] = 10.0 * ((slope.norm(dim=1) - 1) ** 2).mean()
    return losses


def wgan_generator_loss(generator, critic, batch) -> dict[str, Tensor]:
    _, z, _ = batch
    return {"generator": -critic(generator(z)).mean()}


def gan_losses(generator, critic, batch) -> dict[str, Tensor]:
    """The non-saturating GAN: the discriminator's and the generator's loss, both computed."""
    real, z, _ = batch
    fake = generator(z)
    real_logits, fake_logits = critic(real), critic(fake.detach())
    return {
        "d": F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
        + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)),
        "g": F.binary_cross_entropy_with_logits(critic(fake), torch.ones_like(fake_logits)),
    }


# ---------------------------------------------------------------- the modules


def adam(params, lr=1e-2):
    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.9))


class WGANGP(LossDictModule):
    """WGAN-GP with n_critic: the critic's route takes ``n_critic`` turns, then the generator
    one; ``forward`` computes only what the active route needs."""

    def __init__(self, n_critic: int = 5, critic_route: dict | None = None, **options) -> None:
        super().__init__(**options)
        self.generator, self.critic = networks()
        self.n_critic = n_critic
        self.critic_route = critic_route or {}
        self.seen_active: list[frozenset[str]] = []

    def forward(self, batch):
        active = self.active_routes
        if self.training:
            self.seen_active.append(active)
        out = {}
        if "critic+gp" in active:
            out.update(wgan_critic_losses(self.generator, self.critic, batch))
        if "generator" in active:
            out.update(wgan_generator_loss(self.generator, self.critic, batch))
        return out

    def configure_optimizers(self):
        return self.route_map()

    def route_map(self) -> dict:
        return {
            CRITIC: {
                "optimizer": adam(self.critic.parameters()),
                "frequency": self.n_critic,
                **self.critic_route,
            },
            "generator": {"optimizer": adam(self.generator.parameters()), "frequency": 1},
        }


class SequentialGAN(LossDictModule):
    """The classic loop: D steps, then G steps against the updated D, every batch. ``forward``
    returns both losses every pass (logging takes each from its own route's pass)."""

    def __init__(self, routes: Callable[[nn.Module, nn.Module], dict] | None = None, **options):
        options.setdefault("route_mode", "sequential")
        super().__init__(**options)
        self.generator, self.critic = networks()
        self.routes = routes
        self.passes: list[tuple[frozenset[str], dict[str, float]]] = []

    def forward(self, batch):
        out = gan_losses(self.generator, self.critic, batch)
        if self.training:
            self.passes.append((self.active_routes, {k: float(v) for k, v in out.items()}))
        return out

    def configure_optimizers(self):
        if self.routes is not None:
            return self.routes(self.generator, self.critic)
        return {"d": adam(self.critic.parameters()), "g": adam(self.generator.parameters())}


# ---------------------------------------------------------------- the references


def plain_alternating(
    schedule: Callable[[int], Sequence[str]],
    steps: Sequence[Sequence[Any]],
    losses: dict[str, Callable[[nn.Module, nn.Module, Any], Tensor]],
    clip: dict[str, float] | None = None,
    accumulate: int = 1,
) -> tuple[nn.Module, nn.Module, list[dict[str, float]]]:
    """The loop a GAN paper writes: at optimizer step ``k``, for each player in
    ``schedule(k)`` in turn: zero its gradients, backpropagate its loss over the step's
    micro-batches (each divided by their number), clip, step.

    ``losses[player](generator, critic, batch)`` is that player's loss; player ``"d"`` owns the
    critic's parameters and ``"g"`` the generator's.
    """
    generator, critic = networks()
    generator, critic = copy.deepcopy(generator), copy.deepcopy(critic)
    owned = {"d": list(critic.parameters()), "g": list(generator.parameters())}
    optimizers = {"d": adam(owned["d"]), "g": adam(owned["g"])}
    values: list[dict[str, float]] = []
    for k, micro_batches in enumerate(steps):
        logged: dict[str, float] = {}
        for player in schedule(k):
            optimizers[player].zero_grad()
            for batch in micro_batches:
                loss = losses[player](generator, critic, batch)
                (loss / accumulate).backward()
                logged[player] = float(loss)
            if clip and player in clip:
                torch.nn.utils.clip_grad_norm_(owned[player], clip[player])
            optimizers[player].step()
        values.append(logged)
    return generator, critic, values


def wgan_player_losses() -> dict[str, Callable]:
    return {
        "d": lambda g, c, b: sum(wgan_critic_losses(g, c, b).values()),
        "g": lambda g, c, b: wgan_generator_loss(g, c, b)["generator"],
    }


def gan_player_losses() -> dict[str, Callable]:
    return {
        "d": lambda g, c, b: gan_losses(g, c, b)["d"],
        "g": lambda g, c, b: gan_losses(g, c, b)["g"],
    }


def parameters_equal(module: LossDictModule, generator: nn.Module, critic: nn.Module) -> bool:
    pairs = [
        *zip(module.generator.parameters(), generator.parameters()),
        *zip(module.critic.parameters(), critic.parameters()),
    ]
    return all(torch.equal(a, b) for a, b in pairs)
