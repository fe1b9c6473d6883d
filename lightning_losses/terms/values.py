"""What a returned value is, in words and in kind: the names the library reserves, a loss term's
type, and descriptions of values for error messages."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from torch import Tensor

SEPARATOR = "/"
#: The name a bare scalar return gets, and the name of the weighted total in the logs.
TOTAL = "loss"


def describe(value: Any) -> str:
    """A short human description of a returned value, for error messages."""
    if isinstance(value, Tensor):
        if value.dim() == 0:
            return f"a 0-dim tensor of dtype {value.dtype}"
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"a value of type {type(value).__name__}"


def is_loss_tensor(value: Any) -> bool:
    """A loss term is a 0-dim real floating tensor; anything else cannot be summed into a loss."""
    return isinstance(value, Tensor) and value.dim() == 0 and value.is_floating_point()


def is_scalar(value: Any) -> bool:
    """Scalars are loggable: 0-dim real tensors and real Python numbers."""
    if isinstance(value, Tensor):
        return value.dim() == 0 and not value.is_complex()
    return isinstance(value, numbers.Real)


def check_term_devices(terms: Mapping[str, Any], what: str = "loss terms") -> None:
    """Raise a ValueError naming each value's device when they are not all on one real device.

    Called only after torch refused to stack them (or stacked them on ``meta``), so the normal
    path pays nothing for it.
    """
    devices = {name: value.device for name, value in terms.items() if isinstance(value, Tensor)}
    if len(set(devices.values())) > 1 or any(d.type == "meta" for d in devices.values()):
        found = ", ".join(f"{name!r} on {device}" for name, device in devices.items())
        raise ValueError(f"expected all {what} on one real device; found {found}")
