"""Hyperparameters that make ``load_from_checkpoint`` work without arguments, in both modes,
while every checkpoint stays loadable with ``weights_only=True``.

Lightning's ``save_hyperparameters`` stores the constructor's arguments, which is all a subclass
needs. Some of ours are modules (the wrapped ``model``, the ``weighting``, a torchjd
``aggregator``) and some are code (``functools.partial(torch.optim.SGD, lr=0.1)``, schedules):

* Modules in ``hparams`` would be deep-copied at construction (doubling a detector's memory) and
  pickled with their weights into every checkpoint, beside the same weights in the state dict.
  They are left out of ``hparams``; a *skeleton* of each (the module with its parameters and
  persistent buffers on the ``meta`` device: its structure and code, no data) is stored instead,
  the constructor materialises a skeleton it receives, and the state dict fills in the values.
* torch >= 2.6 loads checkpoints with ``weights_only=True`` by default, and so does
  ``Trainer.fit(ckpt_path=...)``: one class object among the hyperparameters and resuming fails.
  So only plain values (numbers, strings, lists, dicts, tensors) stay in the checkpoint's
  ``hyper_parameters``; everything else (skeletons, partials, modules) is pickled into one bytes
  entry of our own. Resuming never unpickles it; ``LossDictModule.load_from_checkpoint`` does,
  unless called with ``weights_only=True``.
* A value that cannot be pickled at all (a lambda, a class defined inside a function) is left out
  with one warning naming it; ``load_from_checkpoint`` then uses its default or what you pass.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

#: Constructor arguments that are modules, stored as skeletons (see the module docstring).
MODULE_ARGUMENTS = ("model", "weighting", "aggregator")
_SKELETON_MARK = "_lightning_losses_skeleton"


def skeleton(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and persistent buffers live on the meta device."""
    memo: dict[int, Any] = {}
    for param in module.parameters():
        memo[id(param)] = nn.Parameter(
            torch.empty_like(param, device="meta"), requires_grad=param.requires_grad
        )
    for owner in module.modules():
        for name, buffer in owner._buffers.items():
            if buffer is not None and name not in owner._non_persistent_buffers_set:
                memo[id(buffer)] = torch.empty_like(buffer, device="meta")
    copied = copy.deepcopy(module, memo)
    copied.__dict__[_SKELETON_MARK] = True  # only our own skeletons are materialised on load
    return copied


def materialize(module: nn.Module) -> nn.Module:
    """Give a skeleton's meta tensors real (uninitialised) CPU storage, keeping tied ones tied.

    ``nn.Module.to_empty`` would also wipe non-persistent buffers, which the skeleton kept real
    because no state dict will restore them.
    """
    del module.__dict__[_SKELETON_MARK]
    made: dict[int, Tensor] = {}
    for owner in module.modules():
        for name, param in list(owner._parameters.items()):
            if param is not None and param.is_meta:
                if id(param) not in made:
                    made[id(param)] = nn.Parameter(
                        torch.empty_like(param, device="cpu"), requires_grad=param.requires_grad
                    )
                owner._parameters[name] = made[id(param)]  # type: ignore[assignment]
        for name, buffer in list(owner._buffers.items()):
            if buffer is not None and buffer.is_meta:
                if id(buffer) not in made:
                    made[id(buffer)] = torch.empty_like(buffer, device="cpu")
                owner._buffers[name] = made[id(buffer)]
    return module


def is_skeleton(module: nn.Module) -> bool:
    """Whether ``module`` is a skeleton written by :func:`portable` (a user's own meta-device
    model is left as it is)."""
    return bool(module.__dict__.get(_SKELETON_MARK, False))


_PLAIN = (type(None), bool, int, float, complex, str, bytes)


def is_plain(value: Any) -> bool:
    """Whether torch's ``weights_only`` unpickler accepts ``value`` (checked structurally)."""
    if isinstance(value, torch.Tensor):
        return type(value) is torch.Tensor  # not a Parameter or another subclass
    if type(value) in _PLAIN:
        return True
    if type(value) in (list, tuple):
        return all(is_plain(v) for v in value)
    if type(value) is dict:
        return all(is_plain(k) and is_plain(v) for k, v in value.items())
    return False


def split(
    hparams: Mapping[str, Any], modules: Mapping[str, nn.Module | None], warned: set[str]
) -> tuple[dict[str, Any], bytes | None]:
    """``(plain hyperparameters, the others pickled)`` to write into a checkpoint.

    ``modules`` are the module arguments left out of ``hparams``; each is added as a skeleton.
    """
    candidates = dict(hparams)
    for name, module in modules.items():
        if module is not None and name not in candidates:
            candidates[name] = skeleton(module)
    plain = {k: v for k, v in candidates.items() if is_plain(v)}
    code: dict[str, Any] = {}
    for name, value in candidates.items():
        if name in plain:
            continue
        try:
            pickle.dumps(value)
        except Exception as error:  # lambdas, local classes, open handles, ...
            if name not in warned:
                warned.add(name)
                rank_zero_warn(
                    f"hyperparameter {name!r} ({type(value).__name__}) cannot be pickled "
                    f"({error}); checkpoints leave it out, so pass {name}=... to "
                    "load_from_checkpoint (define it at module level, or use functools.partial, "
                    "to avoid this)"
                )
            continue
        code[name] = value
    return plain, pickle.dumps(code) if code else None


def unpickle(blob: bytes | None) -> dict[str, Any]:
    """The arguments :func:`split` pickled: runs code, like any unpickling."""
    return pickle.loads(blob) if blob else {}
