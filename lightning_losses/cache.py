"""A bounded least-recently-used cache for everything keyed by a key set."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A least-recently-used mapping of bounded size.

    Plans are keyed by key sets, and a model with many optional tasks can produce a new key set
    at any step: an unbounded cache would grow for the whole run.
    """

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()

    def discard_if(self, predicate: Callable[[K], bool]) -> None:
        """Forget every entry whose key satisfies ``predicate``."""
        for key in [k for k in self._items if predicate(k)]:
            del self._items[key]
