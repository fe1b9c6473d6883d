"""Constructor arguments in checkpoints and ``hparams.yaml``: plain values only, never code.

A checkpoint loads, through every path (``load_from_checkpoint``, ``fit/validate(ckpt_path=)``,
``torch.load(weights_only=True)``), without unpickling anything but tensors and plain values, and
nothing read from it is executed: what cannot be written down as plain data is left out, named
in a warning when it is saved and again when it is loaded without it.

Lightning's ``save_hyperparameters`` stores the constructor's arguments. Ours are written the way
LightningCLI writes a configuration (the CLI's own configuration is stored unchanged when the CLI
builds the module, and Lightning rebuilds it through the CLI's instantiator):

* A module (``model``, ``weighting``, ``aggregator``) becomes
  ``{"class_path": "pkg.mod.Net", "init_args": {...}}`` when its constructor's arguments are
  known and plain: the module calls Lightning's ``save_hyperparameters`` (any ``nn.Module`` can
  mix in ``HyperparametersMixin``), its ``__init__`` takes no arguments, or it is one of the
  library's own weightings or a torchjd scalarizer or aggregator (whose arguments are read back
  from the module, see ``_own_arguments``; a scalarizer inside its wrapper is a nested
  ``class_path`` entry). The state dict then
  fills in the weights. Otherwise (arguments unknown, a class defined in ``__main__`` or inside a
  function) it is ``{"not_saved": "<why>"}`` and ``load_from_checkpoint`` asks for ``model=``.
* ``optimizer``/``lr_scheduler``: an optimizer or scheduler class, or a ``functools.partial`` of
  one with plain keyword arguments, becomes ``{"class_path": ..., "init_args": {...}}`` (read
  back as the same partial). Functions and lambdas are code: ``{"not_saved": ...}``.
* ``loss_weights``: constants are kept; a schedule (a function) is ``{"not_saved": ...}`` and is
  dropped, loudly, on load unless ``loss_weights=`` is passed again.
* Tuples become lists, so ``hparams.yaml`` has no Python tags and Lightning's
  ``load_hparams_from_yaml`` reads it.

A class path from a checkpoint is only looked up among modules already imported (the file never
makes Python import anything, the rule of Lightning's own ``_is_imported_subclass``) and must
name a subclass of what the argument expects (``nn.Module``, ``Optimizer``, a scheduler).

For a subclass, our arguments are recorded as ``LossDictModule.__init__`` received them, so that
``hparams.yaml`` is truthful (``loss_keys=None`` in a subclass that passes ``["seg", "depth"]``
to ``super().__init__`` records ``["seg", "depth"]``); a module or callable the subclass builds
itself is recorded as the subclass received it (usually ``None``), so reloading builds it again.
The subclass's own arguments stay as Lightning stores them; in the checkpoint, one that is not a
plain value is replaced by ``{"not_saved": ...}`` (and its default used on load, with a warning).
"""

from __future__ import annotations

import copy
import functools
import inspect
import numbers
import sys
import types
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.core.mixins import HyperparametersMixin
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.parsing import collect_init_args
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lightning_losses import _lightning

#: Module arguments, rebuilt as instances of their class path.
INSTANCES: dict[str, tuple[type, ...]] = {
    "model": (nn.Module,),
    "weighting": (nn.Module,),
    "aggregator": (nn.Module,),
    "metrics": (nn.Module,),
}
#: Module arguments without weights: one that cannot be rebuilt is left out on load, loudly.
WEIGHTLESS = frozenset({"metrics"})
#: Factory arguments, rebuilt as ``functools.partial(class, **init_args)``.
FACTORIES: dict[str, tuple[type, ...]] = {
    "optimizer": (Optimizer,),
    "lr_scheduler": (LRScheduler, ReduceLROnPlateau),
}
#: The key of a value left out of a checkpoint: ``{NOT_SAVED: "<what it was and why>"}``.
NOT_SAVED = "not_saved"
#: Where checkpoints written by lightning_losses <= 0.x kept pickled arguments (never read now).
LEGACY_PICKLED = "pickled_hyper_parameters"
_MISSING = object()


# ------------------------------------------------------------------ plain values


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


