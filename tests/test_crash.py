"""A run killed with SIGKILL and restarted from its last checkpoint ends where an uninterrupted
run ends (deterministic CPU setup)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

JOB = Path(__file__).with_name("crash_job.py")


def run(out: Path, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(JOB), str(out), *flags],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen) -> None:
    log, _ = process.communicate(timeout=240)
    assert process.returncode == 0, log[-3000:]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_run_then_resume_ends_with_the_uninterrupted_parameters(tmp_path):
    straight = tmp_path / "straight"
    finish(run(straight))

    crashed = tmp_path / "crashed"
    process = run(crashed, "--slow")
    deadline = time.monotonic() + 120
    # kill once a mid-run checkpoint exists (the 4 epochs are 32 steps, 0.05 s each)
    while not list(crashed.glob("epoch=1-step=*.ckpt")) and time.monotonic() < deadline:
        assert process.poll() is None, "the job ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (crashed / "params.pt").exists()  # it really died mid-run

    finish(run(crashed, "--resume"))
    expected = torch.load(straight / "params.pt")
    for p, q in zip(expected, torch.load(crashed / "params.pt")):
        assert torch.equal(p, q)
