"""Names and glob patterns mapped to values: the one matcher behind ``loss_keys``,
``loss_weights`` and the names a configuration calls loss terms.

An exact name wins, then the first matching pattern in the order given. Which entries matched
is remembered, for the "matched no loss term during the first epoch" warning; :func:`closest`
finds the name a misspelt entry most likely meant, for its "did you mean" suggestion.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable
from typing import Generic, TypeVar

V = TypeVar("V")


def is_pattern(name: str) -> bool:
    """Whether ``name`` is a glob pattern (``"aux/*"``) rather than a literal name."""
    return any(c in name for c in "*?[")


#: A glob's wildcards: ``*``, ``?`` and a ``[...]`` set.
_WILDCARDS = re.compile(r"\*|\?|\[[^\]]*\]?")


def closest(entry: str, names: Iterable[str]) -> str | None:
    """The one of ``names`` that ``entry`` (a name or glob pattern that matched none of them)
    most likely meant, or ``None`` when none is close.

    ``difflib.get_close_matches`` is what Python's own "did you mean" uses (``argparse``).
    A pattern is compared by its literal part at the end that has no wildcard (``"auz/*"`` by
    ``"auz/"`` against each name's start of that length, ``"*_los"`` by its end), so that a typo
    in the fixed part of a pattern is found as in a name.
    """
    candidates = sorted({n for n in names if n != entry})
    if not candidates:
        return None
    if not is_pattern(entry):
        found = difflib.get_close_matches(entry, candidates, n=1)
        if not found:  # a difference of case only scores low on short names ("Seg", "seg")
            found = [n for n in candidates if n.lower() == entry.lower()][:1]
        return found[0] if found else None
    parts = _WILDCARDS.split(entry)
    if parts[0]:
        literal, cut = parts[0], lambda name: name[: len(parts[0])]
    elif parts[-1]:
        literal, cut = parts[-1], lambda name: name[-len(parts[-1]) :]
    else:
        return None  # all wildcards at both ends ("*seg*"): nothing fixed to compare
    by_part: dict[str, str] = {}
    for name in candidates:
        by_part.setdefault(cut(name), name)
    found = difflib.get_close_matches(literal, list(by_part), n=1)
    return by_part[found[0]] if found else None


def did_you_mean(entry: str, names: Iterable[str]) -> str:
    """``" (did you mean 'reg'?)"`` for the name of ``names`` closest to ``entry``, else ``""``:
    the end of a message about an entry that matched nothing."""
    meant = closest(entry, names)
    return "" if meant is None else f" (did you mean {meant!r}?)"


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

    def deciding(self, name: str) -> str | None:
        """The entry that decides ``name``'s value (its own name, else the first matching
        pattern), without counting it as matched; ``None`` when none does."""
        if name in self._exact:
            return name
        return next((p for p, _ in self._patterns if fnmatch.fnmatchcase(name, p)), None)

    def has_name(self, name: str) -> bool:
        """Whether ``name`` is one of the table's literal names (patterns do not count)."""
        return name in self._exact

    def entries(self) -> list[str]:
        return [*self._exact, *(p for p, _ in self._patterns)]

    def unmatched(self) -> list[str]:
        """The names and patterns that matched nothing so far, sorted."""
        return sorted(set(self.entries()) - self._matched)
