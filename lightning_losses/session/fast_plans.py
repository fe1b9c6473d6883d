"""A key set's decision remembered, with the guard that tells whether it still holds.

The first step of a key set goes the whole way (``terms.parse_output``: flatten, classify, check
every value, warn, plan). If ``forward`` returned a flat ``dict`` whose keys map one to one onto
terms, tensor metrics and pass-through outputs, the outcome is kept as a :class:`FastPlan` under
the dict's keys and under the facts that decided it: each tensor's ``(requires_grad, dtype,
ndim)`` and each other value's type; the plan also keeps the version of training's verdicts (a
name that became a term elsewhere). A later step with the same keys reads those facts again, in C
(one ``map`` of an ``attrgetter`` over the values), and takes the fast step only with a plan made
under the same facts and verdicts; anything new (a grad-less zero on a batch without labels, an
integer, a ``None``, a ``(1,)`` shape) sends the step down the full path, which decides and
explains as on the first step, and leaves a plan for those facts too (an optional head that
alternates between a zero and a loss then has two plans). So the fast step can never decide
differently from the full one: it only skips re-deciding.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Any

from torch import Tensor

from lightning_losses.cache import BoundedCache
from lightning_losses.logging.layout import StepPlan
from lightning_losses.terms.parse import ParsedOutput

#: What the full path's verdict on a tensor depends on (a term is a 0-dim floating tensor that
#: carries a gradient; anything of more than 0 dimensions is passed through).
TENSOR_FACTS = attrgetter("requires_grad", "dtype", "ndim")


@dataclass
class FastPlan:
    """What a step of one key set needs beyond its :class:`StepPlan`, under one set of facts."""

    plan: StepPlan
    terms: Any  # itemgetter of the terms (returns a tuple)
    metrics: Any  # itemgetter of the tensor metrics (returns a tuple), or None
    outputs: tuple[str, ...]
    #: One term of weight 1 and no weighting: the term is the total, no stack and no sum.
    single: bool
    #: Two or three terms of weight 1, no weighting, no routes: the total is their chained
    #: sum (one add per term, where stack + sum and its backward take five ops).
    chained: bool
    #: The version of training's verdicts this plan was decided under.
    verdicts: int
    weights: Tensor | None = None
    #: How a step's values reach its staging row, the cheapest way for this key set (a stack
    #: with ``out=`` of another dtype casts input by input: 85 us for 33 values, where two
    #: ``copy_`` take 2 us): "head" copies the one term (it is also the total) into the row's
    #: head at once; "copies" copies the stacked terms, the total and a lone metric; "stack"
    #: stacks everything in the terms' dtype and copies it once.
    record: str = "stack"


class KeySet:
    """The plans of one returned dict's keys, by the facts they were decided on."""

    def __init__(self, output: dict[str, Any]) -> None:
        self.tensor_names = tuple(k for k, v in output.items() if isinstance(v, Tensor))
        other_names = tuple(k for k in output if k not in self.tensor_names)
        #: ``output -> tuple of its tensors`` / ``of its other values`` (one C call each)
        self.tensors = _tuple_getter(self.tensor_names)
        self.others = _tuple_getter(other_names) if other_names else None
        self.plans: BoundedCache[Any, FastPlan] = BoundedCache(8)

    def facts(self, output: dict[str, Any]) -> Any:
        """What the verdicts on ``output`` depend on (the fast step reads it inline)."""
        facts = tuple(map(TENSOR_FACTS, self.tensors(output)))
        if self.others is not None:
            return facts, tuple(map(type, self.others(output)))
        return facts


def remember(
    cache: BoundedCache[tuple[str, ...], KeySet],
    output: Any,
    parsed: ParsedOutput,
    plan: StepPlan,
    *,
    weighted: bool,
    routed: bool,
    losses: Tensor,
    verdicts: int,
) -> None:
    """Keep this full step's decision for later steps with the same keys and facts, if its
    output qualifies (a flat ``dict`` of terms, tensor metrics and pass-through outputs)."""
    if type(output) is not dict or plan.number_metrics or plan.weights.has_schedules:
        return
    if set(output) != {*parsed.terms, *parsed.metrics, *parsed.outputs}:
        return  # flattened, renamed or dropped entries: the full path handles them
    if any(output[name] is not value for name, value in parsed.terms.items()):
        return
    keys, fresh = tuple(output), KeySet(output)
    keyset = cache.get(keys)
    if keyset is None or keyset.tensor_names != fresh.tensor_names:
        if not fresh.tensor_names:
            return
        keyset = fresh  # (a value became, or stopped being, a tensor: new getters)
        cache.put(keys, keyset)
    terms = plan.terms
    all_ones = plan.weights.all_ones and not weighted
    fast = FastPlan(
        plan,
        terms=_getter(terms),
        metrics=_getter(plan.tensor_metrics) if plan.tensor_metrics else None,
        outputs=tuple(parsed.outputs),
        single=len(terms) == 1 and all_ones and not routed,
        chained=2 <= len(terms) <= 3 and all_ones and not routed,
        verdicts=verdicts,
        weights=None
        if plan.weights.all_ones
        else plan.weights.vector(0, losses.device, losses.dtype),
    )
    fast.record = _record_mode(fast)
    keyset.plans.put(keyset.facts(output), fast)


def _record_mode(fast: FastPlan) -> str:
    """See ``FastPlan.record``."""
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


def _tuple_getter(names: tuple[str, ...]) -> Any:
    """``mapping -> a tuple of its values at names`` in one C call: a single name is read
    twice (facts are compared, so a repeated value only repeats a fact)."""
    return itemgetter(*names) if len(names) > 1 else itemgetter(names[0], names[0])


__all__ = ["TENSOR_FACTS", "FastPlan", "KeySet", "remember"]
