"""Our constructor arguments written as plain values: a module as ``{"class_path": ...,
"init_args": {...}}`` when its arguments are known and plain, an optimizer or scheduler class
(or a ``functools.partial`` of one) likewise, ``loss_weights`` with its constants, and
``{"not_saved": "<why>"}`` for anything else (see :mod:`hparams`).
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.core.mixins import HyperparametersMixin
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lightning_losses import _lightning
from lightning_losses.checkpoints.plain import (
    MISSING,
    NOT_SAVED,
    class_path,
    describe_value,
    is_not_saved,
    not_saved,
    unimportable,
    yaml_plain,
)

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

#: ``LossDictModule.__init__``'s signature, handed over by module.py when the class is made (so
#: that this module, which module.py uses, never imports it back).
CONSTRUCTOR: list[inspect.Signature] = []


def use_constructor(init: Any) -> None:
    """Record the constructor whose arguments are saved and rebuilt here."""
    CONSTRUCTOR[:] = [inspect.signature(init)]


def arguments() -> tuple[str, ...]:
    """The names of ``LossDictModule.__init__``'s arguments."""
    return tuple(CONSTRUCTOR[0].parameters)[1:]


def _constructor_arguments(module: nn.Module) -> dict[str, Any] | str:
    """The plain arguments that rebuild ``module``'s structure, or why they are unknown."""
    own = _own_arguments(module)
    if own is not None:
        return own
    if isinstance(module, HyperparametersMixin) and _lightning.saved_hyperparameters(module):
        recorded = yaml_plain(dict(module.hparams_initial))
        if recorded is MISSING:
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
        elif yaml_plain(value) is MISSING:
            return f"its argument {name} is {describe_value(value)}"
        encoded[name] = yaml_plain(value) if not isinstance(value, dict) else value
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
        elif value is MISSING and name == "shape" and len(tensors) >= 1:
            value = list(next(iter(tensors.values())).shape)
            value = value[0] if len(value) == 1 else value
        if value is MISSING:
            if parameter.default is inspect.Parameter.empty:
                return (
                    f"torchjd's {type(module).__name__} does not keep its argument {name}, so it "
                    "cannot be rebuilt from a checkpoint"
                )
            continue  # built at its default
        if yaml_plain(value) is MISSING and not isinstance(value, nn.Module):
            if value is parameter.default:
                continue
            if parameter.default is not inspect.Parameter.empty:
                opaque.append(name)  # built by default (UPGrad's projector)? checked below
                continue
            return f"its argument {name} is {describe_value(value)}"
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
                return f"its argument {name} is {describe_value(_kept(module, name))}"
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
    return MISSING


def _encode_instance(value: Any) -> Any:
    if not isinstance(value, nn.Module):
        return value if yaml_plain(value) is not MISSING else not_saved(describe_value(value))
    cls = type(value)
    why = unimportable(cls)
    if why is None:
        arguments = _constructor_arguments(value)
        if isinstance(arguments, dict):
            return {"class_path": class_path(cls), "init_args": arguments}
        why = arguments
    return not_saved(f"{class_path(cls)}: {why}")


def _encode_factory(value: Any, bases: tuple[type, ...]) -> Any:
    plain = yaml_plain(value)
    if plain is not MISSING:
        return plain  # None, or already written down
    target, arguments = value, {}
    if isinstance(value, functools.partial):
        if value.args:
            return not_saved(f"{describe_value(value)} has positional arguments")
        target, arguments = value.func, value.keywords
    if isinstance(target, type) and issubclass(target, bases):
        why = unimportable(target)
        init_args = yaml_plain(arguments)
        if why is None and init_args is not MISSING:
            return {"class_path": class_path(target), "init_args": init_args}
        return not_saved(f"{describe_value(value)}: {why or 'its arguments are not plain values'}")
    return not_saved(describe_value(value))


def _encode_weights(value: Any) -> Any:
    if not isinstance(value, Mapping):
        plain = yaml_plain(value)
        return plain if plain is not MISSING else not_saved(describe_value(value))
    encoded: dict[Any, Any] = {}
    for name, weight in value.items():
        if type(weight) in (int, float) or is_not_saved(weight):  # the latter written already
            encoded[name] = weight
        elif isinstance(weight, numbers.Real) or (
            isinstance(weight, Tensor) and weight.numel() == 1 and not weight.is_meta
        ):
            encoded[name] = float(weight)
        else:  # a schedule
            encoded[name] = not_saved(f"schedule {describe_value(weight)}")
    return encoded


def encode(name: str, value: Any) -> Any:
    """How our argument ``name`` is written into ``hyper_parameters`` (a plain value)."""
    if name in INSTANCES:
        return _encode_instance(value)
    if name in FACTORIES:
        return _encode_factory(value, FACTORIES[name])
    if name == "loss_weights":
        return _encode_weights(value)
    plain = yaml_plain(value)
    return plain if plain is not MISSING else not_saved(describe_value(value))
