"""What a ``LossDictModule`` adds to a plain training step, counted: tensor ops and Python calls.

    python benchmarks/step_costs.py [--terms 1 128] [--time]

For each configuration, a plain ``LightningModule`` twin does the same model and optimizer work
and logs nothing; both are trained for a few steps with nothing written (``log_every_n_steps``
past the run), and two things are counted over whole steps (from one batch's start to the
next's, so every hook of the module is inside):

- aten ops, through a ``TorchDispatchMode`` (what reaches the dispatcher, backward included);
- Python calls and C calls, through ``sys.setprofile`` (one run each, so that the counting of
  one does not show in the other).

Counts are deterministic (the same on every machine), so ``tests/test_step_costs.py`` asserts
them; the contract (API.md section 3) allows 3 ops and 20 Python calls per non-writing step, 10
ops with routes, and C calls flat in the number of terms. ``--time`` adds the step-time ratio at
32 terms against the plain twin (a benchmark, not a test: timings vary between machines).
"""

from __future__ import annotations

import argparse
import gc
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset

import lightning_losses as ll
from lightning_losses import LossDictModule
from lightning_losses.weighting import UncertaintyWeighting

warnings.filterwarnings("ignore")

#: Steps counted (after warm-up steps that build plans and optimizer state).
FIRST, LAST = 4, 10


@dataclass
class Counts:
    ops: float
    calls: float
    c_calls: float

    def minus(self, other: Counts) -> Counts:
        return Counts(self.ops - other.ops, self.calls - other.calls, self.c_calls - other.c_calls)


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops += 1
        return func(*args, **(kwargs or {}))


class _Count(Callback):
    """Counts from the start of batch FIRST to the start of batch LAST (callbacks run first)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.calls = self.c_calls = 0
        self.mode: _OpCounter | None = None

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            self.calls += 1
        elif event == "c_call":
            self.c_calls += 1

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, idx: int) -> None:
        if idx == FIRST:
            # the collector would run whatever earlier code left behind (and gc.callbacks)
            # inside the counted steps: counted are the steps' own calls
            gc.collect()
            gc.disable()
            if self.what == "ops":
                self.mode = _OpCounter()
                self.mode.__enter__()
            else:
                sys.setprofile(self._profile)
        elif idx == LAST:
            gc.enable()
            if self.what == "ops":
                assert self.mode is not None
                self.mode.__exit__(None, None, None)
            else:
                sys.setprofile(None)
                self.calls -= 1  # this hook's own call, counted once at the end


def _data(columns: int = 1) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn((LAST + 2) * 4, 16, generator=g)
    return DataLoader(TensorDataset(x), batch_size=4)


def count(make: Callable[[], L.LightningModule]) -> Counts:
    """Per-step ops, Python calls and C calls of a fit of ``make()`` (no write inside)."""
    results = {}
    for what in ("ops", "calls"):
        torch.manual_seed(0)
        counter = _Count(what)
        trainer = L.Trainer(
            max_steps=LAST + 1,
            log_every_n_steps=10_000,
            logger=False,
            callbacks=[counter],
            accelerator="cpu",
            devices=1,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(make(), _data())
        results[what] = counter
    steps = LAST - FIRST
    ops = results["ops"].mode.ops if results["ops"].mode is not None else 0
    return Counts(ops / steps, results["calls"].calls / steps, results["calls"].c_calls / steps)


# ---------------------------------------------------------------------- models


class Terms(nn.Module):
    """``k`` scalar losses from one linear layer; with ``metric``, an accuracy-like metric."""

    def __init__(self, k: int, metric: bool = False, added: bool = False) -> None:
        super().__init__()
        self.net = nn.Linear(16, k)
        self.names = [f"t{i}" for i in range(k)]
        self.metric, self.added = metric, added

    def forward(self, batch: Any) -> dict[str, Tensor]:
        (x,) = batch
        out = self.net(x).pow(2).mean(0)
        losses = dict(zip(self.names, out.unbind())) if len(self.names) > 1 else {"t0": out[0]}
        if self.added:
            ll.add_loss("reg", 1e-3 * self.net.weight.square().sum())
        if self.metric:
            with torch.no_grad():
                losses["acc"] = (x > 0).float().mean()
        return losses


class TwoHeads(nn.Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.trunk, self.a, self.b = nn.Linear(16, 8), nn.Linear(8, k), nn.Linear(8, k)
        self.names_a = [f"a{i}" for i in range(k)]
        self.names_b = [f"b{i}" for i in range(k)]

    def forward(self, batch: Any) -> dict[str, Tensor]:
        (x,) = batch
        h = self.trunk(x).relu()
        a, b = self.a(h).pow(2).mean(0), self.b(h).pow(2).mean(0)
        return {**dict(zip(self.names_a, a.unbind())), **dict(zip(self.names_b, b.unbind()))}


def _sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.01)


class Plain(L.LightningModule):
    """The twin: the same model and optimizer, the total computed by hand, nothing logged."""

    def __init__(self, model: nn.Module, total: Callable[[Any, dict[str, Tensor]], Tensor]):
        super().__init__()
        self.model, self.total = model, total

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.total(self, self.model(batch))

    def configure_optimizers(self) -> Any:
        return _sgd(self.parameters())


def _sum(module: Any, losses: dict[str, Tensor]) -> Tensor:
    values = list(losses.values())
    return values[0] if len(values) == 1 else torch.stack(values).sum()


def _terms_only(module: Any, losses: dict[str, Tensor]) -> Tensor:
    return _sum(module, {k: v for k, v in losses.items() if k != "acc"})


class Sub(LossDictModule):
    """Subclass mode: ``forward`` returns the terms."""

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(optimizer=_sgd, **kwargs)
        self.net = model

    def forward(self, batch: Any) -> Any:
        return self.net(batch)


class Routed(Sub):
    def configure_optimizers(self) -> Any:
        net = self.net
        return {
            tuple(net.names_a): _sgd(net.a.parameters()),
            "loss": _sgd([*net.trunk.parameters(), *net.b.parameters()]),
        }


class PlainRouted(Plain):
    def configure_optimizers(self) -> Any:
        net = self.model
        return _sgd(
            [
                {"params": list(net.a.parameters())},
                {"params": [*net.trunk.parameters(), *net.b.parameters()]},
            ]
        )


class TwoOptimizers(torch.optim.Optimizer):
    """What a user writes by hand to step two optimizers in automatic optimization (the cost
    of a second torch optimizer, which routes cannot avoid)."""

    def __init__(self, first: torch.optim.Optimizer, second: torch.optim.Optimizer) -> None:
        self.inner = (first, second)
        super().__init__([*first.param_groups, *second.param_groups], {})

    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for optimizer in self.inner:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.inner:
            optimizer.zero_grad(set_to_none)


class PlainTwoOptimizers(Plain):
    def configure_optimizers(self) -> Any:
        net = self.model
        return TwoOptimizers(
            _sgd(net.a.parameters()), _sgd([*net.trunk.parameters(), *net.b.parameters()])
        )


class UncertaintyTwin(Plain):
    """What UncertaintyWeighting computes, by hand: sum 0.5 exp(-s) L + 0.5 sum s."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, _sum)
        self.s = nn.Parameter(torch.zeros(len(model.names)))  # type: ignore[arg-type]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        losses = torch.stack(list(self.model(batch).values()))
        return torch.dot(losses, 0.5 * torch.exp(-self.s)) + 0.5 * self.s.sum()


