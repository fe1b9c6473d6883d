"""Plain values: what a checkpoint may hold (what torch's ``weights_only`` unpickler and YAML
both read), the marker of a value left out, and how classes and functions are named so that
another process finds them (or why it could not).

Shared by :mod:`encoding` (constructor arguments -> plain values) and :mod:`rebuilding` (plain
values -> arguments again); see :mod:`hparams` for the whole story.
"""

from __future__ import annotations

import functools
import sys
import types
from collections.abc import Mapping
from typing import Any

import torch

#: The key of a value left out of a checkpoint: ``{NOT_SAVED: "<what it was and why>"}``.
NOT_SAVED = "not_saved"
#: What :func:`yaml_plain` returns for a value that is not plain.
MISSING = object()


def is_plain(value: Any) -> bool:
    """Whether torch's ``weights_only`` unpickler accepts ``value`` (checked structurally)."""
    if isinstance(value, torch.Tensor):
        return type(value) is torch.Tensor  # not a Parameter or another subclass
    if type(value) in (type(None), bool, int, float, complex, str, bytes):
        return True
    if type(value) in (list, tuple):
        return all(is_plain(v) for v in value)
    if type(value) is dict:
        return all(is_plain(k) and is_plain(v) for k, v in value.items())
    return False


def yaml_plain(value: Any) -> Any:
    """``value`` with tuples as lists if it is made of ``None``, bools, numbers, strings, lists
    and string-keyed dicts (what YAML and ``weights_only`` both read), else :data:`MISSING`."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if type(value) in (list, tuple):
        items = [yaml_plain(v) for v in value]
        return MISSING if any(v is MISSING for v in items) else items
    if isinstance(value, Mapping) and all(type(k) is str for k in value):
        entries = {k: yaml_plain(v) for k, v in value.items()}
        return MISSING if any(v is MISSING for v in entries.values()) else entries
    return MISSING


def not_saved(why: str) -> dict[str, str]:
    """A value left out, and why."""
    return {NOT_SAVED: why}


def is_not_saved(value: Any) -> bool:
    return isinstance(value, dict) and NOT_SAVED in value


def unsaved_parts(value: Any, where: str) -> list[tuple[str, str]]:
    """``(where, why)`` of every ``{"not_saved": why}`` in ``value`` (top level or one level in,
    as in ``loss_weights``)."""
    if is_not_saved(value):
        return [(where, str(value[NOT_SAVED]))]
    if isinstance(value, dict):
        return [(f"{where}[{k!r}]", str(v[NOT_SAVED])) for k, v in value.items() if is_not_saved(v)]
    return []


def class_path(obj: Any) -> str:
    """``obj``'s module and qualified name, as a class path names it."""
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def unimportable(obj: Any) -> str | None:
    """Why another process could not find ``obj`` (a class or function) by its qualified name,
    or ``None`` if it can."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if "<lambda>" in qualname:
        return "a lambda"
    if module == "__main__":
        return f"{qualname} is defined in __main__, which another process cannot import"
    if "<locals>" in qualname:
        return f"{qualname.split('.')[-1]} is defined inside a function"
    if not module or lookup(f"{module}.{qualname}") is not obj:
        return f"{class_path(obj)} is not importable under that name"
    return None


def lookup(path: str) -> Any:
    """The object named ``path`` (``"pkg.mod.Outer.Inner"``) among modules already imported;
    ``None`` if there is none. Never imports: a checkpoint must not make Python run a module."""
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        obj = sys.modules.get(".".join(parts[:i]))
        if obj is None:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
        return obj
    return None


def describe_value(value: Any) -> str:
    """What a value that is not plain is, for the messages that name it."""
    if isinstance(value, functools.partial):
        return f"functools.partial({class_path(value.func)}, ...)"
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
        why = unimportable(value)
        kind = "a class" if isinstance(value, type) else "a function"
        return f"{class_path(value)}, {why if why == 'a lambda' else kind}: code is never stored"
    return f"a {type(value).__name__}, not a plain value"
