"""The few cross-rank operations the library issues, written against ``torch.distributed`` directly.

Lightning's ``strategy.all_gather`` first gathers every tensor's shape (two collectives per call)
and ``self.log(sync_dist=True)`` all-reduces each key separately. Logging must cost one
collective per write whatever the number of keys, so the packed payload is gathered here in
exactly one call.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """Whether a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_rows(payload: Tensor) -> Tensor:
    """Every rank's 1-D ``payload`` (same length on all ranks), stacked into ``[world, len]``.

    One collective. A gather (rather than an all-reduce) lets the caller combine columns
    differently (sums for running totals, minimum for "first step that went non-finite") and every
    rank combines the same rows in the same order, so all ranks compute bit-identical results.
    """
    rows = [torch.empty_like(payload) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, payload.contiguous())
    return torch.stack(rows)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order. Only used when key sets change."""
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def any_rank(flag: Tensor) -> bool:
    """Whether ``flag`` (a 0-dim bool tensor) is true on any rank; one collective, then a sync."""
    value = flag.to(torch.int32).reshape(1)
    if is_distributed():
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
