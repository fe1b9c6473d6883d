"""A deterministic CPU training run for the crash-recovery test.

    python tests/crash_job.py OUT [--resume] [--slow]

Trains MultiTask for 4 epochs with a checkpoint every 5 steps (``OUT/last.ckpt``); ``--slow``
sleeps a little per step so that the test can kill it mid-run; ``--resume`` continues from
``OUT/last.ckpt``. Writes the final parameters to ``OUT/params.pt``.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import MultiTask, make_trainer, multitask_data
from test_resume import ResumableLoader

warnings.filterwarnings("ignore")


class Slow(Callback):
    def on_train_batch_end(self, *args) -> None:
        time.sleep(0.05)


def main() -> None:
    out = Path(sys.argv[1])
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    callbacks = [ModelCheckpoint(dirpath=out, every_n_train_steps=5, save_last=True)]
    if "--slow" in sys.argv:
        callbacks.append(Slow())
    trainer = make_trainer(
        None, max_epochs=4, log_every_n_steps=3, enable_checkpointing=True, callbacks=callbacks
    )
    module = MultiTask()
    resume = out / "last.ckpt" if "--resume" in sys.argv else None
    trainer.fit(module, ResumableLoader(list(multitask_data())), ckpt_path=resume)
    torch.save([p.detach() for p in module.parameters()], out / "params.pt")


if __name__ == "__main__":
    main()
