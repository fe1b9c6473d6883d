"""The interface every weighting strategy implements, and the per-term bookkeeping they share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from lightning_losses.cache import BoundedCache
from lightning_losses.devices import device_tensor
from lightning_losses.terms.patterns import closest
from lightning_losses.terms.values import describe


class Weighting(nn.Module):
    """Base class for ``weighting=`` strategies.

    ``forward(losses, names)`` receives the step's loss terms stacked in one 1-D tensor (with their
    graph, so a learnable strategy can train through them) and their names, and returns one weight
    per term. The total is ``sum(static_weight * weight * loss) + penalty(...)``; static
    ``loss_weights`` still apply, so a strategy can be combined with fixed scales.

    Hooks a strategy may override, each called by ``LossDictModule``:

    * ``penalty(losses, names)``: an extra term of the objective (uncertainty weighting's
      log-variances, GradNorm's gradient loss); added to the backpropagated total, logged in
      ``train/loss``, never as a term.
    * ``bind(module)``: once, before the first training step, with the ``LossDictModule``, for
      strategies that look at its parameters (GradNorm's shared layer). Not at construction: in
      subclass mode the layers do not exist yet when ``super().__init__`` runs.
    * ``epoch_end(means)``: after every training epoch, with each term's epoch mean, pooled over
      all steps and all DDP ranks, so every rank sees the same numbers.

    Everything a strategy must remember lives in parameters and buffers, so checkpoints and
    ``fit(ckpt_path=)`` restore it exactly, and under DDP it stays identical on every rank (DDP
    averages parameters' gradients; buffers change only from rank-identical inputs).
    """

    def forward(self, losses: Tensor, names: tuple[str, ...]) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def penalty(self, losses: Tensor, names: tuple[str, ...]) -> Tensor | None:
        """An extra term of the objective; ``None`` for a pure weighted sum."""
        return None

    def bind(self, module: nn.Module) -> None:
        """Called once with the ``LossDictModule`` before the first training step."""

    def epoch_end(self, means: Mapping[str, float]) -> None:
        """Called after every training epoch with each term's epoch mean over steps and ranks."""


class PerTerm(Weighting):
    """A strategy with one entry per named term (a parameter or buffer of length K).

    The terms are named up front because learnable entries must exist before the optimizer is
    built; a step may carry any subset of them (optional tasks), never a term not listed.
    """

    def __init__(self, terms: Sequence[str]) -> None:
        super().__init__()
        if isinstance(terms, str) or not all(isinstance(t, str) for t in terms):
            raise TypeError(
                f"terms is {describe(terms)}; expected a list of loss-term names such as "
                "['seg', 'depth']"
            )
        if not terms or len(set(terms)) != len(terms):
            raise ValueError(f"terms={list(terms)}; expected distinct loss-term names")
        self.terms = tuple(terms)
        self._position = {t: i for i, t in enumerate(self.terms)}
        self._indices: BoundedCache[tuple[tuple[str, ...], torch.device], Tensor | None]
        self._indices = BoundedCache()

    def select(self, values: Tensor, names: tuple[str, ...]) -> Tensor:
        """The entries of ``values`` (one per listed term) for ``names``, in their order: the
        vector itself when ``names`` are every term in order (no indexing op on that path)."""
        if names == self.terms:
            return values
        return values[self.index(names, values.device)]

    def index(self, names: tuple[str, ...], device: torch.device) -> Tensor:
        """Positions of ``names`` among ``self.terms``, as a device tensor (cached)."""
        key = (names, device)
        index = self._indices.get(key)
        if index is None:
            unknown = [n for n in names if n not in self._position]
            if unknown:
                listed = [t for t in self.terms if t not in names]  # a typo is one of these
                raise ValueError(
                    f"{type(self).__name__} got loss term{'s' if len(unknown) > 1 else ''} "
                    f"{', '.join(map(repr, unknown))}, not in its terms {list(self.terms)}; "
                    "expected every loss term to be listed"
                    + "".join(
                        f"; is {n!r} the listed {meant!r} misspelt?"
                        for n in unknown
                        if (meant := closest(n, listed)) is not None
                    )
                )
            index = device_tensor([self._position[n] for n in names], torch.long, device)
            self._indices.put(key, index)
        return index

    def extra_repr(self) -> str:
        return f"terms={list(self.terms)}"
