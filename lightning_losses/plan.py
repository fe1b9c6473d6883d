"""Everything about a step that depends only on its key set, computed once per key set.

A model's key set changes rarely (optional heads come and go), so a :class:`StepPlan` caches the
logged names, the weight plan and the device index tensors; the per-step path is then a handful of
tensor ops over one stacked vector whose layout the plan fixes:

    [term_1 .. term_K, (total), tensor metrics .., number metrics .., weights not constantly 1 ..]

The total is left out when every weight is a constant (``derived_total``): its window sum is then
exactly ``sum_k w_k * S_k`` of the terms' sums ``S_k``, derived when the window is written, and the
common step (terms only) needs no concatenation at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from lightning_losses.terms import TOTAL
from lightning_losses.tracking import KeyRegistry, accumulator_dtype
from lightning_losses.weights import WeightPlan

WEIGHT_PREFIX = "weight"


@dataclass
class StepPlan:
    stage: str
    terms: tuple[str, ...]
    tensor_metrics: tuple[str, ...]
    number_metrics: tuple[str, ...]
    weights: WeightPlan
    #: Positions (into ``terms``) of the weights that are logged as ``weight/<term>``.
    logged_weights: tuple[int, ...]
    #: Whether the total is derived from the terms' sums at write time (constant weights).
    derived_total: bool
    #: Every name this step counts towards (its presence); the total included.
    logged_names: tuple[str, ...] = field(init=False)
    #: The names whose values travel in the step's device vector, in its order.
    value_names: tuple[str, ...] = field(init=False)
    total_name: str = field(init=False)
    #: ``slots`` of the loss terms alone (a view), for non-finite tracking.
    term_slots: Tensor | None = field(default=None, init=False)
    _slots: Tensor | None = field(default=None, init=False)
    _buffer: Tensor | None = field(default=None, init=False)
    _weight_index: Tensor | None = field(default=None, init=False)
    _version: int = field(default=-1, init=False)

    def __post_init__(self) -> None:
        stage = self.stage
        self.total_name = f"{stage}/{TOTAL}"
        terms = [f"{stage}/{t}" for t in self.terms]
        total = [self.total_name] if self.terms else []
        rest = [f"{stage}/{m}" for m in self.tensor_metrics + self.number_metrics]
        rest += [f"{WEIGHT_PREFIX}/{self.terms[i]}" for i in self.logged_weights]
        self.logged_names = tuple(terms + total + rest)
        self.kinds = tuple(
            ["term"] * len(terms)
            + ["total"] * len(total)
            + ["metric"] * (len(self.tensor_metrics) + len(self.number_metrics))
            + ["weight"] * len(self.logged_weights)
        )
        self.value_names = tuple(terms + ([] if self.derived_total else total) + rest)
        self.logs_every_weight = self.logged_weights == tuple(range(len(self.terms)))
        #: The step's device vector is the stacked terms themselves: no concatenation needed.
        self.terms_only = self.value_names == tuple(terms)

    def slots(self, registry: KeyRegistry, device: torch.device) -> Tensor:
        """Registry slots of ``value_names``, as a device tensor, refreshed when slots move."""
        if self._slots is None or self._version != registry.version or self._slots.device != device:
            registry.slots(self.logged_names, self.kinds)  # the derived total gets a slot too
            self._version = registry.version
            self._slots = torch.tensor(
                registry.slots(self.value_names), dtype=torch.long, device=device
            )
            self.term_slots = self._slots[: len(self.terms)]
        return self._slots

    def buffer(self, device: torch.device) -> Tensor:
        """A reusable buffer for one step's values, in the accumulators' dtype.

        Reuse is safe: the accumulator's ``index_add_`` that reads it is queued on the same
        stream before the next step's write into it.
        """
        if self._buffer is None or self._buffer.device != device:
            dtype = accumulator_dtype(device)
            self._buffer = torch.empty(len(self.value_names), dtype=dtype, device=device)
        return self._buffer

    def weight_index(self, device: torch.device) -> Tensor:
        if self._weight_index is None or self._weight_index.device != device:
            self._weight_index = torch.tensor(self.logged_weights, dtype=torch.long, device=device)
        return self._weight_index
