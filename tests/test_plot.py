"""``python -m lightning_losses plot``: a panel per loss, a line per run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")
from conftest import MultiTask, make_trainer, multitask_data
from lightning.pytorch.loggers import CSVLogger

from lightning_losses.__main__ import main
from lightning_losses.plot import (
    _log_scale,
    find_runs,
    merge_panels,
    panels,
    plot_run,
    read_kinds,
    read_run,
)


def two_runs(root):
    for _ in range(2):  # lightning_logs/version_0 and version_1
        make_trainer(logger=CSVLogger(root), max_epochs=1, log_every_n_steps=2).fit(
            MultiTask(), multitask_data()
        )
    return root / "lightning_logs"


def test_a_folder_of_runs_gets_a_line_per_run_not_one_joined_curve(tmp_path):
    root = two_runs(tmp_path)
    runs = find_runs(root)
    assert list(runs) == ["version_0", "version_1"]
    merged = merge_panels(
        {name: panels(read_run(d), read_kinds(d), run=name) for name, d in runs.items()}
    )
    assert set(merged["seg"]) == {
        "version_0: train", "version_0: train (epoch)", "version_1: train",
        "version_1: train (epoch)",
    }  # fmt: skip
    steps = [s for s, _ in merged["seg"]["version_0: train"]]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # one run's steps, once each
    out = plot_run(root)
    assert out == root / "curves.png" and out.stat().st_size > 10_000


def test_log_axes_where_a_panel_spans_decades():
    assert _log_scale({"a": [(0, 100.0), (1, 0.5)]}, "auto")
    assert not _log_scale({"a": [(0, 2.0), (1, 0.5)]}, "auto")
    assert not _log_scale({"a": [(0, 100.0), (1, -0.5)]}, "always")  # not positive: linear
    assert _log_scale({"a": [(0, 2.0), (1, 0.5)]}, "always")
    assert not _log_scale({"a": [(0, 100.0), (1, 0.5)]}, "never")


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_a_wrong_path_says_what_was_expected(tmp_path, where, capsys):
    path = tmp_path / "nowhere"
    if where == "empty":
        path.mkdir()
    assert main(["plot", str(path)]) == 1
    assert "expected a CSVLogger or TensorBoardLogger run directory" in capsys.readouterr().err


def test_the_command_runs_as_python_m_and_its_help_is_short():
    env = {**os.environ, "COLUMNS": "100", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "lightning_losses", "--help"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) < 30 and "{plot}" in done.stdout
