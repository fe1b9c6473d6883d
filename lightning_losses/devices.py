"""Small tensors made for a device without making the host wait (plans, weights, payloads are
built mid-run, and a GPU step must not stall for them)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def device_tensor(values: list[Any], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.tensor(values)`` on ``device`` without making the host wait: on a GPU through
    pinned memory and an asynchronous copy (a plain copy from pageable memory blocks until the
    device has caught up, which a plan built mid-run must not do). Made outside inference
    mode: plans built during ``validate()`` are reused by training."""
    with torch.inference_mode(False):
        host = torch.tensor(values, dtype=dtype)
        if device.type != "cuda":
            return host.to(device)
        return host.pin_memory().to(device, non_blocking=True)
