"""Everything about a step that depends only on its key set, computed once per key set.

A model's key set changes rarely (optional heads come and go), so a :class:`StepPlan` caches the
logged names, the weight plan and the device index tensors; the per-step path is then a handful of
tensor ops over one stacked vector whose layout the plan fixes:

    [term_1 .. term_K, total, tensor metrics .., number metrics .., weights not constantly 1 ..]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from lightning_losses.terms import TOTAL
from lightning_losses.tracking import KeyRegistry
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
    logged_names: tuple[str, ...] = field(init=False)
    _slots: Tensor | None = field(default=None, init=False)
    _weight_index: Tensor | None = field(default=None, init=False)
    _version: int = field(default=-1, init=False)

    def __post_init__(self) -> None:
        stage = self.stage
        names = [f"{stage}/{t}" for t in self.terms]
        if self.terms:
            names.append(f"{stage}/{TOTAL}")
        names += [f"{stage}/{m}" for m in self.tensor_metrics + self.number_metrics]
        names += [f"{WEIGHT_PREFIX}/{self.terms[i]}" for i in self.logged_weights]
        self.logged_names = tuple(names)

    def slots(self, registry: KeyRegistry, device: torch.device) -> Tensor:
        """Registry slots of ``logged_names``, as a device tensor, refreshed when slots move."""
        if self._slots is None or self._version != registry.version or self._slots.device != device:
            registry_slots = registry.slots(self.logged_names)
            self._version = registry.version
            self._slots = torch.tensor(registry_slots, dtype=torch.long, device=device)
        return self._slots

    def weight_index(self, device: torch.device) -> Tensor:
        if self._weight_index is None or self._weight_index.device != device:
            self._weight_index = torch.tensor(self.logged_weights, dtype=torch.long, device=device)
        return self._weight_index
