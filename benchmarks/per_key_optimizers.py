"""Step time of per-key optimizers against one optimizer and against hand-written manual routing.

    python benchmarks/per_key_optimizers.py [--steps 600] [--repeats 3]

Model: a shared trunk and 4 task heads, 4 loss terms. Variants, all with Adam and a CSV logger:
(a) ``LossDictModule`` with one optimizer over everything;
(b) ``LossDictModule`` with per-key optimizers, *disjoint* routes (each head on its term, the trunk
    on ``"loss"``): the plain backward already routes every gradient;
(c) the same with *overlapping* routes (the trunk owned by ``t0``, which ``t1..t3`` also reach):
    per-route gradients, then one backward of a surrogate;
(d) a hand-written manual-optimization LightningModule doing (b)'s routing;
(e) (b) with plain SGD on every route (5 routes), (f) (d) with the same 5 SGD optimizers, (g) (a)
    with one SGD: where the optimizers' own step is cheapest, what routes add to stepping them
    by hand shows most.
Prints b/a (target <= 1.15), c/a, b/d, e/f (target <= 1.05) and e/g.
"""

from __future__ import annotations

import argparse
import tempfile

import lightning as L
import torch
from _common import best_of, time_fit
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from lightning_losses import LossDictModule

HEADS = 4


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(64, 1) for _ in range(HEADS))

    def forward(self, batch):
        (x,) = batch
        h = self.trunk(x)
        return {f"t{i}": head(h).pow(2).mean() for i, head in enumerate(self.heads)}


class Single(LossDictModule):
    def __init__(self) -> None:
        super().__init__(Net())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class Disjoint(Single):
    def configure_optimizers(self):
        routes = {
            f"t{i}": torch.optim.Adam(h.parameters(), lr=1e-3)
            for i, h in enumerate(self.model.heads)
        }
        routes["loss"] = torch.optim.Adam(self.model.trunk.parameters(), lr=1e-3)
        return routes


class Overlapping(Single):
    def configure_optimizers(self):
        heads = self.model.heads
        routes = {f"t{i}": torch.optim.Adam(h.parameters(), lr=1e-3) for i, h in enumerate(heads)}
        routes["t0"] = torch.optim.Adam(
            [*heads[0].parameters(), *self.model.trunk.parameters()], lr=1e-3
        )
        return routes


class SingleSGD(Single):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class DisjointSGD(Single):
    def configure_optimizers(self):
        routes = {
            f"t{i}": torch.optim.SGD(h.parameters(), lr=1e-3)
            for i, h in enumerate(self.model.heads)
        }
        routes["loss"] = torch.optim.SGD(self.model.trunk.parameters(), lr=1e-3)
        return routes


class Manual(L.LightningModule):
    """What a user writes without the library: manual optimization, five optimizers."""

    def __init__(self, optimizer: type[torch.optim.Optimizer] = torch.optim.Adam) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model = Net()
        self.optimizer = optimizer

    def training_step(self, batch, batch_idx):
        optimizers = self.optimizers()
        losses = self.model(batch)
        total = torch.stack(list(losses.values())).sum()
        for optimizer in optimizers:
            optimizer.zero_grad()
        self.manual_backward(total)  # disjoint routes: the total's gradient is each route's
        for optimizer in optimizers:
            optimizer.step()
        return total

    def configure_optimizers(self):
        heads = [self.optimizer(h.parameters(), lr=1e-3) for h in self.model.heads]
        return [*heads, self.optimizer(self.model.trunk.parameters(), lr=1e-3)]


class ManualSGD(Manual):
    def __init__(self) -> None:
        super().__init__(torch.optim.SGD)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="variant letters to run, e.g. 'ef'")
    args = parser.parse_args()
    torch.set_num_threads(1)
    variants = {
        "a: one optimizer": Single,
        "b: disjoint routes": Disjoint,
        "c: overlapping routes": Overlapping,
        "d: manual routing": Manual,
        "e: disjoint routes, SGD": DisjointSGD,
        "f: manual routing, SGD": ManualSGD,
        "g: one optimizer, SGD": SingleSGD,
    }
    if args.only:
        variants = {k: v for k, v in variants.items() if k[0] in args.only}
    times: dict[str, list[float]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, make in variants.items():
                times[name].append(
                    time_fit(make(), args.steps, CSVLogger(tmp), log_every_n_steps=50)
                )
    best = {k: best_of(v) for k, v in times.items()}
    for name, value in best.items():
        print(f"{name:>24}: {value * 1e3:.3f} ms/step")
    ratios = {
        "b/a": "(target <= 1.15)",
        "c/a": "",
        "b/d": "",
        "e/g": "",
        "e/f": "(target <= 1.05)",
    }
    for ratio, target in ratios.items():
        top, bottom = (next((t for k, t in best.items() if k[0] == c), None) for c in ratio[::2])
        if top is not None and bottom is not None:
            print(f"{ratio} {top / bottom:.2f} {target}")


if __name__ == "__main__":
    main()
