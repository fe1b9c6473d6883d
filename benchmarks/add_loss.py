"""Per-step cost of ``add_loss`` from submodules, against returning the same values from forward.

    python benchmarks/add_loss.py [--steps 600] [--repeats 3] [--blocks 8]

The same network (``--blocks`` blocks, each with an activation regulariser and a dead-unit
metric) in three variants, timed in one run with interleaved repeats:
(returned) ``forward`` gathers every block's values and returns them;
(add_loss) each block calls ``ll.add_loss`` / ``ll.add_metric`` itself, ``forward`` returns the
task loss only;
(none) no regulariser and no metric at all, the floor.
Prints each variant's best step time and its ratio to "returned".
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from _common import compare_variants
from torch import nn

import lightning_losses as ll
from lightning_losses import LossDictModule


class Block(nn.Module):
    def __init__(self, index: int, mode: str) -> None:
        super().__init__()
        self.layer = nn.Linear(16, 16)
        self.index, self.mode = index, mode
        self.values: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer(x).relu()
        if self.mode == "add_loss":
            ll.add_loss(f"act_l1/{self.index}", 1e-4 * h.abs().mean())
            ll.add_metric(f"dead/{self.index}", (h <= 0).float().mean())
        elif self.mode == "returned":
            self.values = {
                f"act_l1/{self.index}": 1e-4 * h.abs().mean(),
                f"dead/{self.index}": (h <= 0).float().mean(),
            }
        return h


class Net(nn.Module):
    def __init__(self, blocks: int, mode: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(i, mode) for i in range(blocks))
        self.head = nn.Linear(16, 1)
        self.mode = mode

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        (x,) = batch
        h = x[:, :16]
        for block in self.blocks:
            h = block(h)
        out = {"task": self.head(h).pow(2).mean()}
        if self.mode == "returned":
            for block in self.blocks:
                out.update(block.values)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    compare_variants(
        {
            mode: lambda m=mode: LossDictModule(
                Net(args.blocks, m), optimizer=lambda p: torch.optim.SGD(p, lr=1e-3)
            )
            for mode in ("returned", "add_loss", "none")
        },
        args.steps,
        args.repeats,
    )


if __name__ == "__main__":
    main()
