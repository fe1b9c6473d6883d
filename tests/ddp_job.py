"""A two-process DDP job (gloo, CPU) for the tests; every rank writes ``rank<r>.json`` to --out.

    python tests/ddp_job.py SCENARIO --out DIR [--strategy ddp|ddp_spawn]

Run in a subprocess by ``test_ddp.py`` with a timeout, so that a hang fails a test instead of
stalling CI. Lightning's ``ddp`` strategy relaunches this script for rank 1; ``ddp_spawn`` spawns
workers. Either way each rank records what a test needs: the values logged (rank 0), the
callback metrics, parameters after every step, the number of ``torch.distributed`` collectives
issued during training, and any exception.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import MemoryLogger

from lightning_losses import LossDictModule

COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "broadcast",
    "broadcast_object_list",
    "barrier",
    "reduce",
    "gather",
    "scatter",
    "reduce_scatter_tensor",
    "all_to_all",
    "gather_object",
)


class Recorder(Callback):
    """Writes this rank's observations to ``out/rank<r>.json`` at the end (or on an exception)."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.counts: dict[str, int] = {}
        self.counting = False
        self.step_params: list[list[float]] = []
        self._patched = False

    def _patch(self) -> None:
        # Count at both names a collective is reachable by (torch.distributed re-exports them).
        if self._patched:
            return
        self._patched = True
        from torch.distributed import distributed_c10d as c10d

        for name in COLLECTIVES:
            original = getattr(c10d, name, None)
            if original is None:
                continue

            @functools.wraps(original)
            def counted(*args: Any, __name: str = name, __original: Any = original, **kw: Any):
                if self.counting:
                    self.counts[__name] = self.counts.get(__name, 0) + 1
                return __original(*args, **kw)

            setattr(c10d, name, counted)
            setattr(dist, name, counted)

    def on_train_start(self, trainer, pl_module) -> None:
        self._patch()
        self.counting = True
        self.initial_params = flat_params(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.step_params.append(flat_params(pl_module))

    def on_train_end(self, trainer, pl_module) -> None:
        self.counting = False

    def on_fit_end(self, trainer, pl_module) -> None:
        # after the module's own on_train_end, which writes the last partial window
        self.write(trainer, pl_module, None)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.counting = False
        self.write(trainer, pl_module, exception)

    def write(self, trainer, pl_module, exception: BaseException | None) -> None:
        logger = trainer.loggers[0] if trainer.loggers else None
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "exception": None if exception is None else type(exception).__name__,
            "message": None if exception is None else str(exception),
            "params": flat_params(pl_module),
            "initial_params": getattr(self, "initial_params", None),
            "step_params": self.step_params,
            "callback_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "logged": logger.rows if isinstance(logger, MemoryLogger) else [],
            "collectives": self.counts,
            "skipped_steps": getattr(pl_module, "skipped_steps", 0),
            "warnings": [str(w.message) for w in getattr(self, "caught", [])],
        }
        extra = getattr(pl_module, "ddp_record", None)
        if callable(extra):
            record["extra"] = extra()
        if getattr(pl_module, "record_state", False):
            record["state"] = {k: v.tolist() for k, v in pl_module.state_dict().items()}
        self.out.mkdir(parents=True, exist_ok=True)
        # Under ddp_spawn the launching process has no process group; an exception it sees (a
        # worker that exited abnormally) goes to its own file instead of overwriting rank 0's.
        launcher = exception is not None and not dist.is_initialized() and trainer.world_size > 1
        name = "launcher.json" if launcher else f"rank{trainer.global_rank}.json"
        (self.out / name).write_text(json.dumps(record))


def flat_params(module: nn.Module) -> list[float]:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).tolist()


# ---------------------------------------------------------------- scenarios


