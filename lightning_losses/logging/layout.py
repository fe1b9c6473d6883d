"""Everything about a step that depends only on its key set, computed once per key set.

A model's key set changes rarely (optional heads come and go), so a :class:`StepPlan` caches the
logged names and the device index tensors; the per-step path is then a handful of tensor ops over
one stacked vector whose layout the plan fixes:

    [term_1 .. term_K, total, tensor metrics .., number metrics .., weights not constantly 1 ..]

The total is always accumulated as its own value (never derived from the terms' sums at write
time): a derivation re-weights the steps of a window by whatever weights hold when it is written,
which is wrong after a resume with other ``loss_weights``, and under DDP it needs every rank to
know the kind of every name. The cost is one more element in a concatenation that happens anyway.

Training steps go one step further: a step's values are copied, in one to three ops, into the
next row of the plan's staging buffer (``rows``), and the rows are summed into the window's
accumulator only when the window is written, the buffer is full, or the epoch ends
(:meth:`LossLog.flush`).
What needs the values themselves (which first step went non-finite) is found at that flush, from
the rows and the step each row came from, so a non-writing step pays those copies alone.

When the only term is named ``loss`` (a bare scalar return, a HuggingFace output), the term *is*
the total: it is logged once, as the total, and not also as a term of the same name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from lightning_losses.devices import device_tensor
from lightning_losses.logging.accumulators import accumulator_dtype
from lightning_losses.logging.registry import KeyRegistry
from lightning_losses.terms.values import TOTAL
from lightning_losses.weighting.static import WeightPlan

WEIGHT_PREFIX = "weight"


@dataclass
class StepPlan:
    """The layout of one step's values and the names they are logged under.

    ``prefix`` is the stage (``train``, ``val``, ``test``) and ``suffix`` the dataloader part
    (``/dataloader_idx_1``) that every logged name of an evaluation step with several loaders
    carries, as Lightning's own ``self.log`` would add it.
    """

    stage: str
    terms: tuple[str, ...]
    tensor_metrics: tuple[str, ...]
    number_metrics: tuple[str, ...]
    weights: WeightPlan
    #: Positions (into ``terms``) of the weights that are logged as ``weight/<term>``.
    logged_weights: tuple[int, ...]
    suffix: str = ""
    #: Every name this step counts towards, in the order of the step's value vector.
    logged_names: tuple[str, ...] = field(init=False)
    kinds: tuple[str, ...] = field(init=False)
    total_name: str = field(init=False)
    #: The sole term is named ``loss``: the stacked terms are not logged apart from the total.
    sole_total: bool = field(init=False)
    #: Position of the total in the value vector (the terms' values come before it).
    total_position: int = field(init=False)
    _slots: Tensor | None = field(default=None, init=False)
    _buffer: Tensor | None = field(default=None, init=False)
    buffer_bar_views: tuple[Tensor, ...] = field(default=(), init=False)
    _weight_index: Tensor | None = field(default=None, init=False)
    _nonfinite_slots: Tensor | None = field(default=None, init=False)
    _nonfinite_values: Tensor | None = field(default=None, init=False)
    _version: int = field(default=-1, init=False)
    #: Staged training steps, one row each (see the module docstring); ``filled`` rows in use.
    rows: Tensor | None = field(default=None, init=False)
    row_views: list[Tensor] = field(default_factory=list, init=False)
    #: Each row without its weight columns (what a step stacks), and its weight columns.
    prefix_views: list[Tensor] = field(default_factory=list, init=False)
    weight_views: list[Tensor] = field(default_factory=list, init=False)
    head_views: list[Tensor] = field(default_factory=list, init=False)
    terms_views: list[Tensor] = field(default_factory=list, init=False)
    total_views: list[Tensor] = field(default_factory=list, init=False)
    metric_views: list[Tensor] = field(default_factory=list, init=False)
    #: The logged weights come from a ``weighting=`` (written per step), not constants.
    learned_weights: bool = field(default=False, init=False)
    #: Names shown in the progress bar, with their position in the step's values, set by the
    #: recorder for training plans (the bar reads them at a fit's first step).
    bar_columns: tuple[tuple[str, int], ...] = field(default=(), init=False)
    filled: int = field(default=0, init=False)
    #: The global step of each filled row (for the first non-finite step), when checked.
    row_steps: list[int] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        stage, suffix = self.stage, self.suffix
        self.total_name = f"{stage}/{TOTAL}{suffix}"
        self.sole_total = self.terms == (TOTAL,)
        terms = [] if self.sole_total else [f"{stage}/{t}{suffix}" for t in self.terms]
        total = [self.total_name] if self.terms else []
        metrics = [f"{stage}/{m}{suffix}" for m in self.tensor_metrics + self.number_metrics]
        weights = [f"{WEIGHT_PREFIX}/{self.terms[i]}" for i in self.logged_weights]
        self.logged_names = tuple(terms + total + metrics + weights)
        self.kinds = tuple(
            ["term"] * len(terms)
            + ["total"] * len(total)
            + ["metric"] * len(metrics)
            + ["weight"] * len(weights)
        )
        self.total_position = len(terms)
        self.logs_every_weight = self.logged_weights == tuple(range(len(self.terms)))
        #: The step's vector is ``[terms.., total]``: one concatenation of two tensors.
        self.terms_and_total = len(self.logged_names) == len(terms) + len(total)

    def slots(self, registry: KeyRegistry, device: torch.device) -> Tensor:
        """Registry slots of ``logged_names``, as a device tensor, refreshed when slots move."""
        if self._slots is None or self._version != registry.version or self._slots.device != device:
            slots = registry.slots(self.logged_names, self.kinds)
            self._version = registry.version
            self._slots = device_tensor(slots, torch.long, device)
        return self._slots

    @property
    def nonfinite_slots(self) -> Tensor:
        """Slots of the values checked for non-finite losses: the terms, or the sole total."""
        assert self._slots is not None
        if self._nonfinite_slots is None or self._nonfinite_slots._base is not self._slots:
            self._nonfinite_slots = self._slots[: max(self.total_position, 1)]
        return self._nonfinite_slots

    def nonfinite_values(self, values: Tensor) -> Tensor:
        """The checked part of ``values`` (normally this plan's buffer: its view is cached)."""
        if values is self._buffer:
            if self._nonfinite_values is None:
                self._nonfinite_values = values[: max(self.total_position, 1)]
            return self._nonfinite_values
        return values[: max(self.total_position, 1)]

    def buffer(self, device: torch.device) -> Tensor:
        """A reusable buffer for one step's values, in the accumulators' dtype.

        Reuse is safe: the accumulator's ``index_add_`` that reads it is queued on the same
        stream before the next step's write into it. Made outside inference mode so that a plan
        first built during ``trainer.validate()`` still works in training.
        """
        if self._buffer is None or self._buffer.device != device:
            with torch.inference_mode(False):
                self._buffer = torch.empty(
                    len(self.logged_names), dtype=accumulator_dtype(device), device=device
                )
                self._nonfinite_values = None
                self.buffer_bar_views = tuple(self._buffer[c] for _, c in self.bar_columns)
        return self._buffer

    def staging(self, device: torch.device, capacity: int) -> list[Tensor]:
        """The row views of the staging buffer on ``device`` (made outside inference mode:
        a plan first built during ``validate()`` is used by training afterwards)."""
        if self.rows is None or self.rows.device != device:
            with torch.inference_mode(False):
                self.rows = torch.empty(
                    capacity,
                    len(self.logged_names),
                    dtype=accumulator_dtype(device),
                    device=device,
                )
                self.row_views = list(self.rows.unbind())
                prefix = len(self.logged_names) - len(self.logged_weights)
                self.prefix_views = [row[:prefix] for row in self.row_views]
                # the parts a step copies its values into (see session/fast_plans.FastPlan.record)
                k = self.total_position
                self.head_views = [row[: k + 1] for row in self.row_views]
                self.terms_views = [row[:k] for row in self.row_views]
                self.total_views = [row[k] for row in self.row_views]
                self.metric_views = [row[k + 1 : prefix] for row in self.row_views]
                self.weight_views = [row[prefix:] for row in self.row_views]
                constant = not (self.learned_weights or self.weights.has_schedules)
                if self.logged_weights and constant:  # constants: written once, here
                    constants = self.weights.vector(0, device, self.rows.dtype)
                    logged = constants.index_select(0, self.weight_index(device))
                    self.rows[:, prefix:] = logged
            self.filled = 0
            self.row_steps.clear()
        return self.row_views

    def weight_index(self, device: torch.device) -> Tensor:
        if self._weight_index is None or self._weight_index.device != device:
            self._weight_index = device_tensor(list(self.logged_weights), torch.long, device)
        return self._weight_index
