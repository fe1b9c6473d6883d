"""Names and glob patterns mapped to values: the one matcher behind ``loss_keys``,
``loss_weights`` and the names a configuration calls loss terms.

An exact name wins, then the first matching pattern in the order given. Which entries matched
is remembered, for the "matched no loss term during the first epoch" warning.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Generic, TypeVar

V = TypeVar("V")


def is_pattern(name: str) -> bool:
    """Whether ``name`` is a glob pattern (``"aux/*"``) rather than a literal name."""
    return any(c in name for c in "*?[")


class NamePatterns(Generic[V]):
    """An ordered table of names and glob patterns, each with a value."""

    def __init__(self, entries: Iterable[tuple[str, V]] = ()) -> None:
        self._exact: dict[str, V] = {}
        self._patterns: list[tuple[str, V]] = []
        self._matched: set[str] = set()
        self.extend(entries)

    def extend(self, entries: Iterable[tuple[str, V]]) -> None:
        for name, value in entries:
            if is_pattern(name):
                self._patterns.append((name, value))
            else:
                self._exact[name] = value

    def __bool__(self) -> bool:
        return bool(self._exact or self._patterns)

    def match(self, name: str, default: V) -> V:
        """The value of ``name``'s entry (and the entry counts as matched), else ``default``."""
        if name in self._exact:
            self._matched.add(name)
            return self._exact[name]
        for pattern, value in self._patterns:
            if fnmatch.fnmatchcase(name, pattern):
                self._matched.add(pattern)
                return value
        return default

    def entries(self) -> list[str]:
        return [*self._exact, *(p for p, _ in self._patterns)]

    def unmatched(self) -> list[str]:
        """The names and patterns that matched nothing so far, sorted."""
        return sorted(set(self.entries()) - self._matched)
