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
    STAGE_STYLES,
    _log_scale,
    draw,
    find_runs,
    merge_panels,
    panels,
    plot_run,
    read_kinds,
    read_run,
    split_label,
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


def test_several_runs_are_a_colour_each_in_every_panel_and_a_line_style_per_stage(tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    root = two_runs(tmp_path)
    runs = find_runs(root)
    groups = merge_panels(
        {name: panels(read_run(d), read_kinds(d), run=name) for name, d in runs.items()}
    )
    figure = draw(groups, runs=list(runs))
    colours: dict[str, set[str]] = {"version_0": set(), "version_1": set()}
    styles: dict[str, set[str]] = {}
    for ax in figure.axes:
        assert ax.get_legend() is None  # no panel repeats every run and stage
        for line in ax.get_lines():
            run, stage = split_label(str(line.get_label()), list(runs))
            colours[run].add(to_hex(line.get_color()))
            styles.setdefault(stage, set()).add(str(line.get_linestyle()))
    assert len(colours["version_0"]) == len(colours["version_1"]) == 1
    assert colours["version_0"] != colours["version_1"]
    assert styles == {"train": {"-"}, "train (epoch)": {":"}}
    [legend] = figure.legends  # one, naming the runs by colour and the stages by style
    assert [t.get_text() for t in legend.get_texts()] == [
        "version_0", "version_1", "train", "train (epoch)",
    ]  # fmt: skip
    plt.close(figure)


def test_one_run_draws_each_stage_in_one_colour_and_style_in_every_panel():
    import matplotlib.pyplot as plt

    points = [(0, 1.0), (1, 0.5)]
    series = {"train/seg": points, "val/seg": points, "train/depth": points, "val/loss": points}
    figure = draw(panels(series))
    seen: dict[str, set[tuple[str, str]]] = {}
    for ax in figure.axes:
        for line in ax.get_lines():
            key = (str(line.get_color()), str(line.get_linestyle()))
            seen.setdefault(str(line.get_label()), set()).add(key)
    assert {k: len(v) for k, v in seen.items()} == {"train": 1, "val": 1}
    assert seen["train"] != seen["val"]
    assert {s for (_, s) in seen["val"]} == {STAGE_STYLES["val"]}
    plt.close(figure)


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
