"""``add_loss`` / ``add_metric``: losses and metrics from anywhere inside the model.

A loss belongs next to the computation it measures: an activation regulariser inside a block, an
MoE router's balancing loss inside its layer. Threading such values up through every ``forward``
return is what this saves. A step opens a collection (a context variable, so threads and asyncio
tasks never see each other's), submodules add to it, and the step's ``total_loss`` drains it into
what ``forward`` returned: from there on an added value is a term or a metric like any other.

When a collection is open, and when not:

- opened at the start of each train/val/test batch (the module's batch-start hooks), and by the
  module's own ``forward`` when none is open (a user ``training_step`` that calls ``self(batch)``);
- drained, and so closed, by ``total_loss``; values added after it (activation checkpointing
  recomputes a forward during backward) go nowhere, and are never counted twice;
- never opened outside a Trainer's loop: a model used for plain inference keeps nothing;
- one owner at a time: a ``LossDictModule`` nested inside another adds to the outer one's
  collection instead of opening its own.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor

from lightning_losses.terms.values import describe


class Collected:
    """One step's added values, by name; several calls with one name are summed."""

    __slots__ = ("losses", "metrics", "owner")

    def __init__(self, owner: object) -> None:
        self.owner = owner
        self.losses: dict[str, Tensor] = {}
        self.metrics: dict[str, Tensor | float] = {}


#: The open step's collection (read and set inline by the per-step path of session/).
STEP: ContextVar[Collected | None] = ContextVar("lightning_losses_step", default=None)
_STEP = STEP


def _in_backward() -> bool:
    # A forward recomputed by activation checkpointing runs inside the backward's graph task.
    return torch._C._current_graph_task_id() != -1


def _check_name(name: Any, function: str) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError(
            f"{function}(name, value): name is {describe(name)}; expected a non-empty str"
        )


def add_loss(name: str, value: Tensor) -> None:
    """Add ``value`` to this step's loss term ``name``, as if ``forward`` had returned it.

    Several calls with one name in one step are summed (a block applied twice adds its term
    twice). Outside a ``LossDictModule`` step this does nothing and keeps nothing.
    """
    collected = _STEP.get()
    if collected is None:
        return
    _check_name(name, "add_loss")
    if not (isinstance(value, Tensor) and value.dim() == 0 and value.is_floating_point()):
        raise TypeError(
            f"add_loss({name!r}, value): value is {describe(value)}; expected a 0-dim floating "
            "tensor (reduce it with .mean() or .sum())"
        )
    if _in_backward():
        return
    previous = collected.losses.get(name)
    collected.losses[name] = value if previous is None else previous + value


def add_metric(name: str, value: Tensor | float) -> None:
    """Add ``value`` to this step's metric ``name``: logged like a returned metric, never summed
    into the loss (it is detached). Several calls with one name in one step are summed."""
    collected = _STEP.get()
    if collected is None:
        return
    _check_name(name, "add_metric")
    if isinstance(value, Tensor):
        if value.dim() != 0 or value.is_complex():
            raise TypeError(
                f"add_metric({name!r}, value): value is {describe(value)}; expected a 0-dim real "
                "tensor or a number"
            )
        value = value.detach()
        if not value.is_floating_point():
            value = value.float()
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = float(value)
    else:
        raise TypeError(
            f"add_metric({name!r}, value): value is {describe(value)}; expected a 0-dim real "
            "tensor or a number"
        )
    if _in_backward():
        return
    previous = collected.metrics.get(name)
    collected.metrics[name] = value if previous is None else previous + value


def open_step(owner: object, fresh: bool = False) -> None:
    """Open a collection for ``owner``'s step; ``fresh`` discards one left from before.

    Without ``fresh`` an open collection is kept, whoever owns it: the outermost module of a step
    collects for the step, and a model's forward run twice in a step (two views) adds to one.
    """
    if fresh or _STEP.get() is None:
        _STEP.set(Collected(owner))


def drain(owner: object) -> Collected | None:
    """Close ``owner``'s collection and return it (``None`` if ``owner`` has none open)."""
    collected = _STEP.get()
    if collected is None or collected.owner is not owner:
        return None
    _STEP.set(None)
    return collected


def close(owner: object) -> None:
    """Discard ``owner``'s collection, if open (end of a batch that never reached total_loss)."""
    drain(owner)


def merge(output: Any, collected: Collected) -> Any:
    """What ``forward`` returned, with the added values beside it.

    A name that ``forward`` also returns is an error: summing the two silently would hide which
    one a curve shows.
    """
    added: dict[str, Any] = {**collected.losses, **collected.metrics}
    both = collected.losses.keys() & collected.metrics.keys()
    if both:
        raise ValueError(
            f"add_loss and add_metric both used the name(s) {sorted(both)} in one step; expected "
            "each name to be either a loss or a metric"
        )
    if not added:
        return output
    if output is None:
        return added
    if isinstance(output, Tensor):
        raise ValueError(
            f"forward returned a bare scalar (the one loss, named 'loss') and add_loss/add_metric "
            f"added {sorted(added)}; expected forward to return a mapping that names its loss "
            "(for example {'task': loss}) when other values are added beside it"
        )
    if not isinstance(output, Mapping):
        return output  # parse_output explains what is wrong with it
    clash = [name for name in added if name in output]
    if clash:
        raise ValueError(
            f"forward returned {clash[0]!r} and add_loss/add_metric added a value under the same "
            "name in the same step; expected distinct names (rename one of them)"
        )
    return {**output, **added}
