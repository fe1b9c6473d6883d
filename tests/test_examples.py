"""Every example is a real program: it runs to completion, on a CPU, in seconds."""

import ast
import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# cli.py needs a subcommand and a config (tests/test_cli.py runs it); the weighting comparison
# prints a table rather than logs (its own test below)
OWN_TESTS = {"cli.py", "multitask_weighting.py"}
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if p.name not in OWN_TESTS)


def run(script: str, *args: str, cwd: Path) -> str:
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


#: examples of real HuggingFace models (transformers is in the test extra, not a dependency)
NEEDS_TRANSFORMERS = {"huggingface_moe.py", "detr_loss_dict.py"}


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s != "multitask.py"])
def test_example_runs(script, tmp_path):
    if script in NEEDS_TRANSFORMERS:
        pytest.importorskip("transformers")
    assert "train/" in run(script, cwd=tmp_path)


def final_metrics(out: str) -> dict[str, float]:
    return ast.literal_eval(out.strip().splitlines()[-1])


def test_detr_trained_on_its_own_total_or_on_our_weighted_terms_is_the_same_run(tmp_path):
    pytest.importorskip("transformers")
    own = final_metrics(run("detr_loss_dict.py", cwd=tmp_path))
    ours = final_metrics(run("detr_loss_dict.py", "--reweigh", cwd=tmp_path))
    assert {k: v for k, v in ours.items() if not k.startswith("weight/")} == pytest.approx(
        own, abs=2e-4
    )
    assert ours["weight/loss_dict/loss_bbox"] == 5.0 and ours["weight/loss_dict/loss_giou"] == 2.0


def test_moe_example_logs_the_aux_loss_beside_the_total(tmp_path):
    pytest.importorskip("transformers")
    metrics = final_metrics(run("huggingface_moe.py", cwd=tmp_path))
    assert {"train/loss", "train/aux_loss", "val/loss", "val/aux_loss"} <= set(metrics)
    # the load-balancing loss of a top-2-of-4 router is about num_experts_per_tok at balance
    assert 1.5 < metrics["train/aux_loss"] < 4.0


def test_main_example_writes_per_loss_logs_and_curves(tmp_path):
    out = run("multitask.py", "--epochs", "2", cwd=tmp_path)
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
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "lightning_losses", "plot", str(run_dir), "-o", "again.png"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "again.png").stat().st_size > 10_000
    from lightning_losses.plot import panels, read_kinds, read_run

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