def _yaml_plain(value: Any) -> Any:
    """``value`` with tuples as lists if it is made of ``None``, bools, numbers, strings, lists
    and string-keyed dicts (what YAML and ``weights_only`` both read), else ``_MISSING``."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if type(value) in (list, tuple):
        items = [_yaml_plain(v) for v in value]
        return _MISSING if any(v is _MISSING for v in items) else items
    if isinstance(value, Mapping) and all(type(k) is str for k in value):
        entries = {k: _yaml_plain(v) for k, v in value.items()}
        return _MISSING if any(v is _MISSING for v in entries.values()) else entries
    return _MISSING


def _not_saved(why: str) -> dict[str, str]:
    return {NOT_SAVED: why}


def is_not_saved(value: Any) -> bool:
    return isinstance(value, dict) and NOT_SAVED in value


def _unsaved_parts(value: Any, where: str) -> list[tuple[str, str]]:
    """``(where, why)`` of every ``{"not_saved": why}`` in ``value`` (top level or one level in,
    as in ``loss_weights``)."""
    if is_not_saved(value):
        return [(where, str(value[NOT_SAVED]))]
    if isinstance(value, dict):
        return [(f"{where}[{k!r}]", str(v[NOT_SAVED])) for k, v in value.items() if is_not_saved(v)]
    return []


# ------------------------------------------------------------------ names and classes


def _path(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def _unimportable(obj: Any) -> str | None:
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
        return f"{_path(obj)} is not importable under that name"
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


def _constructor_arguments(module: nn.Module) -> dict[str, Any] | str:
    """The plain arguments that rebuild ``module``'s structure, or why they are unknown."""
    own = _own_arguments(module)
    if own is not None:
        return own
    if isinstance(module, HyperparametersMixin) and _lightning.saved_hyperparameters(module):
        recorded = _yaml_plain(dict(module.hparams_initial))
        if recorded is _MISSING:
            return "its saved hyperparameters are not all plain values"
        name = _lightning.hparams_name(module)
        return recorded if name in (None, "kwargs") else {name: recorded}
    init = type(module).__init__
    try:
        takes_nothing = init is nn.Module.__init__ or len(inspect.signature(init).parameters) == 1
    except (TypeError, ValueError):  # no signature to read
        takes_nothing = False
    if takes_nothing:
        return {}  # nothing to record
    return (
        f"the arguments {type(module).__name__}(...) was built with are unknown: let it call "
        "Lightning's save_hyperparameters (mix in lightning.pytorch.core.mixins."
        "HyperparametersMixin) to record them"
    )


def _own_arguments(module: nn.Module) -> dict[str, Any] | str | None:
    """The arguments of the library's own weightings and of torchjd's scalarizers and
    aggregators, which record nothing themselves; ``None`` for any other module.

    Ours say them (``constructor_arguments``; a user's subclass may have another constructor,
    so only the library's own classes are asked). torchjd's are read back from the module: an
    argument kept as an attribute of its name, ``shape`` from the learned tensor, a tensor
    argument kept as a parameter or buffer from the state dict (built at its default, then
    loaded); an argument torchjd keeps nowhere makes the module unrecordable.
    """
    cls = type(module)
    if cls.__module__.startswith("lightning_losses.") and hasattr(module, "constructor_arguments"):
        arguments = module.constructor_arguments()  # type: ignore[operator]
    elif cls.__module__.startswith("torchjd."):
        arguments = _torchjd_arguments(module)
        if isinstance(arguments, str):
            return arguments
    else:
        return None
    encoded: dict[str, Any] = {}
    for name, value in arguments.items():
        if isinstance(value, nn.Module):
            value = _encode_instance(value)
            if is_not_saved(value):
                return f"its argument {name}: {value[NOT_SAVED]}"
        elif _yaml_plain(value) is _MISSING:
            return f"its argument {name} is {_describe(value)}"
        encoded[name] = _yaml_plain(value) if not isinstance(value, dict) else value
    return encoded


