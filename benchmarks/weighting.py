"""Step time of each weighting strategy and of gradient aggregation, relative to static weights.

    python benchmarks/weighting.py [--steps 600] [--repeats 3]

Model: a shared trunk (16 -> 256 -> 256) and 4 task heads, 4 loss terms, Adam, CSV logger,
log_every_n_steps=50. UW and DWA add a few tensor ops per step; GradNorm adds one backward per
term from the loss to its shared layer (here the trunk's last layer); UPGrad adds one backward per
term through the trunk, a quadratic program on the 4x4 Gram matrix, and a surrogate backward.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from _common import compare_variants
from torch import nn

from lightning_losses import LossDictModule
from lightning_losses.weighting import DynamicWeightAverage, GradNorm, UncertaintyWeighting

TERMS = [f"t{i}" for i in range(4)]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(256, 1) for _ in TERMS)

    def forward(self, batch):
        (x,) = batch
        h = self.trunk(x)
        return {t: head(h).pow(2).mean() for t, head in zip(TERMS, self.heads)}


def variants() -> dict[str, Any]:
    chosen = {
        "static": lambda: {},
        "uncertainty": lambda: {"weighting": UncertaintyWeighting(TERMS)},
        "DWA": lambda: {"weighting": DynamicWeightAverage(TERMS)},
        "GradNorm": lambda: {"weighting": GradNorm(TERMS, shared="model.trunk.2")},
    }
    try:
        from torchjd.aggregation import UPGrad
    except ImportError:
        print("torchjd is not installed: skipping UPGrad")
    else:
        chosen["UPGrad"] = lambda: {"aggregator": UPGrad()}
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    compare_variants(
        {
            name: lambda o=options: LossDictModule(Net(), **o())
            for name, options in variants().items()
        },
        args.steps,
        args.repeats,
    )


if __name__ == "__main__":
    main()
