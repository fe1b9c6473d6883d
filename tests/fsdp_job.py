"""Two-process jobs (gloo, CPU) that run each scenario under DDP and under FSDP2, in one launch.

    python tests/fsdp_job.py --out DIR SCENARIO:STRATEGY [SCENARIO:STRATEGY ...]

STRATEGY is ``ddp`` (Lightning's ``DDPStrategy()``: no ``find_unused_parameters``) or ``fsdp2``
(``ModelParallelStrategy(data_parallel_size=2)``, the module calling ``fully_shard`` on itself in
``configure_model``); ``fsdp2-blocks`` shards each block first (FSDP2's usual recipe, blocks
resharded after their forward), ``fsdp2-kept`` each block with ``reshard_after_forward=False``.
Every fit of the list runs in the same two processes, one after another (Lightning launches
rank 1 once, at the first fit), so that the cost of starting processes is paid once; each
writes ``DIR/<scenario>-<strategy>/rank<r>.json`` as ``ddp_job.Recorder`` does, with the
parameters gathered whole (FSDP2 shards them) and the warnings the fit raised. Run by
``test_fsdp.py`` in a subprocess with a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import MemoryLogger
from ddp_job import Recorder, regression_data, two_heads

import lightning_losses as ll
from lightning_losses import LossDictModule


def flat_params(module: nn.Module) -> list[float]:
    """Every parameter, whole: a sharded one is gathered (a collective: every rank calls it)."""
    from torch.distributed.tensor import DTensor

    whole = [p.full_tensor() if isinstance(p, DTensor) else p for p in module.parameters()]
    return torch.cat([p.detach().flatten() for p in whole]).tolist()


class WholeRecorder(Recorder):
    """``Recorder`` with whole parameters, and none after an exception (gathering them then
    could wait forever for a rank that did not fail)."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial_params = flat_params(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.step_params.append(flat_params(pl_module))

    def write(self, trainer, pl_module, exception) -> None:
        import ddp_job

        original = ddp_job.flat_params
        ddp_job.flat_params = flat_params if exception is None else (lambda module: None)
        try:
            super().write(trainer, pl_module, exception)
        finally:
            ddp_job.flat_params = original