def _torchjd_arguments(module: nn.Module) -> dict[str, Any] | str:
    try:
        signature = inspect.signature(type(module).__init__)
    except (TypeError, ValueError):
        return f"{type(module).__name__}'s constructor has no readable signature"
    tensors: dict[str, Tensor] = dict(module.named_parameters(recurse=False))
    tensors.update(module.named_buffers(recurse=False))
    arguments: dict[str, Any] = {}
    opaque: list[str] = []
    for name, parameter in list(signature.parameters.items())[1:]:
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        value = _kept(module, name)
        if name in tensors and parameter.default is None:
            value = None  # a tensor the state dict restores
        elif value is _MISSING and name == "shape" and len(tensors) >= 1:
            value = list(next(iter(tensors.values())).shape)
            value = value[0] if len(value) == 1 else value
        if value is _MISSING:
            if parameter.default is inspect.Parameter.empty:
                return (
                    f"torchjd's {type(module).__name__} does not keep its argument {name}, so it "
                    "cannot be rebuilt from a checkpoint"
                )
            continue  # built at its default
        if _yaml_plain(value) is _MISSING and not isinstance(value, nn.Module):
            if value is parameter.default:
                continue
            if parameter.default is not inspect.Parameter.empty:
                opaque.append(name)  # built by default (UPGrad's projector)? checked below
                continue
            return f"its argument {name} is {_describe(value)}"
        arguments[name] = value
    if opaque:
        # kept objects that are not plain: fine if a module built from the recorded arguments
        # has the same ones, i.e. they were the constructor's own default
        try:
            probe = type(module)(**arguments)
        except Exception as error:
            return f"{type(module).__name__}(**{arguments}) fails ({error})"
        for name in opaque:
            if not _same_setting(_kept(module, name), _kept(probe, name)):
                return f"its argument {name} is {_describe(_kept(module, name))}"
    return arguments