class RankSteps(LossDictModule):
    """Values that are known functions of (rank, step), and keys present on some ranks only."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, batch: Any) -> Any:
        (x,) = batch
        zero = self.w * 0  # a zero gradient: values stay exactly as written
        r = self.global_rank
        if not self.training:
            return {"a": zero + x.float().mean()}
        s = self.trainer.global_step
        out = {"a": zero + 10 * r + s, "b": zero + 100 + s * r, "m": float(r)}
        if r == 1:
            out["only1"] = zero + 1000 + s
        if r == 0 and s >= 3:
            out["late0"] = zero + s
        if s % 4 == 1:
            out["sometimes"] = zero + r
        return out

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class EvalLoaders(RankSteps):
    """Terms, and an accuracy-like metric without gradient, in training; two loaders in eval."""

    def forward(self, batch: Any) -> Any:
        (x,) = batch
        zero = self.w * 0
        if not self.training:  # classified as in training: "a" a term, "acc" a metric
            return {"a": zero + x.float().mean(), "acc": x.float().mean().detach() * 0 + 7}
        s = self.trainer.global_step
        return {"a": zero + 10 * self.global_rank + s, "acc": torch.tensor(float(self.global_rank))}


class Adder(nn.Module):
    """A submodule that adds a term on rank 1 only, and a metric on every rank."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, rank: int, step: int) -> torch.Tensor:
        import lightning_losses as ll

        zero = self.w * 0
        if rank == 1:
            ll.add_loss("reg", zero + 1000 + step)
        ll.add_metric("util", float(rank))
        return zero


class AddsLosses(LossDictModule):
    """Returns "a"; its submodule adds "reg" (rank 1 only) and the metric "util"."""

    def __init__(self) -> None:
        super().__init__()
        self.adder = Adder()

    def forward(self, batch: Any) -> Any:
        s, r = self.trainer.global_step, self.global_rank
        zero = self.adder(r, s)
        return {"a": zero + 10 * r + s}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Regression(LossDictModule):
    """A real model: the parameters after DDP must equal a single-process reference."""

    def __init__(
        self,
        nonfinite: str = "raise",
        none_at: tuple[int, int] | None = None,
        nan_at: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(nonfinite=nonfinite, loss_weights={"l1": 0.5})
        torch.manual_seed(0)
        self.net = nn.Linear(3, 1)
        self.none_at, self.nan_at = none_at, nan_at

    def forward(self, batch: Any) -> Any:
        x, y = batch
        where = (self.global_rank, self.trainer.global_step)
        if where == self.none_at:
            return None
        pred = self.net(x).squeeze(-1)
        out = {"mse": F.mse_loss(pred, y), "l1": F.l1_loss(pred, y)}
        if where == self.nan_at:
            out["mse"] = out["mse"] * float("nan")
        return out

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class TwoHeads(LossDictModule):
    """Overlapping routes: the trunk is owned by "t0", which "t1" also reaches."""

    def __init__(self) -> None:
        super().__init__()
        self.net = two_heads()

    def forward(self, batch: Any) -> Any:
        return two_head_losses(self.net, batch)

    def configure_optimizers(self):
        trunk, head0, head1 = self.net
        return {
            "t0": torch.optim.SGD([*trunk.parameters(), *head0.parameters()], lr=0.1),
            "t1": torch.optim.SGD(head1.parameters(), lr=0.2),
        }


class DiagnosedHeads(LossDictModule):
    """One optimizer, gradient diagnostics at every step: the trunk is shared by both terms."""

    def __init__(self) -> None:
        super().__init__(grad_diagnostics_every_n_steps=1)
        self.net = two_heads()

    def forward(self, batch: Any) -> Any:
        return two_head_losses(self.net, batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class WeighedHeads(LossDictModule):
    """Two heads on a trunk, one SGD optimizer, a weighting strategy or an aggregator."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.net = two_heads()

    def forward(self, batch: Any) -> Any:
        return two_head_losses(self.net, batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class OneRankTerm(LossDictModule):
    """Term "t1" on rank 1 only, weighted and routed by name: the name matched a term (on
    rank 1), so no rank may call it misspelt."""

    def __init__(self) -> None:
        super().__init__(loss_weights={"t1": 0.5})
        self.net = two_heads()

    def forward(self, batch: Any) -> Any:
        out = two_head_losses(self.net, batch)
        return out if self.global_rank == 1 else {"t0": out["t0"]}

    def configure_optimizers(self):
        trunk, head0, head1 = self.net
        return {
            "t0": torch.optim.SGD(head0.parameters(), lr=0.1),
            "t1": torch.optim.SGD(head1.parameters(), lr=0.1),
            "loss": torch.optim.SGD(trunk.parameters(), lr=0.1),
        }


class LabelLessFirst(LossDictModule):
    """Two heads; rank 0's first batch has no label for "t1": a grad-less zero there (a metric
    on that step), a loss on every other (rank, step). Every step after the first takes the
    fast path on both ranks, with the plan rank 0 made from a grad-less zero."""

    def __init__(self) -> None:
        super().__init__()
        self.net = two_heads()

    def forward(self, batch: Any) -> Any:
        out = two_head_losses(self.net, batch)
        if (self.global_rank, self.trainer.global_step) == (0, 0):
            out["t1"] = torch.zeros(())
        return out

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def two_heads() -> nn.ModuleList:
    torch.manual_seed(0)
    return nn.ModuleList([nn.Linear(3, 4), nn.Linear(4, 1), nn.Linear(4, 1)])


def two_head_losses(net: nn.ModuleList, batch: Any) -> dict[str, torch.Tensor]:
    x, y = batch
    h = net[0](x).tanh()
    return {"t0": F.mse_loss(net[1](h).squeeze(-1), y), "t1": F.l1_loss(net[2](h).squeeze(-1), y)}


class ManyTerms(LossDictModule):
    def __init__(self, terms: int = 16) -> None:
        super().__init__()
        self.net = nn.Linear(4, terms)

    def forward(self, batch: Any) -> Any:
        (x,) = batch
        return {f"t{i}": v for i, v in enumerate(self.net(x).pow(2).mean(0).unbind())}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class PlainManyTerms(L.LightningModule):
    def __init__(self, terms: int = 16) -> None:
        super().__init__()
        self.net = nn.Linear(4, terms)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (x,) = batch
        return self.net(x).pow(2).mean(0).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class HandSynced(PlainManyTerms):
    """The hand-written alternative: every term logged with sync_dist=True."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (x,) = batch
        terms = self.net(x).pow(2).mean(0)
        self.log_dict({f"t{i}": v for i, v in enumerate(terms.unbind())}, sync_dist=True)
        return terms.sum()


def scalarizer_data() -> TensorDataset:
    g = torch.Generator().manual_seed(7)
    return TensorDataset(
        torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g),
        torch.randn(32, generator=g),
    )  # fmt: skip