def configurations(k: int) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """name -> (our module, its plain twin), at ``k`` terms."""
    names = [f"t{i}" for i in range(k)]
    weights = torch.tensor([0.5] + [1.0] * (k - 1))

    def weighted(module: Any, losses: dict[str, Tensor]) -> Tensor:
        return torch.dot(torch.stack(list(losses.values())), weights)

    def with_reg(module: Any, losses: dict[str, Tensor]) -> Tensor:
        reg = 1e-3 * module.model.net.weight.square().sum()
        return _sum(module, losses) + reg

    return {
        "bare terms": (lambda: Sub(Terms(k)), lambda: Plain(Terms(k), _sum)),
        "returned metric": (
            lambda: Sub(Terms(k, metric=True)),
            lambda: Plain(Terms(k, metric=True), _terms_only),
        ),
        "constant loss_weights": (
            lambda: Sub(Terms(k), loss_weights={"t0": 0.5}),
            lambda: Plain(Terms(k), weighted),
        ),
        "UncertaintyWeighting": (
            lambda: Sub(Terms(k), weighting=UncertaintyWeighting(names)),
            lambda: UncertaintyTwin(Terms(k)),
        ),
        "2 routes": (lambda: Routed(TwoHeads(k)), lambda: PlainRouted(TwoHeads(k), _sum)),
        "2 routes vs 2 optimizers": (
            lambda: Routed(TwoHeads(k)),
            lambda: PlainTwoOptimizers(TwoHeads(k), _sum),
        ),
        "add_loss": (lambda: Sub(Terms(k, added=True)), lambda: Plain(Terms(k), with_reg)),
        'wrap, call="auto"': (
            lambda: LossDictModule(Terms(k), optimizer=_sgd),
            lambda: Plain(Terms(k), _sum),
        ),
    }


def added_costs(k: int) -> dict[str, Counts]:
    """Per configuration: what ours adds to its twin per non-writing step."""
    return {
        name: count(ours).minus(count(plain)) for name, (ours, plain) in configurations(k).items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--terms", type=int, nargs="+", default=[1, 128])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'configuration':<24}{'K':>5}{'ops added':>11}{'Python calls':>14}{'C calls':>9}")
    for k in args.terms:
        for name, added in added_costs(k).items():
            print(f"{name:<24}{k:>5}{added.ops:>11.1f}{added.calls:>14.1f}{added.c_calls:>9.1f}")


if __name__ == "__main__":
    main()
