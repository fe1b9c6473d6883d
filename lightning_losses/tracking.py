"""On-device running means of logged values, and their exact cross-rank reduction.

Per step, a batch's values are one stacked vector added into a ``[slots, 2]`` tensor of
``(sum, count)`` with a single ``index_add_``: no ``.item()``, no Python per key. Converting to
Python numbers happens once per *write* (every ``log_every_n_steps`` steps, at epoch end), and
under DDP that write is one ``all_gather`` of a packed payload, whatever the number of keys.

How ranks agree on slots without a per-step object collective
----------------------------------------------------------------
Packing values into one tensor needs every rank to put a key in the same slot, but keys can appear
late, on some ranks only, or vanish. :class:`KeyRegistry` keeps the slots in two parts:

* ``agreed``: a prefix of slots that every rank holds in the same order. It only changes inside a
  write, which all ranks execute together, so it is identical everywhere at all times.
* ``pending``: keys this rank has seen since the last write, appended after the prefix in local
  order. Their values accumulate there as usual; no communication happens when a key is born.

Each write's payload is ``[number of pending keys, (sum, count, first non-finite step) per agreed
slot]``, the same length on every rank. If the gathered pending counts are all zero (the steady
state) the write is done: one collective. Otherwise every rank gathers the pending names (an
object collective, only in this rare case), appends the union to the agreed prefix in a
deterministic order (by rank, then by each rank's order of discovery), moves its local values to the
new slots and gathers again. A key missing on some ranks is simply a zero count there, so the
pooled mean is over the (rank, step) pairs where it was present and nothing ever waits for a key.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lightning_losses import collectives


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 keeps 10^5+ accumulated steps exact to ~1e-12; MPS has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


class KeyRegistry:
    """Slots of every logged name; the slot order is shared by all accumulators of a module."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.slot_of: dict[str, int] = {}
        self.agreed = 0
        #: Bumped whenever existing slots move, so cached index tensors know to refresh.
        self.version = 0
        self._accumulators: list[weakref.ref[MeanAccumulator]] = []

    def __len__(self) -> int:
        return len(self.names)

    def slots(self, names: Iterable[str]) -> list[int]:
        """The slot of each name, registering new names as pending."""
        out = []
        for name in names:
            slot = self.slot_of.get(name)
            if slot is None:
                slot = len(self.names)
                self.names.append(name)
                self.slot_of[name] = slot
            out.append(slot)
        return out

    @property
    def pending(self) -> list[str]:
        return self.names[self.agreed :]

    def attach(self, accumulator: MeanAccumulator) -> None:
        self._accumulators.append(weakref.ref(accumulator))

    def agree_locally(self) -> None:
        """Single process: every slot is agreed as it is."""
        self.agreed = len(self.names)

    def adopt(self, pending_by_rank: list[list[str]]) -> None:
        """Append every rank's pending names to the agreed prefix and move local values there."""
        names = self.names[: self.agreed]
        seen = set(names)
        for rank_names in pending_by_rank:
            for name in rank_names:
                if name not in seen:
                    seen.add(name)
                    names.append(name)
        new_slot_of = {name: i for i, name in enumerate(names)}
        moved = [new_slot_of[name] for name in self.names]
        self.names, self.slot_of, self.agreed = names, new_slot_of, len(names)
        self.version += 1
        live = []
        for ref in self._accumulators:
            accumulator = ref()
            if accumulator is not None:
                accumulator.move_slots(moved, len(names))
                live.append(ref)
        self._accumulators = live


@dataclass
class Reduced:
    """A window's or an epoch's means, over steps and ranks, as Python numbers."""

    means: dict[str, float] = field(default_factory=dict)
    #: For each name that went non-finite: (first step it did, the rank where it did).
    nonfinite: dict[str, tuple[int, int]] = field(default_factory=dict)