def regression_data() -> DataLoader:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 3, generator=g)
    return DataLoader(
        TensorDataset(x, x.sum(-1) + 0.1 * torch.randn(16, generator=g)), batch_size=2
    )


def scenario(name: str) -> tuple[L.LightningModule, dict[str, Any], dict[str, Any]]:
    """(module, fit kwargs, trainer kwargs) of a scenario."""
    index = TensorDataset(torch.arange(16.0).unsqueeze(-1))
    if name == "means":
        val = DataLoader(TensorDataset(torch.arange(10.0).unsqueeze(-1)), batch_size=3)
        return (
            RankSteps(),
            dict(train_dataloaders=DataLoader(index, batch_size=1), val_dataloaders=val),
            dict(max_epochs=2, log_every_n_steps=3),
        )
    if name == "loaders":
        vals = [
            DataLoader(TensorDataset(torch.arange(10.0).unsqueeze(-1) + offset), batch_size=3)
            for offset in (0.0, 100.0)
        ]
        return (
            EvalLoaders(),
            dict(train_dataloaders=DataLoader(index, batch_size=1), val_dataloaders=vals),
            dict(max_epochs=1, log_every_n_steps=3),
        )
    if name == "detector":
        from detection import BoxAP, Scenes, TinyRCNN, collate

        torch.manual_seed(0)
        module = LossDictModule(
            TinyRCNN(negatives=16),  # every negative: val losses without random draws
            eval_losses="train_forward",
            metrics={"ap": BoxAP()},
            optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
        )
        module.record_state = True
        data = {
            "train_dataloaders": DataLoader(Scenes(16, 0), batch_size=4, collate_fn=collate),
            "val_dataloaders": DataLoader(Scenes(16, 1), batch_size=4, collate_fn=collate),
        }
        return module, data, dict(max_epochs=2)
    if name == "gan":
        from gan import SequentialGAN
        from lightning.pytorch.strategies import DDPStrategy
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        counted = {"allreduces": 0}

        def counting_allreduce(state: Any, bucket: Any) -> Any:
            counted["allreduces"] += 1  # one per gradient bucket per backward
            return default_hooks.allreduce_hook(state, bucket)

        # DDP checks the annotations themselves (not strings, as this file's future import has)
        counting_allreduce.__annotations__ = {
            "bucket": dist.GradBucket,
            "return": torch.futures.Future[torch.Tensor],
        }

        class CountingGAN(SequentialGAN):
            def on_train_start(self) -> None:
                # (Lightning registers DDPStrategy(ddp_comm_hook=) on CUDA only)
                self.trainer.strategy.model.register_comm_hook(None, counting_allreduce)

        module = CountingGAN()
        module.ddp_record = lambda: {"allreduces": counted["allreduces"]}
        g = torch.Generator().manual_seed(5)
        data = TensorDataset(
            torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g), torch.rand(16, 1)
        )
        return (
            module,
            dict(train_dataloaders=DataLoader(data, batch_size=4)),
            dict(max_epochs=2, strategy=DDPStrategy()),  # the default: no find_unused_parameters
        )
    if name in ("famo", "imtll"):
        from test_scalarizers import TwoTasks
        from torchjd.scalarization import FAMO, IMTLL

        module = TwoTasks(weighting=FAMO(2) if name == "famo" else IMTLL(2))
        return (
            module,
            dict(train_dataloaders=DataLoader(scalarizer_data(), batch_size=4)),
            dict(max_epochs=1),
        )
    if name == "add_loss":
        return (
            AddsLosses(),
            dict(train_dataloaders=DataLoader(index, batch_size=1)),
            dict(max_epochs=1, log_every_n_steps=4),
        )
    if name == "none_rank1":
        return (
            Regression(none_at=(1, 1)),
            dict(train_dataloaders=regression_data()),
            dict(max_steps=4),
        )
    if name in ("nan_raise", "nan_skip"):
        mode = name.split("_")[1]
        return (
            Regression(nonfinite=mode, nan_at=(1, 2)),
            dict(train_dataloaders=regression_data()),
            dict(max_steps=4, log_every_n_steps=2),
        )
    if name == "one_rank_term":
        return OneRankTerm(), dict(train_dataloaders=regression_data()), dict(max_epochs=1)
    if name == "label_less_first":
        data = dict(train_dataloaders=regression_data())
        return LabelLessFirst(), data, dict(max_steps=4, log_every_n_steps=2)
    if name == "routes":
        return TwoHeads(), dict(train_dataloaders=regression_data()), dict(max_steps=4)
    if name == "uw":
        from lightning_losses.weighting import UncertaintyWeighting

        module = WeighedHeads(weighting=UncertaintyWeighting(["t0", "t1"], init_log_variance=0.2))
        return module, dict(train_dataloaders=regression_data()), dict(max_steps=4)
    if name == "aggregator":
        from torchjd.aggregation import UPGrad

        module = WeighedHeads(aggregator=UPGrad())
        return module, dict(train_dataloaders=regression_data()), dict(max_steps=4)
    if name == "diagnostics":
        data = dict(train_dataloaders=regression_data())
        return DiagnosedHeads(), data, dict(max_steps=4, log_every_n_steps=2)
    if name.startswith("count_"):
        module = {"count_ours": ManyTerms, "count_plain": PlainManyTerms, "count_hand": HandSynced}[
            name
        ]()
        data = DataLoader(TensorDataset(torch.randn(160, 4)), batch_size=4)  # 20 steps a rank
        return module, dict(train_dataloaders=data), dict(max_epochs=2, log_every_n_steps=5)
    raise SystemExit(f"unknown scenario {name!r}")


