"""The number of samples in a batch: the weight of a batch in ``val/`` and ``test/`` means.

Lightning's ``extract_batch_size`` returns the first dimension of the first tensor it finds. For a
detection batch ``(list of images, list of target dicts)`` that is the first image's channel
count (3), not the number of images, so evaluation means were weighted by 3 whatever the batch
held. The rule here reads a batch the way collate functions build them:

- a tensor: its first dimension (a 0-dim tensor is one sample);
- a mapping (a HuggingFace batch ``{"input_ids": (B, T), ...}``, ``{"images": [...], ...}``) or
  a top-level tuple or list (``(x, y)``, a ``TensorDataset`` batch ``[x]``): the size of its first
  value that has one, where a list or tuple *inside* it (the list of images, the list of target
  dicts) counts its elements, since each element is one sample;
- a top-level list of things without a size (numbers, strings): its length;
- a dataclass or namedtuple: like a mapping of its fields (namedtuples like tuples);
- nothing with a size (numbers, strings, ``None``, empty containers): 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor


def batch_size(batch: Any) -> int:
    """How many samples ``batch`` holds (see the module docstring for the rule and why)."""
    size = _size(batch, nested=False)
    return size if size is not None else 1


def _size(value: Any, nested: bool) -> int | None:
    if isinstance(value, Tensor):
        return int(value.shape[0]) if value.dim() > 0 else 1
    if isinstance(value, Mapping):
        return _first_size(value.values())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _first_size(getattr(value, f.name) for f in dataclasses.fields(value))
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if nested:
            return len(value) if len(value) > 0 else None  # one sample per element
        size = _first_size(value)
        if size is None and len(value) > 0:
            return len(value)  # a plain list of samples without sizes (numbers, strings)
        return size
    return None


def _first_size(values: Any) -> int | None:
    """The size of the first value that has one; a list among them is a list of samples."""
    for value in values:
        size = _size(value, nested=True)
        if size is not None:
            return size
    return None
