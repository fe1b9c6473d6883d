"""Optional terms under DDP: our zero gradients against ``find_unused_parameters=True``.

    python benchmarks/optional_terms.py [--steps 400]

A trunk and 8 heads (hidden width 64); each head's term is present on a rank at a step with
probability 1/2 (drawn from rank and step), so nearly every step misses some terms somewhere.
Three 2-rank gloo jobs on the CPU: ``strategy="ddp"`` (no ``find_unused_parameters``: the library
gives the parameters a step's objective does not reach a zero gradient, see absent_terms.py),
``ddp_find_unused_parameters_true`` with that disabled (what users paid before), and, for
reference, every term present at every step under plain ``ddp``. Prints ms per step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

HEADS = 8


def run_rank(variant: str, steps: int, out: Path) -> None:
    """Inside the DDP job: train one variant and write rank 0's time per step."""
    import lightning as L
    import torch
    import torch.nn.functional as F
    from _common import StepTimer
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_losses import LossDictModule
    from lightning_losses.distributed.absent_terms import AbsentTerms

    if variant == "find_unused":  # the library's part off: DDP finds them itself
        AbsentTerms.cover = lambda self, module, names, objective: objective  # type: ignore

    class Heads(LossDictModule):
        def __init__(self) -> None:
            super().__init__(optimizer=lambda p: torch.optim.SGD(p, lr=0.01))
            self.trunk = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh())
            self.heads = nn.ModuleList(nn.Linear(64, 1) for _ in range(HEADS))

        def forward(self, batch):
            x, y = batch
            h = self.trunk(x)
            step, rank = self.trainer.global_step, self.global_rank
            draw = torch.Generator().manual_seed(1000 * step + rank)
            present = torch.rand(HEADS, generator=draw) < 0.5
            if variant == "all":
                present[:] = True
            present[0] = True  # never an empty step
            return {
                f"h{i}": F.mse_loss(head(h).squeeze(-1), y)
                for i, head in enumerate(self.heads)
                if present[i]
            }

    torch.set_num_threads(1)
    torch.manual_seed(0)
    timer = StepTimer(warmup=20)
    data = DataLoader(TensorDataset(torch.randn(16, 32), torch.randn(16)), batch_size=16)
    strategy = "ddp_find_unused_parameters_true" if variant == "find_unused" else "ddp"
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_steps=steps,
        logger=False,
        log_every_n_steps=50,
        callbacks=[timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    # one batch a rank, many epochs: the same batch every step, as the timing wants
    trainer.fit(Heads(), data)
    if trainer.global_rank == 0:
        (out / f"{variant}.json").write_text(json.dumps({"per_step": timer.per_step}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # a rank of one job
        run_rank(args.variant, args.steps, Path(args.out))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("ours", "find_unused", "all"):
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
            command = [sys.executable, __file__, "--variant", variant, "--out", tmp]
            command += ["--steps", str(args.steps)]
            subprocess.run(command, check=True, env=env, timeout=900, capture_output=True)
            results[variant] = json.loads((Path(tmp) / f"{variant}.json").read_text())
    print(f"2 gloo ranks on CPU, a trunk and {HEADS} optional heads, {args.steps} steps")
    names = {
        "ours": 'strategy="ddp" (zero gradients for absent terms)',
        "find_unused": '"ddp_find_unused_parameters_true"',
        "all": 'strategy="ddp", every term present (reference)',
    }
    for variant, r in results.items():
        print(f"{names[variant]:>52}: {r['per_step'] * 1e3:.3f} ms/step")


if __name__ == "__main__":
    main()