def _same_setting(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    try:
        return repr(vars(a)) == repr(vars(b))
    except TypeError:  # no __dict__
        return repr(a) == repr(b)


def _kept(module: nn.Module, name: str) -> Any:
    """An argument as torchjd keeps it: an attribute ``name`` or ``_name`` of the module or of
    the first submodule that has one (an aggregator keeps its settings in its weighting)."""
    for part in module.modules():
        for attribute in (name, f"_{name}"):
            if attribute in part.__dict__:
                return part.__dict__[attribute]
    return _MISSING


# ------------------------------------------------------------------ encoding


def _encode_instance(value: Any) -> Any:
    if not isinstance(value, nn.Module):
        return value if _yaml_plain(value) is not _MISSING else _not_saved(_describe(value))
    cls = type(value)
    why = _unimportable(cls)
    if why is None:
        arguments = _constructor_arguments(value)
        if isinstance(arguments, dict):
            return {"class_path": _path(cls), "init_args": arguments}
        why = arguments
    return _not_saved(f"{_path(cls)}: {why}")


def _encode_factory(value: Any, bases: tuple[type, ...]) -> Any:
    plain = _yaml_plain(value)
    if plain is not _MISSING:
        return plain  # None, or already written down
    target, arguments = value, {}
    if isinstance(value, functools.partial):
        if value.args:
            return _not_saved(f"{_describe(value)} has positional arguments")
        target, arguments = value.func, value.keywords
    if isinstance(target, type) and issubclass(target, bases):
        why = _unimportable(target)
        init_args = _yaml_plain(arguments)
        if why is None and init_args is not _MISSING:
            return {"class_path": _path(target), "init_args": init_args}
        return _not_saved(f"{_describe(value)}: {why or 'its arguments are not plain values'}")
    return _not_saved(_describe(value))


def _encode_weights(value: Any) -> Any:
    if not isinstance(value, Mapping):
        plain = _yaml_plain(value)
        return plain if plain is not _MISSING else _not_saved(_describe(value))
    encoded: dict[Any, Any] = {}
    for name, weight in value.items():
        if type(weight) in (int, float) or is_not_saved(weight):  # the latter written already
            encoded[name] = weight
        elif isinstance(weight, numbers.Real) or (
            isinstance(weight, Tensor) and weight.numel() == 1 and not weight.is_meta
        ):
            encoded[name] = float(weight)
        else:  # a schedule
            encoded[name] = _not_saved(f"schedule {_describe(weight)}")
    return encoded


def _describe(value: Any) -> str:
    if isinstance(value, functools.partial):
        return f"functools.partial({_path(value.func)}, ...)"
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
        why = _unimportable(value)
        kind = "a class" if isinstance(value, type) else "a function"
        return f"{_path(value)}, {why if why == 'a lambda' else kind}: code is never stored"
    return f"a {type(value).__name__}, not a plain value"


def encode(name: str, value: Any) -> Any:
    """How our argument ``name`` is written into ``hyper_parameters`` (a plain value)."""
    if name in INSTANCES:
        return _encode_instance(value)
    if name in FACTORIES:
        return _encode_factory(value, FACTORIES[name])
    if name == "loss_weights":
        return _encode_weights(value)
    plain = _yaml_plain(value)
    return plain if plain is not _MISSING else _not_saved(_describe(value))


#: ``LossDictModule.__init__``'s signature, handed over by module.py when the class is made (so
#: that this module, which module.py uses, never imports it back).
_CONSTRUCTOR: list[inspect.Signature] = []


def use_constructor(init: Any) -> None:
    """Record the constructor whose arguments are saved and rebuilt here."""
    _CONSTRUCTOR[:] = [inspect.signature(init)]


def arguments() -> tuple[str, ...]:
    """The names of ``LossDictModule.__init__``'s arguments."""
    return tuple(_CONSTRUCTOR[0].parameters)[1:]


def save(module: HyperparametersMixin, cli: bool) -> None:
    """``save_hyperparameters`` for ``LossDictModule.__init__``, called from it (its frame is
    read). Leaves ``module.hparams`` and ``hparams_initial`` plain in our arguments."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    frame = frame.f_back
    module._hparams_from_subclass = frozenset()  # type: ignore[attr-defined]
    if cli:  # the CLI's configuration (class_path dicts), rebuilt by its instantiator
        module.save_hyperparameters(frame=frame)
        return
    # Lightning's: every constructor's arguments in the subclass chain, the outermost winning
    ours, *outer = collect_init_args(frame, [], classes=(HyperparametersMixin,))
    module.save_hyperparameters(ignore=list(INSTANCES), frame=frame)
    stored = _lightning.hparams_of(module)
    supplied = set()
    for name, value in ours.items():
        # what the class being built received (an intermediate class's **kwargs may hold
        # what the outermost one supplies itself)
        received = [outer[-1][name]] if outer and name in outer[-1] else []
        if outer and not received:
            # The subclass supplies it (or leaves the default) and does so again on load, so
            # the checkpoint leaves it out: a subclass taking **kwargs would get it twice.
            # hparams.yaml still shows it, unless it is a module (Lightning's advice).
            supplied.add(name)
            if name in INSTANCES:
                continue
        candidates = [*received, value] if name in INSTANCES else [value, *received]
        encoded = [encode(name, candidate) for candidate in candidates]
        stored[name] = next((e for e in encoded if not _unsaved_parts(e, name)), encoded[0])
    _lightning.set_initial_hparams(module, copy.deepcopy(stored))
    module._hparams_from_subclass = frozenset(supplied)  # type: ignore[attr-defined]


# ------------------------------------------------------------------ saving


def for_checkpoint(module: Any, stored: Mapping[str, Any]) -> dict[str, Any]:
    """The ``hyper_parameters`` of ``module``'s checkpoint: plain values only, one warning per
    value left out (per module)."""
    ours = () if module._configured_by_cli else arguments()
    warned: set[str] = module._unsaved_hparams
    owner = type(module).__name__
    written: dict[str, Any] = {}
    for name, value in stored.items():
        if name in module._hparams_from_subclass:
            continue  # see save()
        if name in ours:
            written[name] = encode(name, value)  # already plain unless changed since __init__
        elif is_plain(value):
            written[name] = value
        else:
            written[name] = _not_saved(_describe(value))
        for where, why in _unsaved_parts(written[name], name):
            if where not in warned:
                warned.add(where)
                rank_zero_warn(_save_warning(owner, name, where, why))
    return written


def _save_warning(owner: str, name: str, where: str, why: str) -> str:
    head = f"the checkpoint cannot record {where} ({why})"
    if name in WEIGHTLESS:
        return (
            f"{head}; {owner}.load_from_checkpoint(path) then logs no {name} (with a warning) "
            f"unless you pass {name}=... again"
        )
    if name in INSTANCES:
        return (
            f"{head}; load it with {owner}.load_from_checkpoint(path, {name}=...), which then "
            "loads its weights from the checkpoint"
        )
    if name == "loss_weights":
        return (
            f"{head}: loading without it changes the objective, so load_from_checkpoint(path) "
            f"drops it (weight 1) with a warning; pass it again: "
            f"{owner}.load_from_checkpoint(path, loss_weights={{...}})"
        )
    hint = ""
    if name in FACTORIES:
        hint = " (functools.partial(torch.optim.SGD, lr=0.1) and the like are recorded)"
    return (
        f"{head}; load_from_checkpoint(path) uses the default and warns unless you pass "
        f"{name}=... again{hint}"
    )


# ------------------------------------------------------------------ loading


def from_checkpoint(
    cls: type, checkpoint_path: Any, hparams_file: Any, kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """The keyword arguments for Lightning's ``load_from_checkpoint``: ``kwargs`` completed by
    :func:`load_arguments` from the checkpoint's hyperparameters (read with ``weights_only=True``)
    or from ``hparams_file``."""
    from lightning.pytorch.core.saving import load_hparams_from_yaml

    if hparams_file is not None and str(hparams_file).lower().endswith((".yaml", ".yml")):
        stored = load_hparams_from_yaml(hparams_file)
    else:
        stored = _lightning.checkpoint_entry(checkpoint_path, "hyper_parameters")
    return load_arguments(
        cls,
        stored,
        kwargs,
        legacy=lambda: _lightning.checkpoint_entry(checkpoint_path, "lightning_losses"),
    )


def load_arguments(
    cls: type, stored: Mapping[str, Any], kwargs: Mapping[str, Any], legacy: Any = None
) -> dict[str, Any]:
    """``kwargs`` completed with what ``cls``'s constructor needs from ``stored`` (the
    checkpoint's ``hyper_parameters``): class paths rebuilt, what was left out replaced by its
    default with a warning, or a ``ValueError`` saying what to pass. Executes nothing but the
    constructors of already imported subclasses of what each argument expects.

    ``legacy`` is called for the checkpoint's ``lightning_losses`` entry if one of our arguments
    is missing (checkpoints that pickled them), to name them in a warning.
    """
    result = dict(kwargs)
    if not isinstance(stored, Mapping) or "_instantiator" in stored:
        return result  # LightningCLI's configuration: Lightning's allow-listed instantiator
    signature = inspect.signature(cls).parameters  # the constructor's, without self
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values())
    ours = arguments()
    for name, value in stored.items():
        if name in kwargs or not (takes_any or name in signature):
            continue
        if name in ours:
            result[name] = _decode(cls.__name__, name, value)
        elif is_not_saved(value):
            default = signature[name].default if name in signature else inspect.Parameter.empty
            if default is inspect.Parameter.empty:
                raise ValueError(
                    f"{cls.__name__}.load_from_checkpoint: the checkpoint does not record {name} "
                    f"({value[NOT_SAVED]}); pass it: load_from_checkpoint(path, {name}=...)"
                )
            _warn_dropped(cls.__name__, name, str(value[NOT_SAVED]), f"uses {name}={default!r}")
            result[name] = default
    missing = [n for n in ours if n not in stored and n not in kwargs and n in signature]
    if missing and legacy is not None and LEGACY_PICKLED in (legacy() or {}):
        rank_zero_warn(
            "this checkpoint was written by an older lightning_losses that pickled some "
            f"constructor arguments into checkpoint['lightning_losses'][{LEGACY_PICKLED!r}]; "
            "they are never unpickled (that would run code from the file): pass the ones it "
            f"needs to {cls.__name__}.load_from_checkpoint (model=..., weighting=..., "
            "optimizer=..., ...)"
        )
    return result


def _warn_dropped(owner: str, name: str, why: str, instead: str) -> None:
    rank_zero_warn(
        f"{owner}.load_from_checkpoint: the checkpoint does not record {name} ({why}), so the "
        f"loaded module {instead}; pass it again: load_from_checkpoint(path, {name}=...)"
    )


def _decode(owner: str, name: str, value: Any) -> Any:
    if name in INSTANCES:
        if value is None:
            return None
        if is_not_saved(value) and name in WEIGHTLESS:
            _warn_dropped(owner, name, str(value[NOT_SAVED]), f"has {name}=None")
            return None
        if is_not_saved(value):
            raise ValueError(
                f"{owner}.load_from_checkpoint: the checkpoint does not record how to build "
                f"{name} ({value[NOT_SAVED]}); pass it: "
                f"{owner}.load_from_checkpoint(path, {name}=...) (its weights are then loaded "
                "from the checkpoint)"
            )
        target, init_args = _resolve(owner, name, value, INSTANCES[name])
        return target(**_decode_nested(owner, name, init_args))
    if name in FACTORIES:
        if value is None:
            return None
        if is_not_saved(value):
            _warn_dropped(owner, name, str(value[NOT_SAVED]), f"uses the default {name}")
            return None
        target, init_args = _resolve(owner, name, value, FACTORIES[name])
        return functools.partial(target, **init_args)
    if name == "loss_weights" and isinstance(value, dict):
        dropped = {k: v[NOT_SAVED] for k, v in value.items() if is_not_saved(v)}
        for key, why in dropped.items():
            _warn_dropped(owner, f"loss_weights[{key!r}]", str(why), f"weighs {key!r} 1")
        return {k: v for k, v in value.items() if k not in dropped}
    if is_not_saved(value):
        _warn_dropped(owner, name, str(value[NOT_SAVED]), f"uses the default {name}")
        return _CONSTRUCTOR[0].parameters[name].default
    return value


def _decode_nested(owner: str, name: str, init_args: dict[str, Any]) -> dict[str, Any]:
    """Module arguments of a module (a scalarizer inside its wrapper) rebuilt from their own
    ``{"class_path": ..., "init_args": {...}}`` entries, checked as the outer one is."""
    out = {}
    for key, value in init_args.items():
        if isinstance(value, dict) and set(value) == {"class_path", "init_args"}:
            target, inner = _resolve(owner, f"{name}.{key}", value, (nn.Module,))
            value = target(**_decode_nested(owner, f"{name}.{key}", inner))
        out[key] = value
    return out


def _resolve(
    owner: str, name: str, value: Any, bases: tuple[type, ...]
) -> tuple[type, dict[str, Any]]:
    """The class and arguments of a ``{"class_path": ..., "init_args": {...}}`` entry, checked."""
    path = value.get("class_path") if isinstance(value, dict) else None
    init_args = value.get("init_args", {}) if isinstance(value, dict) else None
    problem = None
    if not isinstance(path, str) or set(value) - {"class_path", "init_args"}:
        problem = f"{value!r} is not a {{'class_path': ..., 'init_args': {{...}}}} entry"
    elif not isinstance(init_args, dict) or _yaml_plain(init_args) is _MISSING:
        problem = f"the init_args of {path} are not plain keyword arguments"
    else:
        target = lookup(path)
        expected = " or ".join(b.__qualname__ for b in bases)
        if target is None:
            problem = (
                f"{path} is not among the imported modules (a checkpoint never imports code): "
                f"import {path.rpartition('.')[0]} first"
            )
        elif not (isinstance(target, type) and issubclass(target, bases)):
            problem = f"{path} is not a subclass of {expected}, so it was not called"
        else:
            return target, init_args
    raise ValueError(
        f"{owner}.load_from_checkpoint cannot rebuild {name}: {problem}; or pass it: "
        f"load_from_checkpoint(path, {name}=...)"
    )


# ------------------------------------------------------------------ older checkpoints

_SKELETON_MARK = "_lightning_losses_skeleton"


def is_skeleton(module: nn.Module) -> bool:
    """Whether ``module`` is a meta-device skeleton that lightning_losses <= 0.x stored in
    checkpoints (only reachable now by unpickling such a checkpoint yourself)."""
    return bool(module.__dict__.get(_SKELETON_MARK, False))


def materialize(module: nn.Module) -> nn.Module:
    """Give a skeleton's meta tensors real (uninitialised) CPU storage, keeping tied ones tied."""
    del module.__dict__[_SKELETON_MARK]
    made: dict[int, Tensor] = {}
    for owner in module.modules():
        for table in (owner._parameters, owner._buffers):
            for name, tensor in list(table.items()):
                if tensor is not None and tensor.is_meta:
                    if id(tensor) not in made:
                        real = torch.empty_like(tensor, device="cpu")
                        if isinstance(tensor, nn.Parameter):
                            real = nn.Parameter(real, requires_grad=tensor.requires_grad)
                        made[id(tensor)] = real
                    table[name] = made[id(tensor)]  # type: ignore[assignment]
    return module
