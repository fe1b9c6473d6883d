"""The one bounded cache type, for everything keyed by a key set."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(dict[K, V], Generic[K, V]):
    """A mapping of bounded size that forgets its oldest entry first.

    Plans are keyed by key sets, and a model with many optional tasks can produce a new key set
    at any step: an unbounded cache would grow for the whole run. A plain ``dict`` underneath, so
    a hit on the per-step path is one C-level ``get``; eviction is by insertion order (a key set
    evicted while still in use is simply planned again).
    """

    def __init__(self, capacity: int = 256) -> None:
        super().__init__()
        self.capacity = capacity

    def put(self, key: K, value: V) -> None:
        self[key] = value
        if len(self) > self.capacity:
            del self[next(iter(self))]

    def discard_if(self, predicate: Callable[[K], bool]) -> None:
        """Forget every entry whose key satisfies ``predicate``."""
        for key in [k for k in self if predicate(k)]:
            del self[key]
