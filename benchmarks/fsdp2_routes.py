"""Per-key routes under FSDP2 (2 gloo ranks on a CPU): peak memory per rank and step time, per
sharding recipe.

    python benchmarks/fsdp2_routes.py [--steps 60] [--width 1024] [--blocks 4]

Model: a trunk of ``--blocks`` blocks (``Linear(width, width)`` and ``tanh``) and two heads, terms
``t0`` and ``t1`` (one per head). Recipes, as ``configure_model`` applies ``fully_shard``:

* ``root``: the whole module as one group;
* ``blocks``: FSDP2's usual recipe, each trunk block and each head a group resharded after its
  forward (the default), then the root;
* ``kept``: the same blocks with ``reshard_after_forward=False``.

Optimizers: ``one`` (one SGD), ``disjoint`` routes (each head on its own term, the trunk on
``"loss"``: one backward of the total), ``overlapping`` routes (the trunk on ``t0``, which
``t1`` also reaches: a backward per route, with every block gathered once before it).

Memory: the most heap a rank holds at once over three steps, above what it held when they began
(between steps: its shards, optimizer state, the last step's gradients), read from glibc's
``mallinfo2`` by a sampling thread (Linux only).
Time: wall time per step after a warm-up, both ranks sharing the machine's cores. Rank 0 prints
one row per (recipe, optimizers).
"""

from __future__ import annotations

import argparse
import ctypes
import threading
import time
import warnings
from datetime import timedelta
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossDictModule

warnings.filterwarnings("ignore")
RECIPES = ("root", "blocks", "kept")
ROUTES = ("one", "disjoint", "overlapping")


class Heads(LossDictModule):
    def __init__(self, recipe: str, routes: str, width: int, blocks: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.recipe, self.routes = recipe, routes
        self.trunk = nn.Sequential(
            *(nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(blocks))
        )
        self.heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(2))

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        if self.recipe != "root":
            for block in [*self.trunk, *self.heads]:
                fully_shard(block, mesh=mesh, reshard_after_forward=self.recipe == "blocks")
        fully_shard(self, mesh=mesh)

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        x, y = batch
        h = self.trunk(x)
        return {f"t{i}": F.mse_loss(head(h).squeeze(-1), y) for i, head in enumerate(self.heads)}

    def configure_optimizers(self) -> Any:
        def sgd(*modules: nn.Module) -> torch.optim.SGD:
            return torch.optim.SGD([p for m in modules for p in m.parameters()], lr=1e-3)

        if self.routes == "one":
            return sgd(self)
        if self.routes == "disjoint":
            return {"t0": sgd(self.heads[0]), "t1": sgd(self.heads[1]), "loss": sgd(self.trunk)}
        return {"t0": sgd(self.trunk, self.heads[0]), "t1": sgd(self.heads[1])}


class Measure(Callback):
    """Step time after ``warmup`` batches; the memory peak over the ``profiled`` batches."""

    def __init__(self, warmup: int = 10, profiled: range = range(4, 7)) -> None:
        self.warmup, self.profiled = warmup, profiled
        self.batches, self.start, self.end = 0, 0.0, 0.0
        self.peak = 0
        self._sampler: HeapPeak | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.batches == self.warmup:
            self.start = time.perf_counter()
        if self.batches == self.profiled.start:
            self._sampler = HeapPeak()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        if self._sampler is not None and self.batches == self.profiled.stop:
            self.peak = self._sampler.stop()
            self._sampler = None
        if self.batches > self.warmup:
            self.end = time.perf_counter()

    @property
    def per_step(self) -> float:
        return (self.end - self.start) / (self.batches - self.warmup)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


class HeapPeak:
    """The most heap bytes in use at once, above those in use when it starts: glibc's
    ``mallinfo2`` (chunks in use plus mmapped blocks: every tensor on a CPU, gloo's buffers)
    read in a loop by a thread of its own (the call releases the GIL). Measured by the heap,
    not by torch: the profiler's allocator totals miss frees made in gloo's threads."""

    def __init__(self) -> None:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        self._read = libc.mallinfo2
        self.base = self._in_use()
        self.peak = self.base
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _in_use(self) -> int:
        info = self._read()
        return int(info.uordblks + info.hblkhd)

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, self._in_use())

    def stop(self) -> int:
        self._running = False
        self._thread.join()
        return self.peak - self.base


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--blocks", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.steps * 2 * 8, args.width, generator=g)
    data = DataLoader(TensorDataset(x, x.mean(-1)), batch_size=8)
    params = (args.width + 1) * (args.width * args.blocks + 2) * 4
    rows = []
    for recipe in RECIPES:
        for routes in ROUTES:
            measure = Measure()
            trainer = L.Trainer(
                accelerator="cpu",
                devices=2,
                strategy=ModelParallelStrategy(
                    data_parallel_size=2, tensor_parallel_size=1, timeout=timedelta(seconds=120)
                ),
                max_steps=args.steps,
                logger=False,
                callbacks=[measure],
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            trainer.fit(Heads(recipe, routes, args.width, args.blocks), data)
            rows.append((recipe, routes, measure.peak, measure.per_step))
    if trainer.global_rank == 0:
        print(f"parameters: {params / 2**20:.1f} MiB whole, {params / 2**21:.1f} MiB a rank")
        print(f"{'recipe':>8} {'optimizers':>12} {'peak MiB':>9} {'ms/step':>8}")
        for recipe, routes, peak, per_step in rows:
            print(f"{recipe:>8} {routes:>12} {peak / 2**20:9.1f} {per_step * 1e3:8.2f}")


if __name__ == "__main__":
    main()
