"""On-device running means of logged values, and their exact cross-rank reduction.

Per step, a batch's values are one stacked vector added into a ``[slots, 2]`` tensor of
``(sum, count)`` with a single ``index_add_``: no ``.item()``, no Python per key. Converting to
Python numbers happens once per *write* (every ``log_every_n_steps`` steps, at epoch end), and
under DDP that write is one ``all_gather`` of a packed payload, whatever the number of keys.

How ranks agree on which slot holds which name: see ``registry.py``. Each write's payload is
``[number of pending keys, (sum, count, first non-finite step) per agreed slot]``, the same
length on every rank; in the steady state the write is that one collective.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lightning_losses.devices import device_tensor
from lightning_losses.distributed import collectives
from lightning_losses.logging.registry import KeyRegistry


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 keeps 10^5+ accumulated steps exact to ~1e-12; MPS has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


@dataclass
class Reduced:
    """A window's or an epoch's means, over steps and ranks, as Python numbers."""

    means: dict[str, float] = field(default_factory=dict)
    #: For each name that went non-finite: (first step it did, the rank where it did).
    nonfinite: dict[str, tuple[int, int]] = field(default_factory=dict)


_SUMS, _DRAINED, _FIRST = 0, 1, 2
#: Encodes "first non-finite step" so that 0 means "none" and max() finds the earliest step.
_LATEST = 2.0**52


class MeanAccumulator:
    """Running weighted sums per registry slot on the device; their weights (counts) on the host.

    Which keys a step had, and its weight (1 step, or a batch size), are host facts, so counts cost
    no device work: they are kept per key set and expanded to slots only when a mean is computed.
    The device holds one ``[3, capacity]`` tensor: weighted sums, the sums already drained into
    another accumulator, and the first step at which a slot received a non-finite value.
    """

    def __init__(self, registry: KeyRegistry) -> None:
        self.registry = registry
        self.data: Tensor | None = None
        self.counts: dict[tuple[str, ...], float] = {}
        self._drained_counts: dict[tuple[str, ...], float] = {}
        registry.attach(self)

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self.registry.attach(self)

    def _ensure(self, device: torch.device) -> Tensor:
        needed = len(self.registry)
        if self.data is not None and self.data.shape[1] >= needed:
            if self.data.device != device:  # restored from a checkpoint before a device move
                with torch.inference_mode(False):
                    self._set(self.data.to(device))
            return self.data
        capacity = max(16, 2 * needed)
        # Never an inference tensor: slots can move during an evaluation run (inference mode),
        # and the training window is updated in place afterwards.
        with torch.inference_mode(False):
            data = torch.zeros(3, capacity, dtype=accumulator_dtype(device), device=device)
            if self.data is not None:
                data[:, : self.data.shape[1]] = self.data
            self._set(data)
        return data

    def _set(self, data: Tensor) -> None:
        # Row views kept as attributes: selecting a row is itself a dispatched op per step. The
        # callers make them outside inference mode: a view made inside it cannot be updated in
        # place outside it, and slots can move during an evaluation run.
        self.data, self._sums, self._first = data, data[_SUMS], data[_FIRST]

    def state(self) -> dict[str, object]:
        """Sums and counts since the last reset, as plain data (names, not slots) for a
        checkpoint: a partly filled window or epoch resumes where it stopped."""
        registry = self.registry
        data = self.data.cpu().clone() if self.data is not None else None
        return {
            "names": list(registry.names),
            "data": data[:, : len(registry)] if data is not None else None,
            "counts": [[list(k), w] for k, w in self.counts.items()],
            "drained": [[list(k), w] for k, w in self._drained_counts.items()],
        }

    def load_state(self, state: Mapping[str, object], device: torch.device) -> None:
        """Add a :meth:`state` (names already in the registry) to this empty accumulator."""
        self.reset()
        data = state["data"]
        if isinstance(data, Tensor):
            # an accumulator that never grew to names registered later saves fewer columns
            names = list(state["names"])[: data.shape[1]]  # type: ignore[call-overload]
            slots = self.registry.slots(names)
            target = self._ensure(device)
            index = torch.tensor(slots, dtype=torch.long, device=target.device)
            target[:, index] = data.to(target.device, target.dtype)
        self.counts = {tuple(k): float(w) for k, w in state["counts"]}  # type: ignore[attr-defined]
        drained: dict[tuple[str, ...], float] = {}
        for k, w in state["drained"]:  # type: ignore[attr-defined]
            for name in k:  # per name (a checkpoint of 0.3 or earlier kept key sets)
                drained[(name,)] = drained.get((name,), 0.0) + float(w)
        self._drained_counts = drained

    def update(
        self, names: tuple[str, ...], slots: Tensor, values: Tensor, weight: float = 1.0
    ) -> None:
        """Add ``values`` (1-D, one per name, on the device) with ``weight`` (a batch size)."""
        self._ensure(values.device)
        self._sums.index_add_(0, slots, values if weight == 1.0 else values * weight)
        self.counts[names] = self.counts.get(names, 0.0) + weight

    def add_rows(self, names: tuple[str, ...], slots: Tensor, rows: Tensor) -> None:
        """Add staged steps, one row each in ``names``' layout, at once."""
        self._ensure(rows.device)
        self._sums.index_add_(0, slots, rows.sum(0))
        self.counts[names] = self.counts.get(names, 0.0) + rows.shape[0]

    def note_nonfinite_rows(self, slots: Tensor, rows: Tensor, steps: list[int]) -> None:
        """``note_nonfinite`` for several staged steps: ``rows[i]`` was recorded at
        ``steps[i]``; the encoded entries of all rows are reduced with one ``amax``."""
        self._ensure(rows.device)
        encoded = device_tensor([_LATEST - step for step in steps], rows.dtype, rows.device)
        candidate = torch.where(torch.isfinite(rows), 0.0, encoded[:, None]).amax(0)
        self._first.scatter_reduce_(0, slots, candidate, "amax")

    def note_nonfinite(self, slots: Tensor, values: Tensor, step: int) -> None:
        """Remember ``step`` for every slot whose value is not finite (if it is the first).

        Steps are stored as ``_LATEST - step`` so that the earliest step is the *largest* entry
        and "finite" can be 0: ``values * 0`` is 0 where finite and NaN where not, and one
        ``nan_to_num_`` turns that into the entry. Two cheap elementwise ops, where
        ``torch.isfinite`` alone dispatches four.
        """
        self._ensure(values.device)
        candidate = (values * 0).nan_to_num_(nan=_LATEST - step, posinf=0.0, neginf=0.0)
        self._first.scatter_reduce_(0, slots, candidate, "amax")

    def drain_into(self, other: MeanAccumulator) -> None:
        """Add to ``other`` what this accumulator gained since its last drain or reset.

        Lets a step-level window feed the epoch means without a second update per step, also
        when a window spans an epoch boundary.
        """
        if self.data is None:
            return
        data, target = self.data, other._ensure(self.data.device)
        width = data.shape[1]
        if target.shape[1] < width:
            target = other._grow_to(width)
        target[_SUMS, :width] += data[_SUMS] - data[_DRAINED]
        torch.maximum(target[_FIRST, :width], data[_FIRST], out=target[_FIRST, :width])
        data[_DRAINED] = data[_SUMS]
        # Per name, not per key set: what the target keeps stays bounded by the number of names
        # however many key sets pass through a long epoch (a one-name key set is a name's count).
        now = self._name_counts()
        drained = self._drained_counts
        for name, weight in now.items():
            fresh = weight - drained.get((name,), 0.0)
            if fresh:
                key = (name,)
                other.counts[key] = other.counts.get(key, 0.0) + fresh
        self._drained_counts = {(name,): weight for name, weight in now.items()}

    def _name_counts(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for names, weight in self.counts.items():
            for name in names:
                out[name] = out.get(name, 0.0) + weight
        return out

    def fold(self, limit: int = 64) -> None:
        """Replace the per-key-set counts by per-name counts once there are more than ``limit``
        key sets (a model whose keys churn), so that memory stays bounded by the names."""
        if len(self.counts) > limit:
            self.counts = {(name,): weight for name, weight in self._name_counts().items()}

    def _grow_to(self, width: int) -> Tensor:
        assert self.data is not None
        with torch.inference_mode(False):
            data = torch.zeros(3, width, dtype=self.data.dtype, device=self.data.device)
            data[:, : self.data.shape[1]] = self.data
            self._set(data)
        return data

    def reset(self) -> None:
        if self.data is not None:
            self.data.zero_()
        self.counts.clear()
        self._drained_counts.clear()

    def move_slots(self, moved: list[int], size: int) -> None:
        """Registry slots were renumbered: old slot ``i`` is now ``moved[i]``."""
        if self.data is None:
            return
        old = self.data
        self.data = None
        data = self._ensure(old.device)
        kept = min(len(moved), old.shape[1])
        index = torch.tensor(moved[:kept], dtype=torch.long, device=old.device)
        data[:, index] = old[:, :kept]

    def _count_vector(self, size: int) -> list[float]:
        counts = [0.0] * size
        slot_of = self.registry.slot_of
        for names, weight in self.counts.items():
            for name in names:
                counts[slot_of[name]] += weight
        return counts

    def compute(
        self,
        device: torch.device,
        distributed: bool | None = None,
    ) -> Reduced:
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
        """``[pending keys, agreed slots' sums, their counts, their first non-finite steps]``"""
        registry = self.registry
        agreed = registry.agreed
        # A rank that added nothing still takes part, with zeros, on the device its backend needs.
        data = self._ensure(self.data.device if self.data is not None else device)
        header_and_counts = torch.tensor(
            [float(len(registry) - agreed), *self._count_vector(len(registry))[:agreed]],
            dtype=data.dtype,
        ).to(data.device, non_blocking=True)
        return torch.cat(
            (
                header_and_counts[:1],
                data[_SUMS, :agreed],
                header_and_counts[1:],
                data[_FIRST, :agreed],
            )
        )

    def _finish(self, gathered: Tensor) -> Reduced:
        """Combine every rank's payload row (on the host): sums add, first steps take the min."""
        # (the min step is the max encoded entry, see note_nonfinite)
        agreed = self.registry.agreed
        sums = gathered[:, 1 : 1 + agreed].sum(0)
        counts = gathered[:, 1 + agreed : 1 + 2 * agreed].sum(0)
        latest, first_rank = gathered[:, 1 + 2 * agreed :].max(0)
        reduced = Reduced()
        names = self.registry.names
        sum_list = sums.tolist()
        for slot, (total, count, encoded, rank) in enumerate(
            zip(sum_list, counts.tolist(), latest.tolist(), first_rank.tolist())
        ):
            if count > 0:
                reduced.means[names[slot]] = total / count
            if encoded > 0:
                reduced.nonfinite[names[slot]] = (int(_LATEST - encoded), int(rank))
        return reduced