class Heads(LossDictModule):
    """A trunk and two heads (``two_heads``), sharded under FSDP2 as ``recipe`` says.

    ``optional``: head 1's term ``t1`` is on rank 1 at every step, on rank 0 from step 2 on only
    (its first appearance there comes after steps that never saw it); ``late``: on no rank
    before step 2. ``added``: ``t1`` comes from ``add_loss`` on rank 1 only, with a metric from
    every rank.
    """

    def __init__(
        self,
        routes: str | None = None,
        optional: bool = False,
        nested: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.net = two_heads()
        self.routes, self.optional, self.nested = routes, optional, nested
        self.added = False
        self.late = False  # t1 on no rank before step 2

    #: How ``configure_model`` shards under FSDP2: ``"root"`` (the module whole), ``"blocks"``
    #: (FSDP2's usual recipe: each block, resharded after its forward by default, then the
    #: root), ``"kept"`` (each block with ``reshard_after_forward=False``, then the root).
    recipe = "root"

    def configure_model(self) -> None:
        if isinstance(self.trainer.strategy, ModelParallelStrategy):
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            if self.nested:  # the trunk its own group, resharded after its forward (default)
                fully_shard(self.net[0], mesh=mesh)
            if self.recipe != "root":
                for block in self.net:
                    fully_shard(block, mesh=mesh, reshard_after_forward=self.recipe == "blocks")
            fully_shard(self, mesh=mesh)

    def forward(self, batch: Any) -> Any:
        x, y = batch
        where = (self.global_rank, self.trainer.global_step)
        if self.training and getattr(self, "early", False) and where == getattr(self, "none_at", 0):
            return None  # before any block runs: the blocks' zeros must pair up
        h = self.net[0](x).tanh()
        out = {"t0": F.mse_loss(self.net[1](h).squeeze(-1), y)}
        second = F.l1_loss(self.net[2](h).squeeze(-1), y)
        rank, step = self.global_rank, self.trainer.global_step
        if self.training and (rank, step) == getattr(self, "none_at", None):
            return None
        if self.added:
            if rank == 1:
                ll.add_loss("t1", second)
            ll.add_metric("util", float(rank))
        elif not (self.training and step < 2 and (self.late or (self.optional and rank == 0))):
            out["t1"] = second
        return out

    def ddp_record(self) -> dict[str, Any]:
        """Each route's optimizer steps so far (what its scheduler follows)."""
        from lightning_losses.routing import RoutedOptimizer, route_name

        optimizer = self.trainer.optimizers[0]
        if not isinstance(optimizer, RoutedOptimizer):
            return {}
        return {"route_steps": {route_name(r): n for r, n in optimizer.steps_taken.items()}}

    def configure_optimizers(self) -> Any:
        trunk, head0, head1 = self.net
        owned0 = [*trunk.parameters(), *head0.parameters()]
        if self.routes is None:
            return torch.optim.SGD(self.parameters(), lr=0.1)
        if self.routes == "three":  # heads on their own terms, the trunk on the total
            return {
                "t0": torch.optim.SGD(head0.parameters(), lr=0.1),  # keeps no state
                "t1": torch.optim.Adam(head1.parameters(), lr=0.01),
                "loss": torch.optim.SGD(trunk.parameters(), lr=0.1, momentum=0.9),
            }
        if self.routes == "turns":
            return {
                "t0": {"optimizer": torch.optim.SGD(owned0, lr=0.1), "frequency": 5},
                "t1": {"optimizer": torch.optim.Adam(head1.parameters(), lr=0.01), "frequency": 1},
            }
        if self.routes == "adam":  # state to checkpoint
            return {
                "t0": torch.optim.Adam(owned0, lr=0.01),
                "t1": torch.optim.SGD(head1.parameters(), lr=0.2, momentum=0.9),
            }
        route0 = torch.optim.SGD(owned0, lr=0.1)
        route1 = torch.optim.SGD(head1.parameters(), lr=0.2)
        if self.routes == "frequency":
            return {
                "t0": {"optimizer": route0, "frequency": 1},
                "t1": {"optimizer": route1, "frequency": 2},
            }
        return {"t0": route0, "t1": route1}  # joint, or sequential by route_mode


def module_for(scenario: str) -> Heads:
    """``BASE`` or ``BASE+optional`` / ``BASE+late`` / ``BASE+none``: the base scenario with
    ``t1`` absent on rank 0 (on both ranks) at steps 0 and 1, or with rank 1's forward returning
    ``None`` at step 1 (``+early``: before running any block)."""
    base, *options = scenario.split("+")
    module = _base_module(base)
    module.optional = module.optional or "optional" in options
    module.late = "late" in options
    if "none" in options or base == "none":  # nothing to learn on rank 1 at step 1
        module.none_at = (1, 1)
    module.early = "early" in options  # None before any block runs
    return module


def _base_module(scenario: str) -> Heads:
    if scenario in ("one", "none"):
        return Heads()
    if scenario == "optional":
        return Heads(optional=True)
    if scenario in ("joint", "frequency", "three"):
        return Heads(routes=scenario)
    if scenario == "sequential":
        return Heads(routes="joint", route_mode="sequential")
    if scenario == "uw":
        from lightning_losses.weighting import UncertaintyWeighting

        return Heads(weighting=UncertaintyWeighting(["t0", "t1"], init_log_variance=0.2))
    if scenario == "add_loss":
        module = Heads()
        module.added = True
        return module
    if scenario == "diagnostics":
        return Heads(grad_diagnostics_every_n_steps=1)
    if scenario == "nested_optional":
        return Heads(optional=True, nested=True)
    if scenario == "nested_diagnostics":
        return Heads(nested=True, grad_diagnostics_every_n_steps=1)
    if scenario == "nested_routes":
        return Heads(routes="joint", nested=True)
    if scenario == "resume":  # Adam and SGD with momentum: both keep state
        return Heads(routes="adam")
    if scenario == "resume_three":  # the three routes: plain SGD (no state), Adam, momentum
        return Heads(routes="three")
    if scenario == "resume_turns":  # turns: 5 steps of plain SGD, then 1 of Adam, which has
        return Heads(routes="turns")  # not stepped when the first epoch (4 steps) is saved
    raise SystemExit(f"unknown scenario {scenario!r}")


def run(scenario: str, strategy_name: str, out: Path) -> None:
    """One fit; ``resume``: a 2-epoch run that saves after epoch 1, then a run resumed there."""
    fits: list[tuple[str, dict[str, Any], list[Any], int]] = [(scenario, {}, [], 1)]
    if scenario.startswith("resume"):
        saved = out / "checkpoints" / f"{scenario}-{strategy_name}"
        saver = ModelCheckpoint(dirpath=saved, every_n_epochs=1, save_top_k=-1)
        fits = [
            (f"{scenario}-straight", {}, [], 2),
            (f"{scenario}-saving", {}, [saver], 1),
            (f"{scenario}-resumed", {"ckpt_path": saved / "epoch=0-step=4.ckpt"}, [], 2),
        ]
    for name, fit_kwargs, callbacks, epochs in fits:
        target = out / f"{name}-{strategy_name}"
        trainer = L.Trainer(
            accelerator="cpu",
            devices=2,
            strategy=strategy(strategy_name),
            logger=MemoryLogger(),
            callbacks=[WholeRecorder(str(target)), *callbacks],
            enable_checkpointing=bool(callbacks),
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            max_epochs=epochs,
            # 4 steps an epoch: windows straddle the epoch's end. Not a resumed run's checkpoint:
            # under DDP and FSDP2 a checkpoint keeps rank 0's part of a partly filled window only
            # (docs/guarantees.md), so that window is not an uninterrupted run's.
            log_every_n_steps=2 if scenario.startswith("resume") else 3,
        )
        module = module_for(scenario)
        if strategy_name.startswith("fsdp2-"):
            module.recipe = strategy_name.removeprefix("fsdp2-")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                trainer.fit(module, regression_data(), **fit_kwargs)
            except Exception as error:  # recorded by the Recorder; the test reads the files
                print(f"rank {os.environ.get('LOCAL_RANK', '?')}: {type(error).__name__}: {error}")
        path = target / f"rank{trainer.global_rank}.json"
        if path.exists():
            record = json.loads(path.read_text())
            record["warnings"] = [str(w.message) for w in caught]
            path.write_text(json.dumps(record))


def strategy(name: str) -> Any:
    """FSDP2 over both processes (data parallel; "auto" would make them tensor parallel), or
    DDP without find_unused_parameters."""
    timeout = timedelta(seconds=60)  # a collective that never completes fails the fit
    if name.startswith("fsdp2"):
        return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, timeout=timeout)
    return DDPStrategy(timeout=timeout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("jobs", nargs="+", help="SCENARIO:STRATEGY")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for job in args.jobs:
        scenario, strategy = job.split(":")
        run(scenario, strategy, Path(args.out))


if __name__ == "__main__":
    main()
