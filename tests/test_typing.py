"""The package type-checks, and so does user code written from the README."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy")
ROOT = Path(__file__).resolve().parents[1]

USER_CODE = """
import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lightning_losses as ll
from lightning_losses import LossDictModule, RouteMap


class MultiTask(LossDictModule):
    def __init__(self) -> None:
        super().__init__(loss_weights={"depth": 0.5, "aux_*": lambda step: 1.0 / (1 + step)})
        self.trunk, self.seg, self.depth = nn.Linear(16, 32), nn.Linear(32, 4), nn.Linear(32, 1)

    def forward(self, batch: tuple[Tensor, Tensor, Tensor]) -> dict[str, Tensor]:
        x, y_seg, y_depth = batch
        h = self.trunk(x).relu()
        ll.add_metric("dead", (h <= 0).float().mean())
        return {
            "seg": F.cross_entropy(self.seg(h), y_seg),
            "depth": F.mse_loss(self.depth(h).squeeze(-1), y_depth),
        }

    def configure_routes(self) -> RouteMap:
        return {
            "seg": torch.optim.Adam(self.seg.parameters()),
            ("depth",): {"optimizer": torch.optim.SGD(self.depth.parameters(), lr=0.01),
                         "frequency": 2, "gradient_clip_val": 1.0},
            "loss": torch.optim.AdamW(self.trunk.parameters()),
        }


wrapped = LossDictModule(
    nn.Linear(4, 1),
    call="keyword",
    total_key="loss",
    eval_losses="train_forward",
    route_mode="sequential",
    optimizer=lambda params: torch.optim.AdamW(params, lr=3e-4),
)
routes: frozenset[str] = wrapped.active_routes
L.Trainer(max_epochs=1)
"""


def mypy(*args: str) -> subprocess.CompletedProcess[str]:
    # the package is found from the checkout (setuptools' editable install is invisible to
    # static checkers; MYPYPATH is the documented way round it)
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "mypy", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )


def test_the_package_type_checks_clean():
    result = mypy()  # files and options from pyproject.toml
    assert result.returncode == 0, result.stdout + result.stderr


def test_user_code_from_the_readme_type_checks_and_a_wrong_option_does_not(tmp_path):
    # one mypy run over both files: each run re-reads the cache of torch's and Lightning's types
    user = tmp_path / "user_code.py"
    user.write_text(USER_CODE)
    wrong = tmp_path / "wrong.py"
    wrong.write_text(
        "from torch import nn\nfrom lightning_losses import LossDictModule\n"
        "LossDictModule(nn.Linear(2, 2), route_mode='alternate')\n"
    )
    result = mypy("--config-file", str(ROOT / "pyproject.toml"), str(user), str(wrong))
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert result.returncode == 1, result.stdout + result.stderr
    assert [Path(line.split(":")[0]).name for line in errors] == ["wrong.py"], result.stdout
    assert "route_mode" in errors[0], result.stdout
