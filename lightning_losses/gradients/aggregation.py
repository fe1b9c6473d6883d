"""Gradient aggregation (``aggregator=``): combine the terms' gradients on the shared parameters.

Jacobian-descent methods (UPGrad, MGDA, PCGrad, ... in torchjd) replace the shared parameters'
gradient ``sum_k grad L_k`` with ``A(J)``, an aggregation of the Jacobian ``J`` whose row ``k`` is
``grad L_k``. Here:

* ``J`` is built with one ``torch.autograd.grad`` per term, on the shared parameters only (those
  two or more terms reach, or ``shared_parameters=``); every other parameter keeps the ordinary
  gradient of the weighted total (a task head is reached by its own term only, where aggregation
  would change nothing).
* The step returns a surrogate ``sum_p <p, g_p>`` whose backward writes exactly ``g_p`` into
  ``p.grad`` (the same device as per-key optimizers use). That backward is the only one DDP
  sees, since ``autograd.grad`` fires none of its hooks: the aggregated gradients are averaged
  across ranks in DDP's usual bucketed all-reduce, once per step, and gradient clipping,
  accumulation and AMP loss scaling apply to it unchanged. torchjd's own Lightning recipe calls
  its backward outside DDP's reducer, so there each rank steps with its own gradient and the
  replicas drift apart.

An aggregator is anything callable on a ``[K, P]`` matrix returning a ``[P]`` vector; torchjd's
aggregators are, and torchjd stays optional.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from lightning_losses.distributed import fsdp2

Aggregator = Callable[[Tensor], Tensor]


def jacobian(losses: Sequence[Tensor], params: Sequence[Tensor]) -> Tensor:
    """``[K, P]``: row ``k`` is ``grad losses[k]`` over ``params``, flattened (zeros if unused).

    Under FSDP2 the passes keep the groups unsharded (``fsdp2.passes``): they then issue no
    collective, and a rank with fewer terms (or none) takes fewer passes without leaving the
    others waiting."""
    rows = []
    with fsdp2.passes():
        grads_per_loss = [
            torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            for loss in losses
        ]
    for grads in grads_per_loss:
        rows.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1)
                    for g, p in zip(grads, params)
                ]
            )
        )
    return torch.stack(rows)


def aggregate(aggregator: Aggregator, matrix: Tensor) -> Tensor:
    """``aggregator(matrix)``, checked: a clear error instead of a shape mismatch later."""
    combined = aggregator(matrix)
    if not isinstance(combined, Tensor) or combined.shape != matrix.shape[1:]:
        found = tuple(combined.shape) if isinstance(combined, Tensor) else type(combined).__name__
        raise ValueError(
            f"aggregator {aggregator!r} returned {found} for a Jacobian of shape "
            f"{tuple(matrix.shape)}; expected a vector of shape {tuple(matrix.shape[1:])}"
        )
    return combined


def surrogate(
    weighted: Tensor,
    shared: Sequence[nn.Parameter],
    others: Sequence[nn.Parameter],
    aggregator: Aggregator,
) -> Tensor:
    """A loss whose backward leaves ``A(J)`` on ``shared`` and the weighted total's gradient on
    ``others``. ``weighted`` is the step's 1-D vector of weighted terms."""
    terms = list(weighted.unbind())
    combined = aggregate(aggregator, jacobian(terms, shared))
    pieces: list[Tensor] = []
    offset = 0
    for p in shared:
        g = combined[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
        pieces.append((p * g.detach().to(p.dtype)).sum())
    if others:
        grads = torch.autograd.grad(weighted.sum(), others, allow_unused=True)
        # a parameter no term reached still joins the backward (as zero): DDP hears from it
        pieces += [
            (p * g.detach()).sum() if g is not None else p.sum() * 0.0
            for p, g in zip(others, grads)
        ]
    return torch.stack(pieces).sum()
