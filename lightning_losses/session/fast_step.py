"""A training step whose key set was seen before, in a handful of ops and calls.

The first step of a key set goes the whole way (``terms.parse_output``: flatten, classify, check
every value, warn, plan). If what ``forward`` returned was a flat ``dict`` whose keys map one to
one onto terms, tensor metrics and pass-through outputs, the outcome is kept as a
:class:`FastPlan` under the dict's keys. A later step with the same keys then takes the terms out
with one ``itemgetter``, combines them as the first step did, and stacks every logged value into
its plan's staging row in one op (see plan.py): no per-key Python, no host sync.

What the fast path does not check per step (a term's requires-grad, finiteness, types) is checked
where it is needed: a total without a gradient falls back to the full path, which says why;
non-finite values are found at the next write, with the exact step (the row's step); a value of
another shape or type makes ``torch.stack`` refuse, and the full path then names the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import torch
from torch import Tensor

from lightning_losses.logging.layout import StepPlan
from lightning_losses.terms.parse import ParsedOutput

#: A step's logged values are stacked into a float64 buffer with ``out=``, which autograd refuses
#: for inputs that carry a gradient, so grad mode is switched off around it. ``torch.no_grad()``
#: costs four Python calls per use (its ``__enter__``/``__exit__`` go through
#: ``set_grad_enabled``'s constructor); this is the switch they end up calling.
set_grad_enabled = torch._C._set_grad_enabled


@dataclass
class FastPlan:
    """What a step of one key set needs beyond its :class:`StepPlan`."""

    plan: StepPlan
    terms: Any  # itemgetter of the terms (returns a tuple)
    metrics: Any  # itemgetter of the tensor metrics (returns a tuple), or None
    outputs: tuple[str, ...]
    #: One term of weight 1 and no weighting: the term is the total, no stack and no sum.
    single: bool
    #: Two or three terms of weight 1, no weighting, no routes: the total is their chained
    #: sum (one add per term, where stack + sum and its backward take five ops).
    chained: bool
    weights: Tensor | None = None
    #: How a step's values reach its staging row, the cheapest way for this key set (a stack
    #: with ``out=`` of another dtype casts input by input: 85 us for 33 values, where two
    #: ``copy_`` take 2 us): "head" copies the one term (it is also the total) into the row's
    #: head at once; "copies" copies the stacked terms, the total and a lone metric; "stack"
    #: stacks everything in the terms' dtype and copies it once.
    record: str = "stack"


def build(
    output: Any,
    parsed: ParsedOutput,
    plan: StepPlan,
    weighted: bool,
    losses: Tensor,
) -> FastPlan | None:
    """The fast plan of this step's key set, or ``None`` if its output does not qualify."""
    if type(output) is not dict or plan.number_metrics or plan.weights.has_schedules:
        return None
    if set(output) != {*parsed.terms, *parsed.metrics, *parsed.outputs}:
        return None  # flattened, renamed or dropped entries: the full path handles them
    if any(output[name] is not value for name, value in parsed.terms.items()):
        return None
    terms = plan.terms
    getter: Any = _getter(terms)
    metrics: Any = _getter(plan.tensor_metrics) if plan.tensor_metrics else None
    single = len(terms) == 1 and plan.weights.all_ones and not weighted
    weights = None
    if not plan.weights.all_ones:
        weights = plan.weights.vector(0, losses.device, losses.dtype)
    chained = 2 <= len(terms) <= 3 and plan.weights.all_ones and not weighted
    fast = FastPlan(plan, getter, metrics, tuple(parsed.outputs), single, chained, weights)
    fast.record = record_mode(fast)
    return fast


def record_mode(fast: FastPlan) -> str:
    """See ``FastPlan.record``; again whenever ``single``/``chained`` change."""
    plan = fast.plan
    metrics = len(plan.tensor_metrics)
    if fast.single and not metrics:
        return "head"
    if not (fast.single or fast.chained or plan.sole_total) and metrics <= 1:
        return "copies"
    return "stack"


def _getter(names: tuple[str, ...]) -> Any:
    """``mapping -> tuple of its values at names`` (one C call; one more for a single name)."""
    if len(names) > 1:
        return itemgetter(*names)
    get = itemgetter(names[0])
    return lambda mapping: (get(mapping),)


__all__ = ["FastPlan", "build", "record_mode", "set_grad_enabled"]
