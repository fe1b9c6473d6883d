"""What a training step's forward runs under for the router to do its job under
``torch.compile``: eagerly when the router must see an eager graph, and without donated buffers
once some route needs a backward of its own."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

NOTHING = contextlib.nullcontext()


class CompileContext:
    """``force_eager`` (``torch.compiler.set_stance``, torch 2.6+) and/or no donated buffers
    for one forward. The config is set and restored directly: ``config.patch`` costs ~70 us a
    step, set and restore ~10 us, paid only by routes that need several backwards."""

    def __init__(self, eager: bool, keep_buffers: bool) -> None:
        self.eager, self.keep_buffers = eager, keep_buffers
        self._stance: Any = None
        self._config: Any = None
        self._donated: Any = None

    def __enter__(self) -> None:
        set_stance = getattr(torch.compiler, "set_stance", None)
        if self.eager and set_stance is not None:
            self._stance = set_stance("force_eager")  # set on construction, undone on exit
        if self.keep_buffers:
            # torch's own remedy, named in its error: a compiled backward that donated its
            # buffers cannot run a second time (autograd.grad with retain_graph=True)
            config = getattr(getattr(torch, "_functorch", None), "config", None)
            if config is not None and getattr(config, "donated_buffer", False):
                self._config, self._donated = config, config.donated_buffer
                config.donated_buffer = False

    def __exit__(self, *exc: object) -> None:
        if self._config is not None:
            self._config.donated_buffer = self._donated
        if self._stance is not None:
            self._stance.__exit__(None, None, None)
