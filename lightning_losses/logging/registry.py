"""Which slot of the packed accumulators holds which logged name, agreed by every rank.

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

import weakref
from collections.abc import Iterable, Mapping
from typing import Any


class KeyRegistry:
    """Slots of every logged name; the slot order is shared by all accumulators of a module."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.slot_of: dict[str, int] = {}
        #: What each name holds ("term", "total", "metric", "weight"): agreed along with the
        #: slots, since a rank may have to derive a total from terms it never saw itself.
        self.kind_of: dict[str, str] = {}
        self.agreed = 0
        #: Bumped whenever existing slots move, so cached index tensors know to refresh.
        self.version = 0
        self._accumulators: list[weakref.ref[Any]] = []  # MeanAccumulators

    def __len__(self) -> int:
        return len(self.names)

    def slots(self, names: Iterable[str], kinds: Iterable[str] | None = None) -> list[int]:
        """The slot of each name, registering new names (of the given kinds) as pending."""
        out = []
        kinds = iter(kinds) if kinds is not None else None
        for name in names:
            kind = next(kinds) if kinds is not None else "value"
            slot = self.slot_of.get(name)
            if slot is not None and kinds is not None and self.kind_of[name] != kind:
                # a name evaluation guessed before training, classified by training since:
                # its kind (what W&B summaries follow) is the final classification
                self.kind_of[name] = kind
            if slot is None:
                slot = len(self.names)
                self.names.append(name)
                self.slot_of[name] = slot
                self.kind_of[name] = kind
            out.append(slot)
        return out

    @property
    def pending(self) -> list[tuple[str, str]]:
        """This rank's names (with their kinds) that other ranks may not know yet."""
        return [(name, self.kind_of[name]) for name in self.names[self.agreed :]]

    def attach(self, accumulator: Any) -> None:
        self._accumulators.append(weakref.ref(accumulator))

    def __getstate__(self) -> dict[str, object]:
        # Weak references do not pickle (ddp_spawn, deepcopy); accumulators re-attach on load.
        return {k: v for k, v in self.__dict__.items() if k != "_accumulators"}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._accumulators = []

    def state(self) -> dict[str, object]:
        """Every name with its kind, and how many are agreed, as plain data for a checkpoint."""
        return {
            "names": list(self.names),
            "kinds": [self.kind_of[n] for n in self.names],
            "agreed": self.agreed,
        }

    def load_state(self, state: Mapping[str, object], pending: bool = True) -> None:
        """Restore a :meth:`state` before this registry's own names.

        ``pending=False`` restores the agreed prefix only: under DDP every rank loads rank 0's
        checkpoint, and the prefix is what all ranks held identically when it was saved.
        """
        agreed = int(state["agreed"])  # type: ignore[call-overload]
        count = len(state["names"]) if pending else agreed  # type: ignore[arg-type]
        restored = list(state["names"])[:count]  # type: ignore[call-overload]
        kinds = dict(zip(restored, list(state["kinds"])[:count]))  # type: ignore[call-overload]
        names = restored + [n for n in self.names if n not in kinds]
        self.kind_of = {**self.kind_of, **kinds}
        moved = {name: i for i, name in enumerate(names)}
        previous = self.names
        self.names, self.slot_of, self.agreed = names, moved, agreed
        self.version += 1
        for ref in self._accumulators:
            accumulator = ref()
            if accumulator is not None:
                accumulator.move_slots([moved[n] for n in previous], len(names))

    def agree_locally(self) -> None:
        """Single process: every slot is agreed as it is."""
        self.agreed = len(self.names)

    def adopt(self, pending_by_rank: list[list[tuple[str, str]]]) -> None:
        """Append every rank's pending names to the agreed prefix and move local values there."""
        names = self.names[: self.agreed]
        seen = set(names)
        for rank_names in pending_by_rank:
            for name, kind in rank_names:
                self.kind_of.setdefault(name, kind)
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
