"""The progress bar shows the total (and the ``prog_bar=`` terms) from the first step, as a
plain ``self.log(prog_bar=True)`` would, read from the device only when the bar draws."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
from conftest import MultiTask, make_trainer, multitask_data
from lightning.pytorch.callbacks import TQDMProgressBar


class Seen(L.Callback):
    def __init__(self) -> None:
        self.values: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: Any, module: Any, *args: Any) -> None:
        shown = trainer.progress_bar_metrics
        self.values.append({k: float(v) for k, v in shown.items() if k.startswith("train/")})


@pytest.mark.parametrize("nonfinite", ["raise", "skip"])  # the fast path and the full path
def test_the_bar_shows_each_steps_total_from_the_first_step(nonfinite: str) -> None:
    seen = Seen()
    model = MultiTask(loss_weights={"depth": 0.5}, prog_bar=["loss", "seg"], nonfinite=nonfinite)
    make_trainer(max_epochs=1, log_every_n_steps=50, callbacks=[seen]).fit(model, multitask_data())
    assert len(seen.values) == len(model.records) == 8
    for shown, step in zip(seen.values, model.records):
        assert shown["train/loss"] == pytest.approx(step["seg"] + 0.5 * step["depth"], rel=1e-6)
        assert shown["train/seg"] == pytest.approx(step["seg"], rel=1e-6)
        assert "train/depth" not in shown


def test_tqdm_draws_the_values(capsys: pytest.CaptureFixture[str]) -> None:
    model = MultiTask()
    trainer = make_trainer(
        max_epochs=1, enable_progress_bar=True, callbacks=[TQDMProgressBar(refresh_rate=1)]
    )
    trainer.fit(model, multitask_data())
    captured = capsys.readouterr()
    drawn = captured.out + captured.err
    assert "train/loss=" in drawn and "tensor(" not in drawn
