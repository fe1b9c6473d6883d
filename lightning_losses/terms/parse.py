"""What ``forward`` returned -> loss terms, scalar metrics and pass-through outputs.

Pure functions over Python containers: no Trainer, no device work beyond reading tensor
metadata. Every error raised here names the offending key, what was found and what was expected,
because the user's only other clue would be a traceback deep inside Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lightning_losses import _warnings
from lightning_losses.terms.selector import KeySelector
from lightning_losses.terms.values import (
    SEPARATOR,
    TOTAL,
    describe,
    is_loss_tensor,
    is_scalar,
)


@dataclass
class ParsedOutput:
    """One batch's return value, split by role. Dicts keep the order ``forward`` returned."""

    terms: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, Tensor | float] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)


def flatten(output: Mapping[Any, Any]) -> dict[str, Any]:
    """Flatten nested mappings, joining keys with ``/``: ``{"rpn": {"cls": a}}`` -> ``rpn/cls``."""
    flat: dict[str, Any] = {}
    _flatten_into(flat, "", output)
    return flat


#: How deep returned mappings may nest. Real outputs nest two or three levels; the limit turns a
#: runaway (or self-containing) mapping into an error naming its path, not a RecursionError.
MAX_NESTING = 32


def _flatten_into(
    flat: dict[str, Any],
    prefix: str,
    mapping: Mapping[Any, Any],
    depth: int = 1,
    path: tuple[tuple[str, Mapping[Any, Any]], ...] = (),
) -> None:
    # ``path``: the (name, mapping) pairs from the root down to ``mapping``'s parent. Only nested
    # outputs pay for it (a flat mapping never recurses), and it is at most MAX_NESTING long.
    if depth > MAX_NESTING:
        raise ValueError(
            f"forward returned mappings nested more than {MAX_NESTING} levels deep (at "
            f"{_shorten(prefix)!r}); expected a mapping of names to values nested a few levels "
            "at most"
        )
    items = mapping.items() if isinstance(mapping, dict) else _read_items(mapping, prefix)
    for key, value in items:
        if key not in _VALID_KEYS:
            _check_key(key, prefix)
        name = f"{prefix}{SEPARATOR}{key}" if prefix else key
        # Tensors first: the common leaf, and a cheaper isinstance than the Mapping ABC.
        if not isinstance(value, Tensor) and isinstance(value, Mapping):
            ancestors = (*path, (prefix, mapping))
            for ancestor_name, ancestor in ancestors:
                if value is ancestor:
                    where = repr(_shorten(ancestor_name)) if ancestor_name else "the top level"
                    raise ValueError(
                        f"forward returned a mapping that contains itself: the value at "
                        f"{_shorten(name)!r} is the mapping at {where}; expected a tree of "
                        "mappings (a cycle would nest forever)"
                    )
            _flatten_into(flat, name, value, depth + 1, ancestors)
        elif name in flat:
            raise ValueError(
                f"forward returned two entries named {name!r} once nested keys are joined with "
                f"'{SEPARATOR}'; expected unique names"
            )
        else:
            flat[name] = value


def _read_items(mapping: Mapping[Any, Any], prefix: str) -> list[tuple[Any, Any]]:
    """The entries of a mapping that is not a dict, each read on its own: a ``__getitem__``
    that fails for one of its own keys is named, not a bare ``KeyError`` from deep inside."""
    items = []
    for key in mapping:
        try:
            items.append((key, mapping[key]))
        except Exception as error:
            name = f"{prefix}{SEPARATOR}{key}" if prefix else key
            raise TypeError(
                f"forward returned a {type(mapping).__name__} whose entry {_shorten(str(name))!r} "
                f"could not be read ({type(error).__name__}: {error}); expected a mapping whose "
                "every key can be looked up"
            ) from error
    return items


