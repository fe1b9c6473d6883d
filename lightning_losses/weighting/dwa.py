"""Dynamic Weight Average: Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention",
CVPR 2019."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lightning_losses.weighting.base import PerTerm


class DynamicWeightAverage(PerTerm):
    """Weights from how fast each term fell over the last two epochs:

        r_k = L_k(t-1) / L_k(t-2),    w_k(t) = K * softmax(r / T)_k

    with ``L_k`` the term's epoch mean (pooled over steps and DDP ranks, so every rank computes
    the same weights), ``K`` the number of terms and ``T`` the temperature. The first two epochs
    use weight 1. A term that fell slowly gets more weight. The weights change once per epoch,
    so a step costs one index; the last two epoch means are buffers, so a checkpoint restores
    them and resumed training continues with the same weights.

    Args:
        terms: the loss terms to weigh.
        temperature: ``T``; larger is closer to equal weights (the paper uses 2).
    """

    epoch_means: Tensor  # buffers (declared for type checkers: nn.Module hides them)
    weights: Tensor

    def __init__(self, terms: Sequence[str], temperature: float = 2.0) -> None:
        super().__init__(terms)
        if not temperature > 0:
            raise ValueError(f"temperature={temperature!r}; expected a positive number")
        self.temperature = float(temperature)
        k = len(self.terms)
        # row 0: epoch t-2, row 1: epoch t-1; NaN where a term had no value that epoch
        self.register_buffer("epoch_means", torch.full((2, k), math.nan, dtype=torch.float64))
        self.register_buffer("weights", torch.ones(k, dtype=torch.float64))

    def constructor_arguments(self) -> dict[str, object]:
        """The plain arguments that rebuild it (a checkpoint's ``hyper_parameters``)."""
        return {"terms": list(self.terms), "temperature": self.temperature}

    def forward(self, losses: Tensor, names: tuple[str, ...]) -> Tensor:
        return self.select(self.weights, names)

    def epoch_end(self, means: Mapping[str, float]) -> None:
        latest = torch.tensor([means.get(t, math.nan) for t in self.terms], dtype=torch.float64)
        self.epoch_means[0] = self.epoch_means[1]
        self.epoch_means[1] = latest.to(self.epoch_means.device)
        self.weights.copy_(dwa_weights(self.epoch_means[0], self.epoch_means[1], self.temperature))


def dwa_weights(before: Tensor, last: Tensor, temperature: float) -> Tensor:
    """``K * softmax((last / before) / T)``; a term without both means counts as ratio 1, and
    with no two complete epochs yet every weight is 1."""
    if torch.isnan(before).all():
        return torch.ones_like(last)
    ratio = torch.where(
        torch.isnan(before) | torch.isnan(last), torch.ones_like(last), last / before
    )
    return len(ratio) * torch.softmax(ratio / temperature, dim=0)
