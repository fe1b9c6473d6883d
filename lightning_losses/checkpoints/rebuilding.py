"""Constructor arguments rebuilt from a checkpoint's plain values: class paths looked up among
modules already imported and called only when they name a subclass of what the argument
expects, what was left out replaced by its default with a warning (or an error saying what to
pass); and the skeletons that older checkpoints held (see :mod:`hparams`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_losses import _lightning
from lightning_losses.checkpoints.encoding import (
    CONSTRUCTOR,
    FACTORIES,
    INSTANCES,
    WEIGHTLESS,
    arguments,
)
from lightning_losses.checkpoints.plain import (
    MISSING,
    NOT_SAVED,
    is_not_saved,
    lookup,
    yaml_plain,
)

#: Where checkpoints written by lightning_losses <= 0.x kept pickled arguments (never read now).
LEGACY_PICKLED = "pickled_hyper_parameters"


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
        return CONSTRUCTOR[0].parameters[name].default
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
    elif not isinstance(init_args, dict) or yaml_plain(init_args) is MISSING:
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
