"""Hooks a subclass may override without ``super()``: the library's part runs anyway.

A ``LossDictModule`` does its logging from Lightning hooks (batch start and end, epoch end,
checkpoint save and load, ...). A subclass that overrides one of them as it would on any
``LightningModule``, without calling ``super()``, used to cut the library's part out silently.

Why not an internal callback: Lightning calls callbacks whatever a subclass overrides, but it
dispatches every callback hook through a profiler context (about seven Python calls per hook per
callback), six of them per training step even when the callback implements none: more than the
whole per-step budget of the library. Wrapping at class creation costs nothing when a hook is
not overridden and one call when it is, in the spirit of torchmetrics' wrapped ``update``.

How: :func:`chain` runs in ``LossDictModule.__init_subclass__``. For each chained hook that a
class resolves to a function that is not the library's own, it installs a wrapper that first runs
the library's part (the method of the same name on the module's ``Lifecycle``) and then the
user's function. The library's part
runs exactly once per call, however the overrides chain through ``super()``:

- a wrapper runs it only when it is the method the instance's class resolves to (the outermost
  override); the wrappers of base classes reached through ``super()`` skip it;
- ``LossDictModule``'s own hook runs it only when it is itself what the class resolves to, so a
  ``super()`` call that reaches it from an override does nothing more.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

#: The attribute that marks a wrapper installed by :func:`chain` (and the function it wraps).
_WRAPPED = "_lightning_losses_wraps"


def chain(cls: type, hooks: Iterable[str], base: type) -> None:
    """Wrap every hook of ``cls`` that resolves to a user's function (see the module docstring)."""
    for hook in hooks:
        resolved = getattr(cls, hook)
        if resolved is getattr(base, hook) or getattr(resolved, _WRAPPED, None) is not None:
            continue  # the library's own hook, or a wrapper an ancestor installed already
        setattr(cls, hook, _wrap(hook, resolved))


def _wrap(hook: str, user: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(user)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(type(self), hook) is wrapper:  # the outermost override: ours runs here
            getattr(self._lifecycle, hook)(*args, **kwargs)
        return user(self, *args, **kwargs)

    setattr(wrapper, _WRAPPED, user)
    return wrapper


def is_outermost(module: Any, hook: str, base: type) -> bool:
    """For the library's own hook: whether it is what the module's class resolves to (else a
    wrapper ran the library's part already, and this is a ``super()`` call reaching it)."""
    return getattr(type(module), hook) is getattr(base, hook)
