"""Logging 16 terms under DDP: collectives per step and step time, ours against ``sync_dist=True``.

    python benchmarks/ddp_logging.py [--steps 300]

Runs a 2-rank gloo job on the CPU for each variant (Lightning's ``ddp`` strategy relaunches this
script for rank 1): a plain LightningModule that logs nothing, the same with a hand-written
``self.log_dict(..., sync_dist=True)`` of all 16 terms, and ``LossDictModule``. Each rank counts
the ``torch.distributed`` collectives issued during training (DDP's own gradient all-reduce runs
in C++ and is the same for all three) and times its steps. Prints the per-step figures and ratios.
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
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))


def run_rank(variant: str, steps: int, out: Path) -> None:
    """Inside the DDP job: train one variant and write rank 0's figures."""
    import lightning as L
    import torch
    from _common import StepTimer
    from ddp_job import HandSynced, ManyTerms, PlainManyTerms, Recorder
    from torch.utils.data import DataLoader, TensorDataset

    torch.set_num_threads(1)
    module = {"plain": PlainManyTerms, "sync_dist": HandSynced, "ours": ManyTerms}[variant]()
    timer, recorder = StepTimer(warmup=20), Recorder(str(out / "records"))
    data = DataLoader(TensorDataset(torch.randn(2 * steps * 4, 4)), batch_size=4)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=steps,
        logger=False,
        log_every_n_steps=50,
        callbacks=[timer, recorder],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data)
    if trainer.global_rank == 0:
        collectives = sum(recorder.counts.values())
        (out / f"{variant}.json").write_text(
            json.dumps({"per_step": timer.per_step, "collectives": collectives, "steps": steps})
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # a rank of one job
        run_rank(args.variant, args.steps, Path(args.out))
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for variant in ("plain", "sync_dist", "ours"):
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--variant",
                    variant,
                    "--steps",
                    str(args.steps),
                    "--out",
                    tmp,
                ],
                check=True,
                env=env,
                timeout=900,
                capture_output=True,
            )
            results[variant] = json.loads((Path(tmp) / f"{variant}.json").read_text())
    print(f"2 gloo ranks on CPU, 16 terms, {args.steps} steps, log_every_n_steps=50")
    print(f"{'variant':>10} {'ms/step':>8} {'collectives/step':>17}")
    for variant, r in results.items():
        print(f"{variant:>10} {r['per_step'] * 1e3:>8.3f} {r['collectives'] / r['steps']:>17.3f}")
    plain, hand, ours = (results[k]["per_step"] for k in ("plain", "sync_dist", "ours"))
    print(f"step time: ours/plain {ours / plain:.2f}, sync_dist/ours {hand / ours:.2f}")


if __name__ == "__main__":
    main()