class MeanAccumulator:
    """Running ``(sum, count)`` per registry slot, kept on the device of the values.

    ``track_nonfinite`` also keeps, per slot, the first step at which a non-finite value arrived,
    so that ``nonfinite="raise"`` can name the step without a host sync on every step.
    """

    def __init__(self, registry: KeyRegistry, track_nonfinite: bool = False) -> None:
        self.registry = registry
        self.track_nonfinite = track_nonfinite
        self.stats: Tensor | None = None  # [capacity, 2]: weighted sum, weight
        self.first_nonfinite: Tensor | None = None  # [capacity]: step, +inf if none
        registry.attach(self)

    def _ensure(self, device: torch.device) -> None:
        needed = len(self.registry)
        if self.stats is not None and self.stats.shape[0] >= needed:
            return
        capacity = max(16, 2 * needed)
        dtype = accumulator_dtype(device)
        stats = torch.zeros(capacity, 2, dtype=dtype, device=device)
        first = torch.full((capacity,), math.inf, dtype=dtype, device=device)
        if self.stats is not None:
            used = self.stats.shape[0]
            stats[:used] = self.stats
            first[:used] = self.first_nonfinite
        self.stats, self.first_nonfinite = stats, first

    def update(self, slots: Tensor, values: Tensor, weight: Tensor | float = 1.0) -> None:
        """Add ``values`` (1-D, one per slot in ``slots``) with the given weight (batch size)."""
        self._ensure(values.device)
        assert self.stats is not None
        values = values.to(self.stats.dtype)
        if isinstance(weight, Tensor):
            weight = weight.to(self.stats.dtype)
        weights = torch.ones_like(values) * weight
        self.stats.index_add_(0, slots, torch.stack((values * weights, weights), dim=1))

    def note_nonfinite(self, slots: Tensor, values: Tensor, step: int) -> None:
        """Remember ``step`` for every slot whose value is not finite (if it is the first)."""
        self._ensure(values.device)
        assert self.first_nonfinite is not None
        candidate = torch.where(torch.isfinite(values), math.inf, float(step)).to(
            self.first_nonfinite.dtype
        )
        self.first_nonfinite.scatter_reduce_(0, slots, candidate, "amin")

    def reset(self) -> None:
        if self.stats is not None:
            self.stats.zero_()
            assert self.first_nonfinite is not None
            self.first_nonfinite.fill_(math.inf)

    def move_slots(self, moved: list[int], size: int) -> None:
        """Registry slots were renumbered: old slot ``i`` is now ``moved[i]``."""
        if self.stats is None:
            return
        old_stats, old_first = self.stats, self.first_nonfinite
        assert old_first is not None
        self.stats = None
        self._ensure(old_stats.device)
        assert self.stats is not None and self.first_nonfinite is not None
        self.stats.zero_()
        self.first_nonfinite.fill_(math.inf)
        kept = min(len(moved), old_stats.shape[0])
        index = torch.tensor(moved[:kept], dtype=torch.long, device=old_stats.device)
        self.stats[index] = old_stats[:kept]
        self.first_nonfinite[index] = old_first[:kept]

    def compute(self, device: torch.device, distributed: bool | None = None) -> Reduced:
        """Means over everything added since the last reset, pooled over all ranks.

        Must be called on every rank together when ``distributed``: it is one gather in the
        steady state. ``device`` is where a rank that never added anything builds its payload.
        """
        if distributed is None:
            distributed = collectives.is_distributed()
        if not distributed:
            self.registry.agree_locally()
            return self._finish(self._payload(device)[None].cpu())
        for _ in range(2):
            gathered = collectives.gather_rows(self._payload(device)).cpu()
            if not gathered[:, 0].any():
                return self._finish(gathered)
            self.registry.adopt(collectives.gather_objects(self.registry.pending))
        raise AssertionError("ranks did not agree on logged keys after one merge")  # unreachable

    def _payload(self, device: torch.device) -> Tensor:
        registry = self.registry
        agreed = registry.agreed
        # A rank that added nothing still takes part, with zeros, on the device its backend needs.
        self._ensure(self.stats.device if self.stats is not None else device)
        assert self.stats is not None and self.first_nonfinite is not None
        header = torch.tensor(
            [float(len(registry.names) - agreed)], dtype=self.stats.dtype, device=device
        )
        return torch.cat((header, self.stats[:agreed].flatten(), self.first_nonfinite[:agreed]))

    def _finish(self, gathered: Tensor) -> Reduced:
        """Combine every rank's payload row (on the host): sums add, first steps take the min."""
        agreed = self.registry.agreed
        stats = gathered[:, 1 : 1 + 2 * agreed].reshape(len(gathered), agreed, 2)
        sums, counts = stats.sum(0).unbind(1)
        first = gathered[:, 1 + 2 * agreed :]
        first_step, first_rank = first.min(0)
        reduced = Reduced()
        names = self.registry.names
        for slot, (total, count, step, rank) in enumerate(
            zip(sums.tolist(), counts.tolist(), first_step.tolist(), first_rank.tolist())
        ):
            if count > 0:
                reduced.means[names[slot]] = total / count
            if step != math.inf:
                reduced.nonfinite[names[slot]] = (int(step), int(rank))
        return reduced
