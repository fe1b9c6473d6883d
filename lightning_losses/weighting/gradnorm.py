"""GradNorm: Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for
Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_losses.gradients import shared
from lightning_losses.gradients.aggregation import jacobian
from lightning_losses.weighting.base import PerTerm


class GradNorm(PerTerm):
    """Learnable weights ``w_k`` trained so that the terms' gradient norms on a shared layer ``W``
    grow or shrink with how far behind each task is:

        G_k = || grad_W (w_k L_k) || = w_k * || grad_W L_k ||,    G_mean = mean_k G_k
        r_k = (L_k / L_k(0)) / mean_j (L_j / L_j(0))               (relative inverse rate)
        L_grad = sum_k | G_k - G_mean * r_k^alpha |                  (target held constant)

    The model's parameters get the gradient of ``sum_k w_k L_k`` with ``w`` held constant; ``w``
    gets the gradient of ``L_grad`` alone. Both happen in the one backward Lightning runs: the
    weights are returned detached, and the penalty is ``L_grad - L_grad.detach()`` (zero in value,
    so ``train/loss`` is the weighted sum). Before each step the weights are renormalised to sum
    to ``K``, as in the paper.

    Under DDP each rank computes ``L_grad`` from its own batch; DDP averages ``w``'s gradient
    with every other gradient in its one all-reduce, so ``w`` stays identical on every rank with
    no extra collective. ``L_k(0)`` is each term's value at its first step, kept in a buffer
    (checkpointed).

    Args:
        terms: the loss terms to weigh.
        shared: qualified-name prefix(es) of the shared layer ``W``, relative to the
            ``LossDictModule`` (``"trunk.2"``, ``"model.backbone.layer4"``); the paper uses the
            last shared layer, which keeps the extra backward passes short.
        alpha: the restoring-force strength (the paper uses 0.12 to 3; 1.5 is common).
    """

    initial_losses: Tensor  # a buffer (declared for type checkers: nn.Module hides it)

    def __init__(
        self, terms: Sequence[str], shared: str | Sequence[str], alpha: float = 1.5
    ) -> None:
        super().__init__(terms)
        self.shared_prefixes = _shared_prefixes(shared)
        self.alpha = float(alpha)
        k = len(self.terms)
        self.weights = nn.Parameter(torch.ones(k))
        self.register_buffer("initial_losses", torch.full((k,), math.nan))
        self._shared: list[nn.Parameter] = []
        self._penalty: Tensor | None = None

    def constructor_arguments(self) -> dict[str, object]:
        """The plain arguments that rebuild it (a checkpoint's ``hyper_parameters``)."""
        return {
            "terms": list(self.terms),
            "shared": list(self.shared_prefixes),
            "alpha": self.alpha,
        }

    def bind(self, module: nn.Module) -> None:
        self._shared = shared.named(module, self.shared_prefixes, "GradNorm(shared=...)")

    def forward(self, losses: Tensor, names: tuple[str, ...]) -> Tensor:
        with torch.no_grad():  # the paper's renormalisation, applied before the weights are used
            self.weights.mul_(len(self.terms) / self.weights.sum())
        index = self.index(names, losses.device)
        weights = self.weights[index]
        self._penalty = None
        if torch.is_grad_enabled() and losses.requires_grad and self._shared:
            self._penalty = self._gradient_loss(losses, index, weights)
        return weights.detach()

    def _gradient_loss(self, losses: Tensor, index: Tensor, weights: Tensor) -> Tensor:
        with torch.no_grad():
            seen = self.initial_losses[index]
            first = torch.where(torch.isnan(seen), losses.detach().to(seen.dtype), seen)
            self.initial_losses[index] = first  # no host sync: set where still NaN
        norms = jacobian(list(losses.unbind()), self._shared).norm(dim=1)  # no graph: detached
        grad_norms = weights * norms  # G_k; differentiable in w only
        rates = losses.detach() / first.to(losses.dtype)
        relative = rates / rates.mean()
        target = (grad_norms.mean() * relative**self.alpha).detach()
        gradient_loss = (grad_norms - target).abs().sum()
        return gradient_loss - gradient_loss.detach()

    def penalty(self, losses: Tensor, names: tuple[str, ...]) -> Tensor | None:
        penalty, self._penalty = self._penalty, None
        return penalty

    def extra_repr(self) -> str:
        return f"terms={list(self.terms)}, shared={list(self.shared_prefixes)}, alpha={self.alpha}"


def _shared_prefixes(value: str | Sequence[str]) -> tuple[str, ...]:
    prefixes = shared.as_prefixes(value, "GradNorm(shared=...)")
    if not prefixes:
        raise ValueError("GradNorm(shared=...) is empty; expected the shared layer's name")
    return prefixes
