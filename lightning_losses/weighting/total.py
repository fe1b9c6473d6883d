"""Terms -> the weighted total: static ``loss_weights`` times a ``weighting=``'s, in one place.

Every pass that needs a total goes through :meth:`Total.combine`: a joint training step, the
last pass of a sequential (GAN) batch that records the batch's values, and every evaluation step.
So ``train/loss`` and ``val/loss`` are the same function of the terms, and a change of how the
total is formed cannot reach one path and miss another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from lightning_losses.terms.values import check_term_devices
from lightning_losses.weighting.static import WeightPlan


def stack_terms(terms: Mapping[str, Tensor]) -> Tensor:
    """The terms as one vector, in full precision; a clear error where torch's would not name
    the keys (devices that do not mix, meta tensors that have no data)."""
    try:
        losses = torch.stack(list(terms.values()))
    except (RuntimeError, NotImplementedError):
        check_term_devices(terms)
        raise
    if losses.is_meta:
        check_term_devices(terms)
    if losses.dtype is not torch.float32 and losses.dtype is not torch.float64:
        losses = losses.float()  # half-precision terms: reduce and log in full precision
    return losses


class Planned(Protocol):
    """What combining needs of a key set's plan (``logging.layout.StepPlan`` is one)."""

    terms: tuple[str, ...]
    weights: WeightPlan


@dataclass
class Combined:
    """One step's stacked terms, the weights applied to them (``None``: all 1) and the total."""

    losses: Tensor
    weights: Tensor | None
    total: Tensor
    #: A weighting's own objective beside the weighted sum (a scalarizer's correction term).
    penalty: Tensor | None = None


class Total:
    """Combines a step's terms with the plan's static weights and the optional weighting."""

    def __init__(self, weighting: nn.Module | None) -> None:
        self.weighting = weighting
        self._bound = False

    def combine(self, plan: Planned, losses: Tensor, step: int, owner: Any = None) -> Combined:
        """``sum_k w_k L_k`` (+ the weighting's penalty) of the stacked terms ``losses``.
        ``owner`` is the module, passed in training: a weighting with ``bind(module)`` (GradNorm
        reads the shared parameters) is bound to it at its first training step."""
        weights = None
        if not plan.weights.all_ones:
            weights = plan.weights.vector(step, losses.device, losses.dtype)
        penalty = None
        weighting = self.weighting
        if weighting is not None:
            if owner is not None and not self._bound:
                self._bound = True
                bind = getattr(weighting, "bind", None)  # any nn.Module may weigh
                if bind is not None:
                    bind(owner)
            learned = weighting(losses, plan.terms).to(losses.dtype)
            weights = learned if weights is None else weights * learned
            penalty_of = getattr(weighting, "penalty", None)
            penalty = penalty_of(losses, plan.terms) if penalty_of is not None else None
        # One op either way: the per-step path is bound by dispatch overhead, not arithmetic.
        total = losses.sum() if weights is None else torch.dot(losses, weights)
        if penalty is not None:
            total = total + penalty
        return Combined(losses, weights, total, penalty)
