"""Per-step cost of logging every loss term, against a plain LightningModule, in one run.

    python benchmarks/logging_overhead.py [--steps 600] [--repeats 3]

(a) a plain LightningModule returning the summed loss and logging nothing;
(b) the same with a hand-written ``self.log_dict`` of every term;
(c) ``LossDictModule`` on the same model (every term, the total, logged every 50 steps).
All use a CSV logger and ``log_every_n_steps=50``. Prints c/a (the price of our logging) and
b/c (what the hand-written way costs more). Target: c/a <= 1.05 at 32 terms.
"""

from __future__ import annotations

import argparse
import tempfile

import lightning as L
import torch
from _common import TermsModel, best_of, time_fit
from lightning.pytorch.loggers import CSVLogger

from lightning_losses import LossDictModule


class PlainSum(L.LightningModule):
    def __init__(self, terms: int) -> None:
        super().__init__()
        self.model = TermsModel(terms)

    def training_step(self, batch, batch_idx):
        return torch.stack(list(self.model(batch).values())).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class HandLogged(PlainSum):
    def training_step(self, batch, batch_idx):
        losses = self.model(batch)
        self.log_dict(losses)
        return torch.stack(list(losses.values())).sum()


def ours(terms: int) -> LossDictModule:
    return LossDictModule(TermsModel(terms), optimizer=lambda p: torch.optim.SGD(p, lr=1e-3))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--terms", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--accelerator", default="cpu", help="cpu or gpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"steps={args.steps} repeats={args.repeats} torch={torch.__version__} "
        f"lightning={L.__version__}"
    )
    print(
        f"{'terms':>5} {'a: plain ms':>12} {'b: log_dict ms':>15} {'c: ours ms':>11} "
        f"{'c/a':>6} {'b/c':>6}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for terms in args.terms:
            times: dict[str, list[float]] = {"a": [], "b": [], "c": []}
            for _ in range(args.repeats):  # interleaved, so drift hits all three alike
                for key, make in (("a", PlainSum), ("b", HandLogged), ("c", ours)):
                    times[key].append(
                        time_fit(
                            make(terms),
                            args.steps,
                            CSVLogger(tmp),
                            log_every_n_steps=50,
                            accelerator=args.accelerator,
                        )
                    )
            a, b, c = (best_of(times[k]) for k in "abc")
            print(
                f"{terms:>5} {a * 1e3:>12.3f} {b * 1e3:>15.3f} {c * 1e3:>11.3f} "
                f"{c / a:>6.2f} {b / c:>6.2f}"
            )


if __name__ == "__main__":
    main()