#: Keys already checked by :func:`_check_key` (keys repeat every step). Bounded, so that a model
#: inventing new keys forever cannot grow it without limit.
_VALID_KEYS: set[str] = set()
_VALID_KEYS_LIMIT = 100_000


def _check_key(key: Any, prefix: str) -> None:
    where = f"under {prefix!r}" if prefix else "at the top level"
    if not isinstance(key, str):
        raise TypeError(
            f"forward returned the key {key!r} ({describe(key)}) {where}; expected str keys"
        )
    # An empty path component would make two different nestings log under the same name
    # ("a//b" vs "a/b"), and loggers drop or rename such names.
    if not key or key.startswith(SEPARATOR) or key.endswith(SEPARATOR) or "//" in key:
        raise ValueError(
            f"forward returned the key {key!r} {where}; expected a non-empty name whose "
            f"'{SEPARATOR}'-separated parts are non-empty"
        )
    if len(_VALID_KEYS) < _VALID_KEYS_LIMIT:
        _VALID_KEYS.add(key)


def parse_output(output: Any, select: KeySelector, stage: str = "train") -> ParsedOutput | None:
    """Split a ``forward`` return value into loss terms, scalar metrics and pass-through outputs.

    Returns ``None`` for "nothing to learn from this batch": ``None`` or an empty mapping.
    ``stage`` matters for the default rule (see :class:`KeySelector`): only training can tell a
    term by its gradient.
    """
    if output is None:
        return None
    training = stage == "train"
    if isinstance(output, Tensor):
        if not is_loss_tensor(output):
            raise TypeError(
                f"forward returned {describe(output)}; expected a 0-dim floating tensor (the "
                "loss), a mapping of names to losses and other values, or None"
            )
        if training and torch.is_grad_enabled():
            select.is_term(TOTAL, output, training)  # a verdict, so evaluation knows it too
        return ParsedOutput(terms={TOTAL: output})
    if not isinstance(output, Mapping):
        raise TypeError(
            f"forward returned {describe(output)}; expected a 0-dim floating tensor (the loss), "
            "a mapping of names to losses and other values, or None"
        )
    if select.total_key is not None:
        return _parse_with_total(output, select, training)
    if not select.explicit:
        fast = _all_loss_terms(output, select, training)
        if fast is not None:
            return fast
    flat = flatten(output)
    if not flat:
        return None
    parsed = ParsedOutput()
    terms, explicit = parsed.terms, select.explicit
    for name, value in flat.items():
        if select.is_term(name, value, training):
            if explicit and not is_loss_tensor(value):
                raise TypeError(
                    f"loss term {name!r} (selected by loss_keys) is {describe(value)}; "
                    "expected a 0-dim floating tensor"
                )
            terms[name] = value
        elif explicit and name == TOTAL:
            # loss_keys chose the terms, and "loss" is not one of them (a HuggingFace model's own
            # sum of the terms chosen): train/loss is our weighted total, so it passes through
            parsed.outputs[name] = value
        elif is_scalar(value):
            parsed.metrics[name] = value
        else:
            parsed.outputs[name] = value
    if TOTAL in terms and len(terms) > 1 and not training and not explicit and not select.trained:
        # Evaluation before any training step (Lightning's sanity check, validate() on a fresh
        # model) cannot tell terms by their gradient; a key named "loss" can only be the loss
        # (HuggingFace outputs), so the other values beside it are metrics.
        for name in [n for n in terms if n != TOTAL]:
            parsed.metrics[name] = terms.pop(name)
    _check_reserved(parsed)
    if explicit and select.rejected:  # a name new to loss_keys, not selected: a typo?
        select.check_spelling()
    if parsed.outputs and training and terms and not explicit and list(terms) != [TOTAL]:
        # (beside a lone "loss", a HuggingFace output, the other entries are the model's outputs)
        _warn_unreduced(parsed.outputs, select)
    if parsed.metrics and training and not explicit and select.names_any:
        _warn_named_numbers(parsed.metrics, select)
    return parsed


