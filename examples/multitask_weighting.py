"""Static weights, uncertainty weighting, DWA, GradNorm, UPGrad, FAMO and IMTL-L on one 3-task
problem.

    python examples/multitask_weighting.py          # ~11 s on a 2-core CPU

Three tasks share a narrow trunk (16 -> 8 features) and pull it different ways: ``big`` is a
regression whose loss is ~100x the others', ``anti`` regresses a target partly opposite to
``big``'s, and ``cls`` is a 4-class classification. Each strategy trains the same network from the
same initial weights on the same batches; the table gives each task's final validation loss and
the time per training step. The strategy is one constructor argument:

    MultiTask(weighting=UncertaintyWeighting(TASKS))
    MultiTask(weighting=DynamicWeightAverage(TASKS, temperature=2.0))
    MultiTask(weighting=GradNorm(TASKS, shared="trunk", alpha=1.5))
    MultiTask(aggregator=UPGrad())                     # needs torchjd (the `jd` extra)
    MultiTask(weighting=torchjd.scalarization.FAMO(3))  # any torchjd scalarizer, as it is
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossDictModule
from lightning_losses.weighting import DynamicWeightAverage, GradNorm, UncertaintyWeighting

TASKS = ["big", "anti", "cls"]


def conflicting_tasks(n: int, seed: int) -> TensorDataset:
    fixed = torch.Generator().manual_seed(7)  # the same tasks for every split
    a, b, c = (
        torch.randn(8, generator=fixed),
        torch.randn(8, generator=fixed),
        torch.randn(16, 4, generator=fixed),
    )
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    big = 10.0 * (x[:, :8] @ a)
    anti = -(x[:, :8] @ a) + x[:, 8:] @ b
    cls = (x @ c).argmax(-1)
    return TensorDataset(x, big, anti, cls)


class MultiTask(LossDictModule):
    def __init__(self, **options: Any) -> None:
        super().__init__(optimizer=lambda params: torch.optim.Adam(params, lr=1e-2), **options)
        torch.manual_seed(0)  # every strategy starts from the same network
        self.trunk = nn.Sequential(nn.Linear(16, 8), nn.ReLU())
        self.heads = nn.ModuleDict(
            {"big": nn.Linear(8, 1), "anti": nn.Linear(8, 1), "cls": nn.Linear(8, 4)}
        )

    def forward(self, batch):
        x, big, anti, cls = batch
        h = self.trunk(x)
        return {
            "big": F.mse_loss(self.heads["big"](h).squeeze(-1), big),
            "anti": F.mse_loss(self.heads["anti"](h).squeeze(-1), anti),
            "cls": F.cross_entropy(self.heads["cls"](h), cls),
        }


class StepTime(Callback):
    """Mean wall time of the training steps after the first few."""

    def __init__(self, warmup: int = 5) -> None:
        self.warmup, self.times, self.started = warmup, [], 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self.started = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.times.append(time.perf_counter() - self.started)

    @property
    def ms(self) -> float:
        kept = self.times[self.warmup :]
        return 1e3 * sum(kept) / len(kept)


def strategies() -> dict[str, dict[str, Any]]:
    chosen: dict[str, dict[str, Any]] = {
        "static (all 1)": {},
        "uncertainty": {"weighting": UncertaintyWeighting(TASKS)},
        "DWA (T=2)": {"weighting": DynamicWeightAverage(TASKS, temperature=2.0)},
        "GradNorm (a=1.5)": {"weighting": GradNorm(TASKS, shared="trunk", alpha=1.5)},
    }
    try:
        from torchjd.aggregation import UPGrad
        from torchjd.scalarization import FAMO, IMTLL
    except ImportError:
        print("torchjd is missing (pip install 'torchjd[quadprog-projector]'): skipping its rows")
    else:
        chosen["UPGrad"] = {"aggregator": UPGrad()}
        # torchjd's scalarizers pass straight in: the library pools them over DDP ranks and
        # calls FAMO's update after each step with the batch's recomputed losses
        chosen["FAMO (torchjd)"] = {"weighting": FAMO(len(TASKS))}
        chosen["IMTL-L (torchjd)"] = {"weighting": IMTLL(len(TASKS))}
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    train = DataLoader(conflicting_tasks(1024, seed=0), batch_size=64, shuffle=True)
    val = DataLoader(conflicting_tasks(512, seed=1), batch_size=256)
    rows = []
    for name, options in strategies().items():
        L.seed_everything(0, verbose=False)  # the same batch order for every strategy
        timer = StepTime()
        trainer = L.Trainer(
            max_epochs=args.epochs,
            accelerator="cpu",
            logger=False,
            callbacks=[timer],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(MultiTask(**options), train, val)
        metrics = trainer.callback_metrics
        rows.append((name, *(float(metrics[f"val/{t}"]) for t in TASKS), timer.ms))
    header = f"| strategy | {' | '.join(f'val/{t}' for t in TASKS)} | ms/step |"
    print(header)
    print("|" + "---|" * (len(TASKS) + 2))
    for name, *losses, ms in rows:
        print(f"| {name} | {' | '.join(f'{v:.4f}' for v in losses)} | {ms:.2f} |")


if __name__ == "__main__":
    main()
