"""W&B in offline mode: every term reaches the run file, with the values the trainer wrote."""

import os
import subprocess
import sys

import pytest
from conftest import MemoryLogger, MultiTask, make_trainer, multitask_data

wandb = pytest.importorskip("wandb")
from wandb_offline import finish_and_read, history, metric_definitions, summary  # noqa: E402


def test_every_term_reaches_the_offline_run_with_the_same_values(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    from lightning.pytorch.loggers import WandbLogger

    memory = MemoryLogger()
    wandb_logger = WandbLogger(
        project="lightning-losses-tests", save_dir=str(tmp_path), offline=True
    )
    data = multitask_data()
    model = MultiTask(loss_weights={"depth": 0.5})
    make_trainer([wandb_logger, memory], max_epochs=2, log_every_n_steps=3).fit(model, data, data)
    # finish() alone returns before the W&B service has flushed the run file (it was read empty)
    run_file = finish_and_read(wandb_logger.experiment)
    assert run_file.is_relative_to(tmp_path), run_file
    rows = history(run_file)
    logged = {}
    for row in rows:
        for key, value in row.items():
            if key.split("/")[0] in ("train", "val", "weight"):
                logged.setdefault(key, []).append((row["trainer/global_step"], value))
    expected = {}
    for step, metrics in memory.rows:
        for key, value in metrics.items():
            if key != "epoch":
                expected.setdefault(key, []).append((step, value))
    assert (
        set(logged)
        == set(expected)
        >= {"train/seg", "train/depth", "train/loss", "weight/depth", "val/seg", "train/seg_epoch"}
    )
    for key in expected:
        assert logged[key] == [(s, pytest.approx(v, rel=1e-6)) for s, v in expected[key]], key

    # losses (terms and totals, step and epoch) keep their last value as the summary and get
    # their minimum beside it, on the trainer's step axis; metrics and weights keep W&B's
    # default (last value only)
    definitions = metric_definitions(run_file)
    losses = {k for k in expected if k.split("/")[0] in ("train", "val")}
    assert losses == {k for k, d in definitions.items() if d.summary.min}
    assert losses == {k for k, d in definitions.items() if d.summary.last}
    for name in losses:
        assert definitions[name].step_metric == "trainer/global_step", name
    assert "weight/depth" not in definitions

    # where docs/logging.md says the losses' final values are (W&B's terminal summary prints
    # plain numbers only): the run's summary, each loss's last and min
    final = summary(run_file)
    for name in ("train/loss", "train/seg", "val/depth", "train/seg_epoch"):
        values = [v for _, v in expected[name]]
        assert final[name] == {"last": pytest.approx(values[-1]), "min": pytest.approx(min(values))}
    assert final["weight/depth"] == 0.5  # a plain number: printed in the terminal's summary


def test_importing_the_package_does_not_import_wandb():
    code = "import sys, lightning_losses; print('wandb' in sys.modules)"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.stdout.strip() == "False", result.stderr
