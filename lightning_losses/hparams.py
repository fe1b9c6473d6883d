"""Hyperparameters that make ``load_from_checkpoint`` work without arguments, in both modes.

Lightning's ``save_hyperparameters`` stores the constructor's arguments, which is all a subclass
needs. Some of ours are modules (the wrapped ``model``, the ``weighting``, a torchjd
``aggregator``), and some can be lambdas (``optimizer``, schedule weights):

* Modules in ``hparams`` would be deep-copied at construction (doubling a detector's memory) and
  pickled with their weights into every checkpoint, beside the same weights in the state dict.
  They are left out of ``hparams`` and a *skeleton* of each (the module with its parameters and
  persistent buffers on the ``meta`` device: its structure and code, no data) is written into the
  checkpoint's hyperparameters instead; the constructor materialises a skeleton it receives, and
  Lightning then loads the real values from the state dict.
* A value that cannot be pickled (a lambda ``optimizer``) is dropped by Lightning itself at
  ``fit`` with a warning; ``load_from_checkpoint`` then uses the default, which is harmless: the
  optimizer and schedules matter only for training, and ``fit(ckpt_path=)`` resumes with the
  module you construct. A skeleton that cannot be pickled is left out the same way.
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


def with_skeletons(
    hparams: Mapping[str, Any], modules: Mapping[str, nn.Module | None], warned: set[str]
) -> dict[str, Any]:
    """The hyperparameters to write into a checkpoint: ``hparams`` plus a skeleton of each module
    argument. A module that cannot be pickled (a class defined inside a function) is left out
    with one warning naming it; ``load_from_checkpoint`` then needs it passed explicitly."""
    out = dict(hparams)
    for name, module in modules.items():
        if module is None or name in out:
            continue
        try:
            frame = skeleton(module)
            pickle.dumps(frame)
        except Exception as error:  # local classes, lambdas held as attributes, ...
            if name not in warned:
                warned.add(name)
                rank_zero_warn(
                    f"hyperparameter {name!r} ({type(module).__name__}) cannot be pickled "
                    f"({error}); checkpoints leave it out, so pass {name}=... to "
                    "load_from_checkpoint (define the class at module level to avoid this)"
                )
            continue
        out[name] = frame
    return out
