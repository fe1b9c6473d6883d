"""What gradient diagnostics cost: on the steps where they run, and averaged over a run.

    python benchmarks/grad_diagnostics.py [--steps 600] [--repeats 3]

Model: a shared trunk (two 256-wide layers) and 4 task heads, 4 loss terms, Adam, CSV logger,
log_every_n_steps=50. Variants: diagnostics off; every step (the cost of one diagnosed step:
one extra backward per term through the trunk, and the 4x4 Gram matrix); every 50 steps (the
recommended setting). Prints each step time relative to "off".
"""

from __future__ import annotations

import argparse

import torch
from _common import compare_variants
from torch import nn

from lightning_losses import LossDictModule

HEADS = 4


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(256, 1) for _ in range(HEADS))

    def forward(self, batch):
        (x,) = batch
        h = self.trunk(x)
        return {f"t{i}": head(h).pow(2).mean() for i, head in enumerate(self.heads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    variants = {"off": None, "every step": 1, "every 50 steps": 50}
    compare_variants(
        {
            name: lambda every=every: LossDictModule(Net(), grad_diagnostics_every_n_steps=every)
            for name, every in variants.items()
        },
        args.steps,
        args.repeats,
    )


if __name__ == "__main__":
    main()