def fit(name: str, out: Path, strategy_name: str) -> None:
    """One scenario's fit; this rank's observations go to ``out/rank<r>.json``."""
    module, fit_kwargs, trainer_kwargs = scenario(name)
    strategy = trainer_kwargs.pop("strategy", strategy_name)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        num_nodes=1,
        logger=MemoryLogger(),
        callbacks=[Recorder(str(out))],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **trainer_kwargs,
    )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.callbacks[-1].caught = caught  # type: ignore[union-attr]  # the Recorder
            trainer.fit(module, **fit_kwargs)
    except Exception as error:  # recorded by Recorder.on_exception; the test reads the files
        print(f"rank {os.environ.get('LOCAL_RANK', '?')}: {type(error).__name__}: {error}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenarios", nargs="+", help="fitted one after another, in this order")
    parser.add_argument("--out", required=True, help="each scenario writes to OUT/<scenario>/")
    parser.add_argument("--strategy", default="ddp", choices=["ddp", "ddp_spawn"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    # Several scenarios share the two processes (starting them, and importing torch and Lightning
    # in each, costs more than most fits). Each starts from the random state of a fresh process,
    # as if it ran alone. Under "ddp" the first fit starts rank 1, which runs the same list; the
    # later fits reuse both processes and the process group.
    seed = torch.initial_seed()
    for name in args.scenarios:
        torch.manual_seed(seed)
        fit(name, Path(args.out) / name, args.strategy)


if __name__ == "__main__":
    main()