def _warn_named_numbers(metrics: Mapping[str, Any], select: KeySelector) -> None:
    """A value that can never be a loss term (a Python number, an integer tensor) under a name
    the configuration gives a weight or a route: most likely a loss whose gradient was dropped
    (``.item()``, ``float()``), which would silently never train. One warning per name; a name
    that has been a term before is left alone (an integer value on one step is a metric there)."""
    for name, value in metrics.items():
        if isinstance(value, Tensor) and value.is_floating_point():
            continue  # without a gradient now, perhaps with one on other steps (API.md §1)
        if (
            select.names_exactly(name)
            and name not in select.trained_terms
            and name not in select.warned_unreduced
        ):
            select.warned_unreduced.add(name)
            _warnings.warn(
                f"forward returned {name!r} as {describe(value)}, which is logged as a metric, "
                f"but the configuration names {name!r} as a loss term (loss_weights, an "
                "optimizer route or a weighting's terms): it is neither weighted nor trained "
                "on. If it is a loss, return the tensor itself (.item() and float() drop its "
                "gradient); if it is a metric, remove it from the configuration"
            )


def _warn_unreduced(outputs: Mapping[str, Any], select: KeySelector) -> None:
    """A floating tensor with dimensions that carries a gradient beside loss terms is most
    likely a loss whose ``.mean()`` was forgotten (``reduction="none"``, a shape-``(1,)`` sum):
    passed through, it would silently never train. One warning per name; an error where the
    configuration names it as a term (a weight or a route under its exact name): the user then
    meant it as a loss, and it would train nothing under that name."""
    for name, value in outputs.items():
        if (
            isinstance(value, Tensor)
            and value.requires_grad
            and value.is_floating_point()
            and value.dim() > 0
            and value.numel() > 0
            and name not in select.warned_unreduced
        ):
            if select.names_exactly(name):
                raise TypeError(
                    f"loss term {name!r} is {describe(value)} that carries a gradient; expected "
                    f"a 0-dim floating tensor. {name!r} is named as a loss term in the "
                    "configuration (loss_weights, an optimizer route or a weighting's terms), "
                    f"so reduce it in forward ({_reduce_hint(value)})"
                )
            select.warned_unreduced.add(name)
            _warnings.warn(
                f"forward returned {name!r}, {describe(value)} that carries a gradient, beside "
                "loss terms: it is passed through, neither trained on nor logged. If it is a "
                f"loss, reduce it to a 0-dim tensor ({_reduce_hint(value)}); if it is an "
                "output, detach it or pass loss_keys= to name the terms and silence this warning"
            )


def _reduce_hint(value: Tensor) -> str:
    """How to make ``value`` a 0-dim loss, in words."""
    if value.numel() == 1:
        return "a one-element tensor of shape (1,) needs .squeeze()"
    return "a forgotten .mean()? reduction='none' keeps one value per sample"


def _parse_with_total(
    output: Mapping[Any, Any], select: KeySelector, training: bool
) -> ParsedOutput | None:
    """``total_key``: the model summed its own terms into one entry (HuggingFace's ``loss``,
    which already holds ``router_aux_loss_coef * aux_loss``, or DETR's weighted ``loss_dict``).

    That entry is the one term (logged as the total, ``train/loss``, and backpropagated as it
    is); every other scalar is one of its parts or a metric, logged under its own name and never
    added again, gradient or not.
    """
    key = select.total_key
    flat = flatten(output)
    if not flat:
        return None
    parsed = ParsedOutput()
    total = flat.pop(key, None)  # type: ignore[arg-type]
    if total is not None:
        if not is_loss_tensor(total):
            raise TypeError(
                f"total_key {key!r} is {describe(total)}; expected a 0-dim floating tensor (the "
                "model's own total loss)"
            )
        parsed.terms[TOTAL] = total
        if training and torch.is_grad_enabled():
            select.is_term(TOTAL, total, training)  # a verdict, so evaluation knows it too
    for name, value in flat.items():
        if is_scalar(value):
            parsed.metrics[name] = value
        else:
            parsed.outputs[name] = value
    if total is None and training:
        found = ", ".join(map(repr, flat)) or "nothing"
        raise ValueError(
            f"total_key={key!r}, but forward returned no {key!r} in training (found {found}); "
            f"expected the model's total loss under {key!r} (HuggingFace models compute it when "
            "the batch has labels), or None for a batch with nothing to learn"
        )
    if TOTAL in parsed.metrics and parsed.terms:
        raise ValueError(
            f"forward returned an entry named {TOTAL!r} ({describe(parsed.metrics[TOTAL])}) next "
            f"to total_key {key!r}; {TOTAL!r} is where that total is logged, so expected "
            "another name for it"
        )
    return parsed


