"""Warnings about the user's model, shown at the user's code rather than at a library line.

A warning printed as ``lightning_losses/terms/parse.py:207: UserWarning: ...`` cannot be traced,
in a long log, to the model it is about. What users meet here is about the values their
``forward`` returns, the names in their ``loss_weights`` and their optimizer routes, so
:func:`warn` issues it with ``warnings.warn_explicit`` at the first line of that code: the
``forward`` (or ``configure_optimizers``, ``__init__``) of the module being trained, or of the
model it wraps. Only rank zero warns, as with Lightning's ``rank_zero_warn``.

The objects that warn (a step's weights, the key selector, the router) are built before the
model's layers and do not hold the module; the module being trained is the innermost
``LightningModule`` on the call stack (``training_step``, ``total_loss``, ``validation_step``),
so it is found there, and only when a warning is issued: nothing of this runs per step.
"""

from __future__ import annotations

import inspect
import sys
import sysconfig
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only
from torch import nn


class LossDictWarning(UserWarning):
    """What ``lightning_losses`` says about a model, its returned values and its configuration:
    one category, so that ``warnings.filterwarnings(..., category=LossDictWarning)`` or
    ``pytest -W`` can select exactly these."""


#: Where code is not the user's: this package, and installed packages (Lightning, torch,
#: transformers); a model class there is named in the message instead.
_LIBRARY_ROOTS = tuple(
    {
        str(Path(__file__).resolve().parent),
        *(
            str(Path(path).resolve())
            for key in ("purelib", "platlib", "stdlib")
            if (path := sysconfig.get_paths().get(key))
        ),
    }
)

Hook = str | Sequence[str]


@rank_zero_only
def warn(message: str, hook: Hook = "forward", owner: Any = None) -> None:
    """Issue ``message`` (a :class:`LossDictWarning`) at the user's ``hook``.

    ``hook``: the method (or methods, in order of preference) whose code the message is about;
    ``forward`` and ``__init__`` are tried after it. ``owner``: the module being trained, found
    on the call stack when not given. Where no user code is found (a model from an installed
    package, a class built at run time), the class is named in the message instead.
    """
    module = owner if owner is not None else stepping_module()
    where = user_code(module, hook) if module is not None else None
    if where is None:
        if module is not None:
            message = f"{type(module).__name__}: {message}"
        warnings.warn(message, LossDictWarning, stacklevel=_caller_level())
        return
    filename, lineno = where
    warnings.warn_explicit(
        message, LossDictWarning, filename, lineno, module=_module_name(filename)
    )


def stepping_module(frame: FrameType | None = None) -> pl.LightningModule | None:
    """The innermost ``LightningModule`` whose method is running on the call stack."""
    frame = frame if frame is not None else sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_argcount and code.co_varnames[0] == "self":
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, pl.LightningModule):
                return candidate
        frame = frame.f_back
    return None


def user_code(module: nn.Module, hook: Hook = "forward") -> tuple[str, int] | None:
    """The file and first line of the user's code for ``hook`` on ``module`` (see :func:`warn`),
    or ``None``."""
    hooks = [hook] if isinstance(hook, str) else list(hook)
    hooks += [h for h in ("forward", "__init__") if h not in hooks]
    wrapped = getattr(module, "model", None)
    for name in hooks:
        for owner in (module, wrapped):
            if not isinstance(owner, nn.Module):
                continue
            function = _own_function(type(owner), name)
            if function is not None:
                code = function.__code__
                return code.co_filename, code.co_firstlineno
    return None


def _own_function(cls: type, name: str) -> Any:
    """``cls``'s method ``name`` as the user wrote it (decorators and the library's wrappers
    unwrapped), where the user wrote it; ``None`` when it is the library's or an installed
    package's."""
    for klass in cls.__mro__:
        attribute = klass.__dict__.get(name)
        if attribute is None:
            continue
        function = inspect.unwrap(attribute) if callable(attribute) else None
        code: Any = getattr(function, "__code__", None)
        if code is not None and _is_user_file(code.co_filename):
            return function
    return None


def _is_user_file(filename: str) -> bool:
    if filename.startswith("<"):  # "<string>", "<stdin>": no line to show
        return False
    try:
        path = str(Path(filename).resolve())
    except OSError:
        return False
    return not path.startswith(_LIBRARY_ROOTS)


def _module_name(filename: str) -> str:
    """What ``warnings`` filters match a warning's module against: the file's name, without
    ``.py`` (as ``warnings.warn`` derives it)."""
    return Path(filename).stem


def _caller_level() -> int:
    """The ``stacklevel`` that points at the first frame outside this package (the library line
    that called into it otherwise)."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and not _is_user_file(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    return level if frame is not None else 2
