"""Resume: N epochs straight equal N/2, stop, and resume, bit for bit, in parameters and logs.

For every optimizer setup and weighting strategy, from an epoch-end checkpoint and from a
mid-epoch one (``every_n_train_steps``). A mid-epoch resume continues the epoch's data where it
stopped only if the dataloader can say where it was (``state_dict``/``load_state_dict``, as
torchdata's ``StatefulDataLoader`` can); ``ResumableLoader`` is the smallest such loader. The
library's part is the partly filled logging window and epoch means, which it saves in the
checkpoint, so the first write after resuming is the one an uninterrupted run made.
"""

from __future__ import annotations

import pytest
import torch
from conftest import MemoryLogger, MultiTask, make_trainer, multitask_data
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_losses.weighting import DynamicWeightAverage, GradNorm, UncertaintyWeighting


class ResumableLoader:
    """Fixed batches that resume mid-epoch from the position Lightning saved."""

    def __init__(self, batches) -> None:
        self.batches, self.start, self.position = batches, 0, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        start, self.start = self.start, 0
        for i in range(start, len(self.batches)):
            self.position = i + 1
            yield self.batches[i]

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.start = state["position"]


class PerKey(MultiTask):
    def configure_optimizers(self):
        seg = torch.optim.SGD([*self.trunk.parameters(), *self.seg.parameters()], lr=0.1)
        return {
            "seg": {"optimizer": seg, "lr_scheduler": torch.optim.lr_scheduler.StepLR(seg, 3)},
            "depth": torch.optim.Adam(self.depth.parameters(), lr=0.01),
        }


SETUPS = {
    "one-optimizer": lambda: MultiTask(loss_weights={"depth": lambda step: 1 / (1 + step)}),
    "per-key+scheduler": lambda: PerKey(),
    "uncertainty": lambda: MultiTask(weighting=UncertaintyWeighting(["seg", "depth"])),
    "dwa": lambda: MultiTask(weighting=DynamicWeightAverage(["seg", "depth"])),
    "gradnorm": lambda: MultiTask(weighting=GradNorm(["seg", "depth"], shared="trunk")),
}


def fit(module, logger=None, ckpt_path=None, callbacks=(), max_epochs=4):
    trainer = make_trainer(
        logger,
        max_epochs=max_epochs,
        log_every_n_steps=3,  # windows straddle checkpoints and epoch ends
        enable_checkpointing=bool(callbacks),
        callbacks=list(callbacks),
    )
    batches = list(multitask_data())
    trainer.fit(module, ResumableLoader(batches), multitask_data(n=24), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("where", ["epoch-end", "mid-epoch"])
@pytest.mark.parametrize("setup", list(SETUPS))
def test_resumed_run_equals_the_uninterrupted_one(setup, where, tmp_path):
    straight_log = MemoryLogger()
    straight = SETUPS[setup]()
    fit(straight, straight_log)

    if where == "epoch-end":  # 8 batches an epoch: after epoch 1
        saver = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1)
        checkpoint, step = tmp_path / "epoch=1-step=16.ckpt", 16
    else:
        saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=13, save_top_k=-1)
        checkpoint, step = tmp_path / "epoch=1-step=13.ckpt", 13
    fit(SETUPS[setup](), callbacks=[saver], max_epochs=2)
    resumed_log = MemoryLogger()
    resumed = SETUPS[setup]()
    fit(resumed, resumed_log, ckpt_path=checkpoint)

    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    assert resumed_log.rows == [(s, m) for s, m in straight_log.rows if s >= step]
