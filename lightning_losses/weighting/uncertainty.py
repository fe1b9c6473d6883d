"""Uncertainty weighting: Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
Losses for Scene Geometry and Semantics", CVPR 2018."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_losses.weighting.base import PerTerm


class UncertaintyWeighting(PerTerm):
    """One learnable log-variance ``s_k = log sigma_k^2`` per term; the objective is

        sum_k  0.5 * exp(-s_k) * L_k  +  0.5 * s_k

    (the paper's Gaussian-likelihood form, as in its eq. 7 with ``s = log sigma^2``). The weight
    ``0.5 * exp(-s_k)`` is logged as ``weight/<term>``; ``0.5 * sum s_k`` is the penalty that keeps
    the variances from growing without bound. ``s`` trains with the model's optimizer.

    Args:
        terms: the loss terms to weigh (every term a step may return).
        init_log_variance: the initial ``s_k`` (0: every weight starts at 0.5).
    """

    def __init__(self, terms: Sequence[str], init_log_variance: float = 0.0) -> None:
        super().__init__(terms)
        self.init_log_variance = float(init_log_variance)
        self.log_variance = nn.Parameter(torch.full((len(self.terms),), float(init_log_variance)))

    def constructor_arguments(self) -> dict[str, object]:
        """The plain arguments that rebuild it (a checkpoint's ``hyper_parameters``)."""
        return {"terms": list(self.terms), "init_log_variance": self.init_log_variance}

    def forward(self, losses: Tensor, names: tuple[str, ...]) -> Tensor:
        return 0.5 * torch.exp(-self.select(self.log_variance, names))

    def penalty(self, losses: Tensor, names: tuple[str, ...]) -> Tensor:
        return 0.5 * self.select(self.log_variance, names).sum()
