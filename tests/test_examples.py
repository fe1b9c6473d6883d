"""Every example is a real program: it runs to completion, on a CPU, in seconds.

The main example, the README's first command, runs in a subprocess, exactly as a user starts
it. The others run in this process as ``__main__`` (``runpy``, with their own ``sys.argv`` and a
temporary working directory): the same program, without paying for a fresh interpreter and
another import of torch and Lightning per example, which on a busy 2-core machine cost 15-20 s
each.
"""

import contextlib
import csv
import io
import math
import os
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# cli.py needs a subcommand and a config (tests/test_cli.py runs it); the weighting comparison
# prints a table rather than logs (its own test below)
OWN_TESTS = {"cli.py", "multitask_weighting.py"}
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if p.name not in OWN_TESTS)


def run(script: str, *args: str, cwd: Path) -> str:
    """Runs ``examples/<script>`` as ``__main__`` in this process; returns what it printed.
    An example is how to use the library: it must not draw a single warning of ours."""
    out = io.StringIO()
    argv, here = sys.argv, Path.cwd()
    sys.argv = [str(EXAMPLES / script), *args]
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    finally:
        sys.argv = argv
        os.chdir(here)
    assert not ours(caught), f"{script} drew warnings of ours: {ours(caught)}"
    return out.getvalue()


def ours(caught: list[warnings.WarningMessage]) -> list[str]:
    """The library's warnings among ``caught``: its category, or issued from its own lines."""
    from lightning_losses import LossDictWarning

    package = str(EXAMPLES.parent / "lightning_losses")
    return [
        f"{w.filename}:{w.lineno}: {w.message}"
        for w in caught
        if issubclass(w.category, LossDictWarning) or w.filename.startswith(package)
    ]


def run_program(script: str, *args: str, cwd: Path) -> str:
    """Runs ``python examples/<script>`` in a subprocess, as a user would."""
    # one torch thread: on a busy 2-core machine torch's default two threads fight for the cores
    # (a GAN batch took 40-90 ms instead of 3-5 ms)
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, (
        f"{script} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    )
    return result.stdout


def printed(out: str, label: str) -> str:
    """What the example printed after ``label: ``."""
    [line] = [line for line in out.splitlines() if line.startswith(f"{label}: ")]
    return line[len(label) + 2 :]


def assert_logs_where_printed(out: str, script: str, cwd: Path) -> None:
    logs = cwd / printed(out, "per-loss logs")
    assert logs == cwd / "runs" / script.removesuffix(".py") / "metrics.csv"
    with logs.open() as handle:
        assert "train/loss" in next(csv.reader(handle))
    assert "train/loss" in final_metrics(out)


#: examples whose own test below runs them
RUN_BELOW = {"multitask.py", "huggingface_moe.py", "detr_loss_dict.py"}


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s not in RUN_BELOW])
def test_example_runs_and_says_where_its_logs_are(script, tmp_path):
    assert_logs_where_printed(run(script, cwd=tmp_path), script, tmp_path)


def final_metrics(out: str) -> dict[str, float]:
    pairs = (item.split("=") for item in printed(out, "final values").split(", "))
    return {name: float(value) for name, value in pairs}


def test_detr_trained_on_its_own_total_or_on_our_weighted_terms_is_the_same_run(tmp_path):
    pytest.importorskip("transformers")
    out = run("detr_loss_dict.py", cwd=tmp_path)
    assert_logs_where_printed(out, "detr_loss_dict.py", tmp_path)
    own = final_metrics(out)
    ours = final_metrics(run("detr_loss_dict.py", "--reweigh", cwd=tmp_path))
    assert {k: v for k, v in ours.items() if not k.startswith("weight/")} == pytest.approx(
        own, abs=2e-4
    )
    assert ours["weight/loss_dict/loss_bbox"] == 5.0 and ours["weight/loss_dict/loss_giou"] == 2.0


def test_moe_example_logs_the_aux_loss_beside_the_total(tmp_path):
    pytest.importorskip("transformers")
    out = run("huggingface_moe.py", cwd=tmp_path)
    assert_logs_where_printed(out, "huggingface_moe.py", tmp_path)
    metrics = final_metrics(out)
    assert {"train/loss", "train/aux_loss", "val/loss", "val/aux_loss"} <= set(metrics)
    # the load-balancing loss of a top-2-of-4 router is about num_experts_per_tok at balance
    assert 1.5 < metrics["train/aux_loss"] < 4.0


def test_main_example_writes_per_loss_logs_and_curves(tmp_path):
    out = run_program("multitask.py", "--epochs", "2", cwd=tmp_path)
    run_dir = tmp_path / "runs" / "multitask"
    with (run_dir / "metrics.csv").open() as handle:
        columns = set(next(csv.reader(handle)))
    assert {
        "train/seg",
        "train/depth",
        "train/loss",
        "val/seg",
        "val/depth",
        "val/loss",
        "train/acc",
        "weight/depth",
    } <= columns
    assert (run_dir / "curves.png").stat().st_size > 10_000
    assert "per-loss curves" in out

    # the plot command draws the same run again, with a panel per loss and the gradient panels
    # (tests/test_plot.py starts it as `python -m lightning_losses`)
    from lightning_losses.__main__ import main
    from lightning_losses.plot import panels, read_kinds, read_run

    assert main(["plot", str(run_dir), "-o", str(tmp_path / "again.png")]) == 0
    assert (tmp_path / "again.png").stat().st_size > 10_000

    drawn = panels(read_run(run_dir), read_kinds(run_dir))
    # the total first, then the losses, then the metric (the run recorded which is which)
    assert list(drawn)[:4] == ["loss", "depth", "seg", "metric: acc"]
    assert set(drawn["seg"]) == {"train", "train (epoch)", "val"}
    assert set(drawn["gradient cosine per pair"]) == {"seg_vs_depth"}
    assert "weights" not in drawn  # depth's weight is a constant 0.5: nothing to see


def test_weighting_comparison_prints_a_row_per_strategy(tmp_path):
    out = run("multitask_weighting.py", "--epochs", "2", cwd=tmp_path)
    rows = [line for line in out.splitlines() if line.startswith("| ") and "strategy" not in line]
    names = [row.split("|")[1].strip() for row in rows]
    assert names == [
        "static (all 1)", "uncertainty", "DWA (T=2)", "GradNorm (a=1.5)", "UPGrad",
        "FAMO (torchjd)", "IMTL-L (torchjd)",
    ]  # fmt: skip
    for row in rows:
        cells = [float(c) for c in row.split("|")[2:-1]]
        assert len(cells) == 4 and all(math.isfinite(c) and c > 0 for c in cells), row


def test_gan_example_trains_both_ways_and_draws_its_samples(tmp_path):
    out = run("gan.py", "--wgan", "--epochs", "1", cwd=tmp_path)
    assert "global_step=100 (batches)" in out
    metrics = final_metrics(out)
    assert {"train/critic", "train/gradient_penalty", "train/generator"} <= set(metrics)
    assert (tmp_path / "runs" / "gan" / "samples.png").stat().st_size > 10_000


def test_main_example_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    # lightning_losses.plot imports matplotlib at the top: without it, importing it fails
    monkeypatch.setitem(sys.modules, "lightning_losses.plot", None)
    out = run("multitask.py", "--epochs", "1", cwd=tmp_path)
    assert printed(out, "per-loss curves") == (
        "not drawn, matplotlib is missing (pip install matplotlib)"
    )
    assert (tmp_path / "runs" / "multitask" / "metrics.csv").is_file()
    assert not (tmp_path / "runs" / "multitask" / "curves.png").exists()
