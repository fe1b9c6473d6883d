"""Lightning's Tuner with a LossDictModule: the provided validation_step exists only where a val
loader does, so ``scale_batch_size`` runs without one (Lightning asks for a val loader wherever
``validation_step`` is defined)."""

from __future__ import annotations

import copy

from conftest import MemoryLogger, MultiTask, make_trainer, multitask_data
from lightning.pytorch.tuner import Tuner
from torch.utils.data import DataLoader


class Sized(MultiTask):
    def __init__(self) -> None:
        super().__init__()
        self.batch_size = 2

    def train_dataloader(self) -> DataLoader:
        return DataLoader(multitask_data(n=32).dataset, batch_size=self.batch_size)


def test_scale_batch_size_without_a_val_loader_then_validate_with_one():
    module = Sized()
    found = Tuner(make_trainer(None)).scale_batch_size(
        module, mode="power", max_trials=2, steps_per_trial=1
    )
    assert (found, module.batch_size) == (4, 4)  # the trials ran 2 and 4
    module = copy.deepcopy(module)
    logger = MemoryLogger()
    make_trainer(logger).validate(module, multitask_data(n=8))  # the provided validation_step
    (_, row), *_ = [r for r in logger.rows if "val/loss" in r[1]]
    assert {"val/loss", "val/seg", "val/depth"} <= set(row)