def _all_loss_terms(
    output: Mapping[Any, Any], select: KeySelector, training: bool
) -> ParsedOutput | None:
    """The common step in one pass: a flat mapping of known keys to loss terms.

    Returns ``None`` (take the general path) as soon as anything else shows up: an unchecked key,
    a value that is not a 0-dim floating tensor, one without a gradient in training, or a name
    training has not seen as a term.
    """
    if not isinstance(output, dict) or not output or TOTAL in output:
        # let the general path handle (or explain) the reserved name and other mappings
        return None
    known = select.trained_terms
    grad = training and torch.is_grad_enabled()
    for key, value in output.items():
        if not (
            key in _VALID_KEYS
            and isinstance(value, Tensor)
            and value.ndim == 0
            and value.is_floating_point()
            and ((value.requires_grad and key in known) if grad else key in known)
        ):
            return None
    return ParsedOutput(terms=dict(output))


def _check_reserved(parsed: ParsedOutput) -> None:
    # "loss" is where the weighted total is logged; a term of that name is only unambiguous when it
    # is the sole term (then it *is* the total, as for a bare scalar return).
    if TOTAL in parsed.terms and len(parsed.terms) > 1:
        others = ", ".join(repr(k) for k in parsed.terms if k != TOTAL)
        raise ValueError(
            f"forward returned a loss term named {TOTAL!r} next to other loss terms ({others}); "
            f"{TOTAL!r} is the name of their weighted total, so expected another name for it. "
            f"If {TOTAL!r} already includes the others (HuggingFace outputs: MoE aux_loss, "
            f"DETR loss_dict), pass total_key={TOTAL!r} to train on it and log the others as "
            "its parts"
        )
    if TOTAL in parsed.metrics and parsed.terms:
        raise ValueError(
            f"forward returned a metric named {TOTAL!r} ({describe(parsed.metrics[TOTAL])}) next "
            f"to loss terms; {TOTAL!r} is the name of their weighted total, so expected another "
            "name for it"
        )


def no_terms_message(parsed: ParsedOutput, select: KeySelector, selection: str) -> str:
    """Why a training batch that returned entries has nothing to backpropagate."""
    found = ", ".join(
        f"{name!r}: {describe(value)}"
        for name, value in {**parsed.metrics, **parsed.outputs}.items()
    )
    wanted = (
        f"an entry selected by loss_keys={selection}"
        if select.explicit
        else "a 0-dim floating tensor that carries a gradient; 0-dim values without one are "
        "logged as metrics (are the parameters they come from frozen, or was forward run "
        "under no_grad?), and a one-element loss of shape (1,) needs .squeeze()"
    )
    return (
        f"forward returned no loss term in training (found {found}); expected at least one "
        f"loss term ({wanted}), or None for a batch with nothing to learn"
    )


def _shorten(name: str, limit: int = 120) -> str:
    """A key path short enough for an error message: its start and its end, elided between."""
    if len(name) <= limit:
        return name
    return f"{name[: limit // 2]}...{name[-(limit // 3) :]}"
