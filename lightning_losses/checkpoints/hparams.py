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
  from the module, see ``encoding._own_arguments``; a scalarizer inside its wrapper is a nested
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

This module saves (``save``, ``for_checkpoint``); writing an argument as plain values is
:mod:`~lightning_losses.checkpoints.encoding`'s job, reading it back
:mod:`~lightning_losses.checkpoints.rebuilding`'s, and what a plain value is
:mod:`~lightning_losses.checkpoints.plain`'s. The names other modules use are importable from
here.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.core.mixins import HyperparametersMixin
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.parsing import collect_init_args

from lightning_losses import _lightning
from lightning_losses.checkpoints.encoding import (
    FACTORIES,
    INSTANCES,
    WEIGHTLESS,
    arguments,
    encode,
    use_constructor,
)
from lightning_losses.checkpoints.plain import (
    NOT_SAVED,
    describe_value,
    is_not_saved,
    is_plain,
    not_saved,
    unsaved_parts,
)
from lightning_losses.checkpoints.rebuilding import (
    LEGACY_PICKLED,
    from_checkpoint,
    is_skeleton,
    load_arguments,
    materialize,
)


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
        stored[name] = next((e for e in encoded if not unsaved_parts(e, name)), encoded[0])
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
            written[name] = not_saved(describe_value(value))
        for where, why in unsaved_parts(written[name], name):
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


__all__ = [
    "FACTORIES",
    "INSTANCES",
    "LEGACY_PICKLED",
    "NOT_SAVED",
    "WEIGHTLESS",
    "arguments",
    "encode",
    "for_checkpoint",
    "from_checkpoint",
    "is_not_saved",
    "is_plain",
    "is_skeleton",
    "load_arguments",
    "materialize",
    "save",
    "use_constructor",
]
