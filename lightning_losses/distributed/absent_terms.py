"""Optional loss terms under DDP and FSDP2, without ``find_unused_parameters``.

A term that is absent on one rank (an optional task without labels in that rank's batch) leaves
the parameters only it reaches without a gradient there, while the ranks that had it produce one.
DDP's reducer then waits for gradients that never come (Lightning's "unused parameters" error, or
``find_unused_parameters=True`` and its graph traversal at every step), and FSDP2 reduce-scatters
only the parameters that got a gradient, so the ranks' buffers disagree.

Here every trainable parameter that the step's objective does not reach gets an exact zero
gradient through one extra autograd node, so every rank hands its reducer the same parameters and
the averaged gradient is what ``find_unused_parameters=True`` would compute. Which parameters the
objective reaches is read from its autograd graph once per key set (the graph walk routing.py
uses) and cached: a step whose key set is known costs one dictionary lookup, plus the node and
its zero tensors when something is missing. Nothing is known in advance about the terms, so the
first step works like any other: a term never seen on this rank is simply a parameter set this
rank's objective does not reach.

This assumes that a key set always reaches the same parameters. A model whose *data* decides
which parameters run (mixture-of-experts routing) still needs ``find_unused_parameters=True``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_losses.cache import BoundedCache
from lightning_losses.distributed.sharding import is_sharded
from lightning_losses.routing import reached_parameters


class _ZeroGradients(torch.autograd.Function):
    """A zero scalar whose backward gives each of its parameters a zero gradient: one graph
    node, however many parameters (``0 * sum(p.sum())`` would be two per parameter)."""

    @staticmethod
    def forward(ctx: Any, *params: Tensor) -> Tensor:
        ctx.shapes = [(p.shape, p.dtype, p.device) for p in params]
        return params[0].new_zeros(())

    @staticmethod
    def backward(ctx: Any, _: Tensor) -> tuple[Tensor, ...]:
        return tuple(torch.zeros(s, dtype=d, device=v) for s, d, v in ctx.shapes)


class AbsentTerms:
    """Per key set: the trainable parameters the objective leaves without a gradient (one
    instance per fit: another fit may have another strategy and other parameters)."""

    def __init__(self, distributed: bool) -> None:
        self._unreached: BoundedCache[tuple[str, ...], list[Tensor]] = BoundedCache()
        self._distributed = distributed

    def cover(self, module: nn.Module, names: tuple[str, ...], objective: Tensor) -> Tensor:
        """``objective``, plus a zero that reaches every trainable parameter it does not reach
        when the module trains on several processes (alone, a missing gradient is what the
        optimizer should see: it skips the parameter)."""
        if not self._distributed or not objective.requires_grad:
            return objective
        unreached = self._unreached.get(names)
        if unreached is None:
            reached = reached_parameters(objective)
            unreached = [
                p
                for p in module.parameters()
                # a sharded FSDP2 parameter (DTensor) is never a leaf of the step's graph: its
                # group's unsharded parameters are, and FSDP2 reduces those
                # nor a view (FSDP1 holds views of its flat parameter, which is the leaf)
                if p.requires_grad and p.is_leaf and id(p) not in reached and not is_sharded(p)
            ]
            self._unreached.put(names, unreached)
        if not unreached:
            return objective
        return objective + _ZeroGradients.apply(*unreached)
