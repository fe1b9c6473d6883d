"""A saved ``LossLog.state`` checked before it is restored: a damaged or hand-edited checkpoint
is named part by part, instead of failing with a shape error deep in a load."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from torch import Tensor


def check_saved(state: Mapping[str, Any], entry: str = "lightning_losses") -> None:
    """Raise a ``ValueError`` naming the part of a saved :meth:`LossLog.state` that is not
    consistent (a damaged or hand-edited checkpoint), instead of a shape error deep in a load."""

    def fail(where: str, problem: str) -> NoReturn:
        raise ValueError(
            f"checkpoint entry {entry!r}[{where!r}] is inconsistent: {problem}; expected the "
            "state this library saved (is the checkpoint damaged or edited? resume from another "
            "checkpoint, or load the weights without resuming)"
        )

    def names_of(part: Mapping[str, Any], where: str) -> list[str]:
        names = part.get("names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            fail(where, f"'names' is {type(names).__name__}, not a list of names")
        if len(set(names)) != len(names):
            fail(where, "'names' repeats a name")
        return names

    registry = state["registry"]
    if not isinstance(registry, Mapping):
        fail("registry", f"it is {type(registry).__name__}, not a mapping")
    names = names_of(registry, "registry")
    kinds, agreed = registry.get("kinds"), registry.get("agreed")
    if not isinstance(kinds, list) or len(kinds) != len(names):
        count = len(kinds) if isinstance(kinds, list) else type(kinds).__name__
        fail("registry", f"{len(names)} names but {count} kinds")
    if not isinstance(agreed, int) or not 0 <= agreed <= len(names):
        fail("registry", f"'agreed' is {agreed!r} for {len(names)} names")
    known = set(names)
    for where in ("window", "epoch"):
        part = state.get(where)
        if not isinstance(part, Mapping):
            fail(where, f"it is {type(part).__name__}, not a mapping")
        slots = names_of(part, where)
        unknown = sorted(set(slots) - known)
        if unknown:
            fail(where, f"names {unknown} are not in the registry")
        data = part.get("data")
        if data is not None and (
            not isinstance(data, Tensor) or data.dim() != 2 or data.shape[0] < 2
            or data.shape[1] > len(slots)
        ):  # fmt: skip
            shape = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
            fail(where, f"'data' has shape {shape} for {len(slots)} names")
        for counts in ("counts", "drained"):
            entries = part.get(counts)
            if not isinstance(entries, list):
                fail(where, f"{counts!r} is {type(entries).__name__}, not a list")
            for item in entries:
                if (
                    not isinstance(item, (list, tuple)) or len(item) != 2
                    or not isinstance(item[0], (list, tuple))
                    or not isinstance(item[1], (int, float))
                ):  # fmt: skip
                    fail(where, f"{counts!r} holds {item!r}, not a [names, count] pair")
                missing = sorted(set(item[0]) - set(slots))
                if missing:
                    fail(where, f"{counts!r} counts names {missing} that it has no slot for")
