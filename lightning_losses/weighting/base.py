"""The interface every weighting strategy implements."""

from __future__ import annotations

from torch import Tensor, nn


class Weighting(nn.Module):
    """Base class for ``weighting=`` strategies.

    ``forward(losses, names)`` receives the step's loss terms stacked in one 1-D tensor (with their
    graph, so a learnable strategy can train through them) and their names, and returns one weight
    per term. The total is ``sum(static_weight * weight * loss) + penalty(...)``; static
    ``loss_weights`` still apply, so a strategy can be combined with fixed scales.

    ``penalty`` is for strategies whose objective is not a pure weighted sum (uncertainty
    weighting's log-variance term); it is added to the total but not to any logged term.
    """

    def forward(self, losses: Tensor, names: tuple[str, ...]) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def penalty(self, losses: Tensor, names: tuple[str, ...]) -> Tensor | None:
        """An extra term of the objective; ``None`` for a pure weighted sum."""
        return None
