"""Optional loss terms under DDP and FSDP2, without ``find_unused_parameters``.

A term that is absent on one rank (an optional task without labels in that rank's batch) leaves
the parameters only it reaches without a gradient there, while the ranks that had it produce one.
DDP's reducer then waits for gradients that never come (Lightning's "unused parameters" error, or
``find_unused_parameters=True`` and its graph traversal at every step), and FSDP2 reduce-scatters
only the parameters that got a gradient, so the ranks' buffers disagree.

Here every trainable parameter that the step's objective does not reach gets an exact zero
gradient through one extra autograd node, so every rank hands its reducer the same parameters and
the averaged gradient is what ``find_unused_parameters=True`` would compute. Which parameters the
objective reaches is read from its autograd graph once per key set (the graph walk of
``gradients.graph``) and cached: a step whose key set is known costs one dictionary lookup, plus
the node and its zero tensors when something is missing. Nothing is known in advance about the
terms, so the first step works like any other: a term never seen on this rank is simply a
parameter set this rank's objective does not reach.

Under FSDP2 with blocks (``fully_shard`` on submodules), a block's backward also gathers and
reduces its parameters, from hooks on the block's outputs, and every rank must do so in the same
turn: a block whose outputs the objective does not reach gets its zero through those outputs
(recorded in this step, see ``fsdp2``), not straight into its parameters, so its backward runs
in its turn as on the ranks that have its terms. The graph is walked once per key set and set of
blocks that ran.

This assumes that a key set always reaches the same parameters. A model whose *data* decides
which parameters run (mixture-of-experts routing) still needs ``find_unused_parameters=True``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_losses.cache import BoundedCache
from lightning_losses.distributed import fsdp2
from lightning_losses.distributed.sharding import is_sharded
from lightning_losses.graph import reach


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
        #: (key set, the blocks that ran) -> (positions of block outputs the objective does not
        #: reach, parameters it does not reach)
        self._unreached: BoundedCache[tuple[Any, ...], tuple[list[int], list[Tensor]]] = (
            BoundedCache()
        )
        self._distributed = distributed

    def cover(self, module: nn.Module, names: tuple[str, ...], objective: Tensor) -> Tensor:
        """``objective``, plus a zero that reaches every trainable parameter it does not reach
        when the module trains on several processes (alone, a missing gradient is what the
        optimizer should see: it skips the parameter).

        Under FSDP2 with blocks, a block whose outputs the objective does not reach gets the
        zero through those outputs (see ``fsdp2``): its backward then runs, with its
        collectives, in its turn as on the ranks that have its terms.
        """
        if not self._distributed or not objective.requires_grad:
            return objective  # (what blocks returned is forgotten at the next forward)
        steps = fsdp2.steps_of(module)
        records = steps.take() if steps is not None else []
        key = (names, *[id(block) for block, _ in records])
        unreached = self._unreached.get(key)
        if unreached is None:
            unreached = _unreached(module, objective, records)
            self._unreached.put(key, unreached)
        outputs, params = unreached
        if outputs:
            tensors = [t.sum() for i in outputs for t in records[i][1]]
            objective = objective + torch.stack(tensors).sum() * 0.0
        if params:
            objective = objective + _ZeroGradients.apply(*params)
        return objective


def _unreached(
    module: nn.Module, objective: Tensor, records: list[tuple[nn.Module, list[Tensor]]]
) -> tuple[list[int], list[Tensor]]:
    """Which block outputs and which trainable parameters ``objective`` does not reach (a
    parameter reached through an unreached block's outputs counts as reached: the zero through
    those outputs gives it its gradient)."""
    found = reach(objective)
    outputs = [i for i, (_, ts) in enumerate(records) if not any(map(found.reaches, ts))]
    through = reach(*[t for i in outputs for t in records[i][1]]).leaves if outputs else set()
    unsharded = fsdp2.unsharded_parameters(module)
    params = []
    for param in module.parameters():
        # what the step's graph differentiates: a sharded FSDP2 parameter's unsharded one (a
        # sharded parameter is never a leaf of it); FSDP1's views of its flat parameter are
        # not leaves either (the flat parameter is), and are left alone
        leaf = unsharded.get(id(param), param)
        if (
            param.requires_grad
            and leaf.is_leaf
            and not is_sharded(leaf)
            and id(leaf) not in found.leaves
            and id(leaf) not in through
        ):
            params.append(leaf)
    return outputs, params
