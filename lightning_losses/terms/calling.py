"""How a wrapped model is called with a batch: ``model(batch)``, ``model(*batch)`` or
``model(**batch)``.

Models written for other training loops take their inputs the way their authors' loops pass them:
a torchvision detector wants ``model(images, targets)``, a HuggingFace model ``model(**batch)``,
a model fed by a ``TensorDataset`` ``model(x)`` where the loader yields ``[x]``. Calling all of
them ``model(batch)`` fails deep inside the model (``targets should not be none``, ``linear():
argument 'input' must be Tensor, not list``), far from the one option that fixes it.

``call="auto"`` (the default) reads the batch's structure and the model's ``forward`` signature
once per structure: a mapping is unpacked as keywords, a tuple or list as positional arguments,
when the signature accepts that; a batch the signature only accepts whole (``forward(self,
batch)``) is passed whole. The rules, in order:

* a mapping: ``model(**batch)`` if every key names a parameter of ``forward``; else
  ``model(batch)`` if ``forward``'s first parameter is required and takes the batch alone;
  else ``model(**batch)`` if ``forward`` takes ``**kwargs``; else ``model(batch)`` if it fits;
* a tuple or list: ``model(batch)`` if ``forward``'s first parameter is named ``batch``; else
  ``model(*batch)`` if the signature accepts that many arguments; else ``model(batch)``;
* anything else (a tensor): ``model(batch)``.

When no way fits the signature, the error says so before the model runs; when the call fails
inside the model, the error gets a note naming the batch's structure, how the model was called,
and ``call=``. Pass ``call="batch"``, ``"positional"`` or ``"keyword"`` to choose, or a callable
``(model, batch) -> output`` for anything else (``lambda m, b: m(b["pixel_values"],
labels=b["labels"])``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

CallMode = Literal["auto", "batch", "positional", "keyword"]
#: ``call=`` as users give it: a mode, or ``(model, batch) -> output``.
Call = CallMode | Callable[[nn.Module, Any], Any]
CALL_MODES = ("auto", "batch", "positional", "keyword")

_PASS_WHOLE = "batch"
_DECISIONS_LIMIT = 256


def check_call(call: Any) -> None:
    """Raise at construction for a ``call=`` that can never work."""
    if callable(call) or call in CALL_MODES:
        return
    raise ValueError(
        f"call={call!r}; expected one of {', '.join(map(repr, CALL_MODES))} or a callable "
        "(model, batch) -> output"
    )


class ModelCall:
    """Calls a wrapped model with a batch, the way ``call=`` says (see the module doc).

    ``"auto"`` decides once per batch structure (container type, length or keys) and caches the
    decision, so a step pays a dictionary lookup for it.
    """

    def __init__(self, call: Call = "auto") -> None:
        check_call(call)
        self.call = call
        self._decisions: dict[tuple[Any, ...], str] = {}

    def __call__(self, model: nn.Module, batch: Any) -> Any:
        call = self.call
        if callable(call):
            how = "call"
        elif call == "auto":
            how = self._decide(model, batch)
        else:
            how = call
            _check_unpackable(how, batch)
        try:
            if how == "call":
                return call(model, batch)  # type: ignore[operator]
            if how == "positional":
                return model(*batch)
            if how == "keyword":
                return model(**batch)
            return model(batch)
        except Exception as error:
            # The model's own error stays what it is (type and message); the note says how it
            # was called, which is the usual cause when a model from elsewhere fails here.
            add_note = getattr(error, "add_note", None)  # Python >= 3.11
            if add_note is not None and not isinstance(error, torch.OutOfMemoryError):
                add_note(_call_note(model, batch, how, self.call))
            raise

    def _decide(self, model: nn.Module, batch: Any) -> str:
        # Once per step: exact type checks first (tuples and lists are the common batches), a
        # plain dict lookup, the ABC check only for the rest.
        kind = type(batch)
        if kind is tuple or kind is list:
            key: tuple[Any, ...] = (type(model), kind, len(batch))
        elif isinstance(batch, Tensor):
            return _PASS_WHOLE
        elif isinstance(batch, Mapping):
            key = (type(model), kind, tuple(batch))
        elif isinstance(batch, (tuple, list)):
            key = (type(model), kind, len(batch))
        else:
            return _PASS_WHOLE
        how = self._decisions.get(key)
        if how is None:
            how = decide(model, batch)
            if len(self._decisions) >= _DECISIONS_LIMIT:  # a model inventing batch keys forever
                self._decisions.clear()
            self._decisions[key] = how
            if how != _PASS_WHOLE:
                rank_zero_info(
                    f"LossDictModule calls {_forward_name(model)}{_spelled(how)} for a batch that "
                    f"is {describe_batch(batch)} (call='auto'; pass call= to choose)"
                )
        return how


def decide(model: nn.Module, batch: Any) -> str:
    """``"batch"``, ``"positional"`` or ``"keyword"`` for ``call="auto"`` (the module doc's
    rules); a TypeError naming the batch's structure when none fits ``forward``'s signature."""
    signature = _signature(model)
    if signature is None:
        return _PASS_WHOLE  # a scripted or C++ forward: the documented default
    params = list(signature.parameters.values())
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    whole = _binds(signature, (batch,), {})
    if isinstance(batch, Mapping):
        keyword_names = {
            p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        keys_are_strings = all(isinstance(k, str) for k in batch)
        unpacked = keys_are_strings and _binds(signature, (), dict(batch))
        if unpacked and set(batch) <= keyword_names:
            return "keyword"
        if whole and positional and positional[0].default is inspect.Parameter.empty:
            return _PASS_WHOLE  # forward(self, batch): a required argument for the batch
        if unpacked:
            return "keyword"  # through **kwargs (a HuggingFace model and an extra key)
        if whole:
            return _PASS_WHOLE
    else:
        if whole and positional and positional[0].name == "batch":
            return _PASS_WHOLE
        if _binds(signature, tuple(batch), {}):
            return "positional"
        if whole:
            return _PASS_WHOLE
    raise TypeError(
        f"cannot call {_forward_name(model)}{signature} with a batch that is "
        f"{describe_batch(batch)}: neither model(batch) nor model({_unpack(batch)}batch) fits "
        "that signature; expected call='batch', 'positional' or 'keyword', or a callable "
        "(model, batch) -> output that calls the model"
    )


def describe_batch(batch: Any, depth: int = 2) -> str:
    """The batch's structure in a few words: ``a tuple of 2 (Tensor[8, 3, 32, 32] float32, list
    of 8 dict with keys 'boxes', 'labels')``."""
    if isinstance(batch, Tensor):
        return (
            f"Tensor[{', '.join(map(str, batch.shape))}] {str(batch.dtype).replace('torch.', '')}"
        )
    if isinstance(batch, Mapping):
        keys = list(batch)
        shown = ", ".join(repr(k) for k in keys[:8]) + (", ..." if len(keys) > 8 else "")
        head = f"a {type(batch).__name__} with keys {shown}" if keys else "an empty mapping"
        if depth <= 1 or not keys:
            return head
        parts = ", ".join(f"{k!r}: {describe_batch(batch[k], depth - 1)}" for k in keys[:4])
        return f"{head} ({parts}{', ...' if len(keys) > 4 else ''})"
    if isinstance(batch, (tuple, list)):
        head = f"a {type(batch).__name__} of {len(batch)}"
        if depth <= 1 or not batch:
            return head
        parts = ", ".join(describe_batch(item, depth - 1) for item in batch[:4])
        return f"{head} ({parts}{', ...' if len(batch) > 4 else ''})"
    return f"a {type(batch).__name__}"


def _signature(model: nn.Module) -> inspect.Signature | None:
    try:
        return inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None


def _binds(signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    try:
        signature.bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def _check_unpackable(how: str, batch: Any) -> None:
    if how == "positional" and (
        isinstance(batch, (Tensor, Mapping, str)) or not isinstance(batch, (tuple, list))
    ):
        raise TypeError(
            f"call='positional' unpacks the batch as model(*batch), but the batch is "
            f"{describe_batch(batch)}; expected a tuple or list (or call='batch', 'keyword', or "
            "a callable (model, batch) -> output)"
        )
    if how == "keyword" and not isinstance(batch, Mapping):
        raise TypeError(
            f"call='keyword' unpacks the batch as model(**batch), but the batch is "
            f"{describe_batch(batch)}; expected a mapping of argument names to values (or "
            "call='batch', 'positional', or a callable (model, batch) -> output)"
        )


def _call_note(model: nn.Module, batch: Any, how: str, call: Call) -> str:
    chosen = "call=<your callable>" if callable(call) else f"call={call!r}"
    spelled = " through your callable" if how == "call" else f" as {_spelled(how)}"
    others = [repr(mode) for mode in ("batch", "positional", "keyword") if mode != how]
    options = f"call={', '.join(others[:-1])} or {others[-1]}"
    if how != "call":
        options += ", or a callable (model, batch) -> output"
    return (
        f"lightning_losses: {_forward_name(model)} was called{spelled} ({chosen}) with a batch "
        f"that is {describe_batch(batch)}; if the model takes its inputs another way, pass "
        f"{options}"
    )


def _forward_name(model: nn.Module) -> str:
    return f"{type(model).__name__}.forward"


def _spelled(how: str) -> str:
    return {"positional": "(*batch)", "keyword": "(**batch)"}.get(how, "(batch)")


def _unpack(batch: Any) -> str:
    return "**" if isinstance(batch, Mapping) else "*"
