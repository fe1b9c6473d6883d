"""The Lightning hooks the library takes part in: one list makes the module's hook methods, the
wrappers of a user's overrides, and the dispatch to the object that does the work.

A ``LossDictModule`` does its work from Lightning hooks (batch start and end, checkpoint save and
load, ...). Lightning calls a module's hook by name, so a subclass that overrides one without
``super()`` would cut the library's part out. So every hook in :data:`HOOKS` runs the library's
part exactly once per call, whoever defines the hook:

- the module's own method (made by :func:`install`) runs it when nothing overrides it;
- a subclass's override is wrapped at class creation (:func:`chain`, from
  ``__init_subclass__``): the wrapper runs it, then the user's function; wrappers reached through
  ``super()`` skip it, and so does the module's own method reached that way;
- a hook assigned after the class was made, on the class or on one instance, is wrapped when
  the next ``fit``/``validate``/``test`` begins (:func:`adopt`), before it can be called.

Why not an internal callback for all of it: Lightning dispatches every callback hook through a
profiler context (about seven Python calls per hook per callback), six of them per training step,
more than the library's whole per-step budget. Wrapping costs nothing for a hook that is not
overridden. (The epoch ends do run in a callback, one whose per-step hooks are switched off: see
``epoch_ends``.)

The owner of each hook's work is the module's ``Core`` ("core") or the running ``FitSession``
("fit", nothing outside a fit): ``Core.parts`` maps each hook to it. ``configure_optimizers``
is wrapped the same way so that a route map it returns, from the class itself or a mixin,
becomes one ``RoutedOptimizer``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import lightning.pytorch as pl
from torch.nn.modules.module import register_module_module_registration_hook

from lightning_losses.session import options


class Hook(NamedTuple):
    name: str
    owner: str  # "core" or "fit"


#: Every hook the library takes part in, and who does its work.
HOOKS = (
    Hook("configure_callbacks", "core"),
    Hook("setup", "core"),
    Hook("on_fit_start", "core"),
    Hook("on_train_batch_start", "fit"),
    Hook("on_train_batch_end", "fit"),
    Hook("on_before_optimizer_step", "fit"),
    Hook("on_train_end", "fit"),
    Hook("on_validation_start", "core"),
    Hook("on_test_start", "core"),
    Hook("on_validation_epoch_start", "core"),
    Hook("on_test_epoch_start", "core"),
    Hook("on_validation_batch_start", "core"),
    Hook("on_validation_batch_end", "core"),
    Hook("on_test_batch_start", "core"),
    Hook("on_test_batch_end", "core"),
    Hook("on_save_checkpoint", "core"),
    Hook("on_load_checkpoint", "core"),
    Hook("teardown", "core"),
)
NAMES = tuple(hook.name for hook in HOOKS)
FIT_HOOKS = tuple(hook.name for hook in HOOKS if hook.owner == "fit")
#: Marks a wrapper made here (its value: the function it wraps).
_WRAPPED = "_lightning_losses_wraps"
#: Per hook: what each class resolves it to (filled as classes are made). The methods below
#: ask it whether they are the outermost definition: a subscript and an identity test, where
#: ``getattr(type(self), name)`` would be a call on every hook of every step.
_RESOLVED: dict[str, dict[type, Any]] = {name: {} for name in NAMES}


def nothing(*args: Any, **kwargs: Any) -> None:
    """A fit hook's part outside a fit (see ``Core.parts``)."""


#: ``LossDictModule``, once :func:`install` has run.
_BASE: list[type] = []


def install(cls: type) -> None:
    """Give ``cls`` (``LossDictModule``) its own method for every hook of the list."""
    _BASE.append(cls)
    for name in NAMES:
        method = _own(name, getattr(pl.LightningModule, name))
        setattr(cls, name, method)
        _RESOLVED[name][cls] = method
    cls.configure_optimizers._routes_translated = True  # type: ignore[attr-defined]


