"""``loss_weights`` (floats, glob patterns, schedules) -> one weight vector per key set.

The key set of a model's losses rarely changes, so everything that depends only on it (which
entry weighs each term, the constant part of the vector on the device) is computed once per key
set and cached in a :class:`WeightPlan`; a step with constant weights reuses one device tensor.
"""

from __future__ import annotations

import fnmatch
import math
import numbers
from collections.abc import Callable, Collection, Iterable, Mapping

import torch
from torch import Tensor

from lightning_losses import _warnings
from lightning_losses.cache import BoundedCache
from lightning_losses.devices import device_tensor
from lightning_losses.terms.patterns import NamePatterns, closest, is_pattern
from lightning_losses.terms.values import describe

#: A term's weight: a constant, or a schedule ``global_step -> weight``.
WeightValue = float | Callable[[int], float]


class WeightPlan:
    """The weights of one ordered key set: constants cached on the device, schedules per step."""

    def __init__(self, names: tuple[str, ...], values: list[WeightValue]) -> None:
        self.names = names
        self._schedules = [(i, v) for i, v in enumerate(values) if callable(v)]
        self._constants = [0.0 if callable(v) else float(v) for v in values]
        #: Positions whose weight is not the constant 1: these are logged as ``weight/<term>``.
        self.logged = tuple(i for i, v in enumerate(values) if callable(v) or float(v) != 1.0)
        self.all_ones = not self.logged
        self.has_schedules = bool(self._schedules)
        self._device_constants: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def vector(self, step: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The weight of each term at ``step``, as a 1-D tensor on ``device``."""
        if not self._schedules:
            key = (device, dtype)
            cached = self._device_constants.get(key)
            if cached is None:
                cached = device_tensor(self._constants, dtype, device)
                self._device_constants[key] = cached
            return cached
        values = list(self._constants)
        for i, schedule in self._schedules:
            values[i] = _check_weight(self.names[i], schedule(step), f"loss_weights[...]({step})")
        host = torch.tensor(values, dtype=dtype)
        if device.type == "cuda":
            # Pinned memory lets the copy run asynchronously: a pageable copy would make the
            # host wait for the device on every step.
            host = host.pin_memory()
        return host.to(device, non_blocking=True)


class GivenWeights(dict[str, "WeightValue"]):
    """``module.loss_weights``: the mapping as given, read-only in place. Changing it in place
    would change nothing the module uses (its weights are resolved per key set), so each
    in-place change says how to change the weights instead."""

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise TypeError(
            "module.loss_weights cannot be changed in place; assign a new mapping, which takes "
            "effect from the next step: module.loss_weights = {**module.loss_weights, "
            "'depth': 0.5}"
        )

    __setitem__ = __delitem__ = __ior__ = _refuse  # type: ignore[assignment]
    update = pop = popitem = clear = setdefault = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple[type, tuple[dict[str, WeightValue]]]:
        return GivenWeights, (dict(self),)  # (copies and pickles rebuild it whole)


class LossWeights:
    """Resolves each term's weight: an exact name wins, then the first matching glob pattern in
    the order given, then 1."""

    def __init__(self, loss_weights: Mapping[str, WeightValue] | None = None) -> None:
        if loss_weights is None:
            loss_weights = {}
        if not isinstance(loss_weights, Mapping):
            raise TypeError(
                f"loss_weights is {describe(loss_weights)}; expected a mapping from names or "
                "glob patterns to floats or callables step -> float"
            )
        #: The mapping as given (names or patterns -> constant or schedule).
        self.given: dict[str, WeightValue] = GivenWeights(loss_weights)
        entries: list[tuple[str, WeightValue]] = []
        for name, value in loss_weights.items():
            if not isinstance(name, str) or not name:
                raise TypeError(
                    f"loss_weights key {name!r} is {describe(name)}; expected a non-empty name "
                    "or glob pattern"
                )
            if not callable(value):
                value = _check_weight(name, value, "loss_weights")
            entries.append((name, value))
        self._table: NamePatterns[WeightValue] = NamePatterns(entries)
        self._resolved: BoundedCache[str, WeightValue] = BoundedCache(4096)
        self._plans: BoundedCache[tuple[str, ...], WeightPlan] = BoundedCache()
        #: Entries already named with a suggestion (each is said once).
        self._suggested: set[str] = set()

    def resolve(self, name: str) -> WeightValue:
        value = self._resolved.get(name)
        if value is None:
            value = self._table.match(name, 1.0)
            self._resolved.put(name, value)
        return value

    def plan(self, names: tuple[str, ...], returned: Collection[str] = ()) -> WeightPlan:
        """The weights of the key set ``names`` (the step's loss terms), built once per key set.
        ``returned``: the step's other returned names (metrics), which no entry is a typo of."""
        plan = self._plans.get(names)
        if plan is None:
            plan = WeightPlan(names, [self.resolve(n) for n in names])
            self._plans.put(names, plan)
            self.check_spelling(names, returned)
        return plan

    def unmatched(self) -> list[str]:
        """The names and patterns of ``loss_weights`` that matched no loss term."""
        return self._table.unmatched()

    def suggestion(self, entry: str, names: Iterable[str]) -> str | None:
        """The one of ``names`` (loss terms) that the entry ``entry`` most likely meant: a close
        name that no entry of its own weighs (``{"seg": 1, "reg": 2}`` with only ``seg``
        returned is an optional ``reg``, not a typo of ``seg``)."""
        table = self._table
        return closest(entry, (n for n in names if not table.has_name(n)))

    def check_spelling(self, names: tuple[str, ...], returned: Collection[str] = ()) -> None:
        """A warning, at the first key set where it shows, for each entry that has matched no
        term yet and is close to one of ``names``: ``"regg"`` beside ``reg`` would otherwise
        leave ``reg`` at weight 1 until the end of the first epoch says so. Runs once per key
        set (from :meth:`plan`), never per step."""
        if not names or not self._table:
            return
        table = self._table
        for entry in table.unmatched():
            if entry in self._suggested or entry in returned:
                continue  # said already; or returned under its own name, as a metric
            if is_pattern(entry):
                claimed = [n for n in names if fnmatch.fnmatchcase(n, entry)]
                if claimed:
                    # it matches terms of this step, which other entries decide: an earlier
                    # pattern makes it dead there (own names only make exceptions to it)
                    earlier = table.deciding(claimed[0])
                    if earlier is not None and is_pattern(earlier):
                        self._suggested.add(entry)
                        _warnings.warn(shadowed_message(entry, claimed[0], earlier), "__init__")
                    continue
            meant = self.suggestion(entry, names)
            if meant is None:
                continue
            self._suggested.add(entry)
            _warnings.warn(spelling_message(entry, meant, names, self.resolve(meant)), "__init__")


def spelling_message(
    entry: str, meant: str, names: tuple[str, ...], weight: WeightValue | None = None
) -> str:
    """What a ``loss_weights`` entry close to a term of a step's key set is told."""
    kind = "pattern" if is_pattern(entry) else "entry"
    guess = f"a pattern for {meant!r}" if is_pattern(entry) else repr(meant)
    found = ", ".join(map(repr, names))
    unweighted = f" Until it is renamed, {meant!r} weighs 1." if weight == 1.0 else ""
    return (
        f"loss_weights {kind} {entry!r} matches no loss term of this step (terms: {found}); "
        f"did you mean {guess}?{unweighted} If {entry!r} names a term that only later steps "
        "return, ignore this"
    )


def shadowed_message(entry: str, name: str, earlier: str) -> str:
    """What a ``loss_weights`` pattern that an earlier pattern hides is told."""
    return (
        f"loss_weights pattern {entry!r} matches the loss term {name!r}, but the earlier pattern "
        f"{earlier!r} decides its weight (the first matching pattern wins), so {entry!r} weighs "
        "nothing; list the more specific pattern first"
    )


def _check_weight(name: str, value: object, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{source} for {name!r} is {describe(value)}; expected a finite float (or, in "
            "loss_weights, a callable step -> float)"
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{source} for {name!r} is {value}; expected a finite float")
    return value
