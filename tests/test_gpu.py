"""What only a GPU shows: no host-device synchronisation on steps that write nothing.

Skipped without CUDA (CI has none). ``torch.cuda.set_sync_debug_mode("error")`` makes any
synchronising call (``.item()``, ``.tolist()``, a blocking copy to the host, ``nonzero``) raise.
"""

from __future__ import annotations

import pytest
import torch
from conftest import MemoryLogger, MultiTask, make_trainer, multitask_data

from lightning_losses import _lightning

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class StrictMultiTask(MultiTask):
    """Runs the library's part of every step that writes nothing under sync debug mode "error"."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.strict_steps = 0

    def forward(self, batch):
        return self.losses(batch)  # MultiTask's recording calls float() on purpose: skip it

    def training_step(self, batch, batch_idx=0):
        output = self(batch)
        writes = _lightning.writes_step_metrics(self.trainer)
        torch.cuda.set_sync_debug_mode(0 if writes else "error")
        try:
            return self.total_loss(output, "train", batch)
        finally:
            torch.cuda.set_sync_debug_mode(0)
            self.strict_steps += not writes


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"loss_weights": {"depth": 0.5}},
        {"loss_weights": {"depth": lambda step: 1.0 / (1 + step)}},
        {"grad_diagnostics_every_n_steps": 2},
    ],
    ids=["plain", "constant-weights", "scheduled-weights", "grad-diagnostics"],
)
def test_steps_that_write_nothing_never_synchronise(options):
    logger = MemoryLogger()
    model = StrictMultiTask(**options)
    make_trainer(logger, accelerator="gpu", max_steps=12, log_every_n_steps=5).fit(
        model, multitask_data(n=128)
    )
    assert model.strict_steps >= 9
    assert [step for step, _ in logger.series("train/loss")] == [4, 9, 11]