def _own(name: str, lightning: Callable[..., Any]) -> Callable[..., Any]:
    resolved = _RESOLVED[name]
    returns_list = name == "configure_callbacks"  # (Lightning's default returns [])

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        # not when an override's wrapper already ran it (a super() call reaching this method)
        if resolved[type(self)] is method and name not in self.__dict__:
            self._core.parts[name](*args, **kwargs)
        return [] if returns_list else None

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Lightning's ``{name}``; the library's part runs here (see session/hooks.py)."
    method.__signature__ = inspect.signature(lightning)  # type: ignore[attr-defined]
    return method


def chain(cls: type, base: type) -> None:
    """Wrap every hook of ``cls`` that resolves to a user's function, and its
    ``configure_optimizers`` (which may come from a mixin) so that a route map is translated."""
    for name in NAMES:
        resolved = getattr(cls, name)
        if resolved is not getattr(base, name) and getattr(resolved, _WRAPPED, None) is None:
            resolved = _wrapped(name, resolved)  # (else ours, or an ancestor's wrapper)
            setattr(cls, name, resolved)
        _RESOLVED[name][cls] = resolved
    own = cls.configure_optimizers  # type: ignore[attr-defined]
    if not getattr(own, "_routes_translated", False):
        cls.configure_optimizers = _translating(own)  # type: ignore[attr-defined]


def _wrapped(name: str, user: Callable[..., Any]) -> Callable[..., Any]:
    resolved = _RESOLVED[name]

    @functools.wraps(user)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if resolved[type(self)] is wrapper and name not in self.__dict__:  # the outermost
            self._core.parts[name](*args, **kwargs)
        return user(self, *args, **kwargs)

    setattr(wrapper, _WRAPPED, user)
    return wrapper


def _translating(user: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(user)  # (its __wrapped__ is what Core.peek_routes reads route names from)
    def configure_optimizers(self: Any) -> Any:
        return self._core.translate_routes(user(self))

    configure_optimizers._routes_translated = True  # type: ignore[attr-defined]
    return configure_optimizers


def adopt(module: Any) -> None:
    """Hooks assigned after ``module``'s class was made: wrapped before the call that begins
    can reach them (a class attribute like an override, an instance's own like a method)."""
    chain(type(module), _BASE[0])
    own = module.__dict__
    for name in NAMES:
        function = own.get(name)
        if function is not None and getattr(function, _WRAPPED, None) is None:
            own[name] = _OnInstance(module, name, function)
    function = own.get("configure_optimizers")
    if function is not None and not getattr(function, "_routes_translated", False):
        own["configure_optimizers"] = _OnInstance(module, "", function)


class _OnInstance:
    """A hook assigned to one instance, with the library's part before it (or, for
    ``configure_optimizers``, its route map translated). An object, not a closure, so that a
    deep copy of the module (an EMA teacher) calls into the copy."""

    _routes_translated = True

    def __init__(self, module: Any, name: str, user: Callable[..., Any]) -> None:
        self.module, self.name, self.user = module, name, user
        setattr(self, _WRAPPED, user)
        # what Lightning's is_overridden reads (as for functools.wraps): the user's code, the
        # innermost (LightningCLI assigns a method of a partial that wraps its own method)
        self.__wrapped__ = inspect.unwrap(user)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        core = self.module._core
        if not self.name:  # configure_optimizers
            return core.translate_routes(self.user(*args, **kwargs))
        core.parts[self.name](*args, **kwargs)
        return self.user(*args, **kwargs)


# ---------------------------------------------------------------- options that are modules

#: Module-valued options that take effect when assigned (API.md §10): ``nn.Module.__setattr__``
#: registers a module without calling a property's setter, so a global registration hook (one
#: call per submodule registered anywhere, none per step) hands the assignment to options.py.
_MODULE_OPTIONS = frozenset({"weighting", "aggregator", "eval_metrics"})


def _assigned(module: Any, name: str, value: Any) -> Any:
    if name not in _MODULE_OPTIONS:
        return None
    core = module.__dict__.get("_core")
    if core is None:  # (a module under construction: its constructor decides)
        return None
    return options.assign(core, name, value)


register_module_module_registration_hook(_assigned)
