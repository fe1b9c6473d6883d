"""Gradient diagnostics: are my tasks fighting?

Every ``N`` steps, the gradient of each loss term with respect to the *shared* parameters (by
default every trainable parameter that two or more terms reach) is computed with
``torch.autograd.grad``, and two things are logged: each term's gradient norm
(``grad_norm/<term>``) and the cosine between each pair of terms' gradients
(``grad_cos/<a>_vs_<b>``: near -1 the tasks pull the shared parameters in opposite directions).

``autograd.grad`` neither writes ``.grad`` nor fires DDP's gradient hooks, so the step that follows
is exactly the step that would have run without diagnostics; only the steps where diagnostics run
pay for them (one extra backward per term through the shared part of the graph). The values are
recorded into the same on-device accumulators as the losses: no host sync, and under DDP they are
the mean over ranks (of each rank's own batch gradients) in the write's one collective.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_losses.gradients.aggregation import jacobian
from lightning_losses.gradients.shared import SharedParameters
from lightning_losses.terms.values import describe

NORM_PREFIX = "grad_norm"
COSINE_PREFIX = "grad_cos"
#: Between the two terms of a pair: characters every Lightning logger keeps (MLflow drops "|",
#: TensorBoard replaces spaces), so ``a|bc`` and ``ab|c`` cannot collide after a logger's cleanup.
PAIR_SEPARATOR = "_vs_"


def diagnostic_names(terms: Sequence[str]) -> tuple[str, ...]:
    """The logged names for ``terms``, in the order :func:`gradient_statistics` returns values."""
    norms = [f"{NORM_PREFIX}/{t}" for t in terms]
    pairs = [
        f"{COSINE_PREFIX}/{a}{PAIR_SEPARATOR}{b}"
        for i, a in enumerate(terms)
        for b in terms[i + 1 :]
    ]
    if len(set(pairs)) < len(pairs):
        clashing = sorted({name for name in pairs if pairs.count(name) > 1})
        raise ValueError(
            f"gradient diagnostics: the term names {list(terms)} give two pairs the same name "
            f"({', '.join(map(repr, clashing))}); expected names without {PAIR_SEPARATOR!r}"
        )
    return tuple(norms + pairs)


def gradient_statistics(losses: Sequence[Tensor], params: Sequence[Tensor]) -> Tensor:
    """Each loss's gradient norm on ``params``, then the cosine of every pair (``i < j``).

    The functional core, without a trainer: a 1-D tensor of ``K + K(K-1)/2`` values, from the
    Gram matrix of the terms' Jacobian (in float32 at least). A loss that does not reach the
    parameters has a zero gradient: norm 0, cosine 0 with everything.
    """
    matrix = jacobian(losses, params)
    matrix = matrix.to(torch.promote_types(matrix.dtype, torch.float32))
    gram = matrix @ matrix.T
    k = len(losses)
    norms = gram.diagonal().clamp_min(0).sqrt()
    upper = torch.triu_indices(k, k, offset=1, device=gram.device)
    denominator = (norms[upper[0]] * norms[upper[1]]).clamp_min(torch.finfo(gram.dtype).tiny)
    cosines = gram[upper[0], upper[1]] / denominator
    return torch.cat((norms, cosines))


class GradientDiagnostics:
    """When to run the diagnostics, and on which parameters."""

    def __init__(self, every_n_steps: int, shared: SharedParameters) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int):
            raise TypeError(
                f"grad_diagnostics_every_n_steps is {describe(every_n_steps)}; expected a "
                "positive int or None"
            )
        if every_n_steps < 1:
            raise ValueError(
                f"grad_diagnostics_every_n_steps={every_n_steps}; expected a positive int or None"
            )
        self.every_n_steps = every_n_steps
        #: The same object ``aggregator=`` uses: one option, one cache of what is shared.
        self.parameters = shared

    def due(self, step: int) -> bool:
        return step % self.every_n_steps == 0
