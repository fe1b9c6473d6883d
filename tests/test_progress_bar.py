"""The progress bar shows the total (and the ``prog_bar=`` terms) as Python floats: the first
step's own values from the first step, then each write's window means (what the loggers got),
so that a step that writes nothing reads nothing from the device (API.md section 3, 0.4)."""

from __future__ import annotations

import statistics
from typing import Any

import lightning as L
import pytest
from conftest import MemoryLogger, MultiTask, make_trainer, multitask_data
from lightning.pytorch.callbacks import TQDMProgressBar


class Seen(L.Callback):
    def __init__(self) -> None:
        self.values: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: Any, module: Any, *args: Any) -> None:
        shown = trainer.progress_bar_metrics
        self.values.append({k: float(v) for k, v in shown.items() if k.startswith("train/")})


@pytest.mark.parametrize("nonfinite", ["raise", "skip"])  # the fast path and the full path
def test_the_bar_shows_the_first_step_then_each_windows_means(nonfinite: str) -> None:
    seen, logger = Seen(), MemoryLogger()
    model = MultiTask(loss_weights={"depth": 0.5}, prog_bar=["loss", "seg"], nonfinite=nonfinite)
    trainer = make_trainer(
        logger, max_epochs=1, log_every_n_steps=3, callbacks=[seen], enable_progress_bar=True
    )
    trainer.fit(model, multitask_data())
    assert len(seen.values) == len(model.records) == 8
    totals = [r["seg"] + 0.5 * r["depth"] for r in model.records]
    segs = [r["seg"] for r in model.records]
    for name, values in (("train/loss", totals), ("train/seg", segs)):
        # steps 0-1: step 0's own value; 2-4: the window written at step 2; 5-7: at step 5
        expected = [values[0]] * 2
        expected += [statistics.fmean(values[0:3])] * 3 + [statistics.fmean(values[3:6])] * 3
        assert [shown[name] for shown in seen.values] == pytest.approx(expected, rel=1e-6)
        written = dict(logger.series(name))
        assert seen.values[2][name] == written[2] and seen.values[5][name] == written[5]
    assert all("train/depth" not in shown for shown in seen.values)


def test_without_a_progress_bar_the_first_step_reads_nothing() -> None:
    seen = Seen()  # (enable_progress_bar=False: the first step's value is not read for a bar)
    make_trainer(max_steps=2, log_every_n_steps=50, callbacks=[seen]).fit(
        MultiTask(), multitask_data()
    )
    assert seen.values == [{}, {}]


def test_tqdm_draws_the_values(capsys: pytest.CaptureFixture[str]) -> None:
    model = MultiTask()
    trainer = make_trainer(
        max_epochs=1, enable_progress_bar=True, callbacks=[TQDMProgressBar(refresh_rate=1)]
    )
    trainer.fit(model, multitask_data())
    captured = capsys.readouterr()
    drawn = captured.out + captured.err
    assert "train/loss=" in drawn and "tensor(" not in drawn
