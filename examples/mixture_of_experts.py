"""A mixture-of-experts layer that adds its own load-balancing loss and utilisation metric.

    python examples/mixture_of_experts.py

The router's auxiliary loss (Switch Transformer's ``E * sum_e f_e * P_e``: the fraction of tokens
sent to expert ``e`` times its mean router probability) is computed inside the MoE layer, where
the routing happens, and added with ``ll.add_loss``; each expert's share of the tokens is logged
with ``ll.add_metric`` (``train/expert_share/<e>``). The model's ``forward`` returns the task
loss only. The balancing loss is weighted with ``loss_weights`` like any returned term.
"""

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_losses as ll
from lightning_losses import LossDictModule


class MoE(nn.Module):
    """Top-1 routing over ``experts`` feed-forward experts."""

    def __init__(self, width: int, experts: int) -> None:
        super().__init__()
        self.router = nn.Linear(width, experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width))
            for _ in range(experts)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.router(x).softmax(-1)  # [tokens, experts]
        gate, choice = probs.max(-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            chosen = choice == e
            if chosen.any():
                out[chosen] = gate[chosen, None] * expert(x[chosen])
        share = F.one_hot(choice, len(self.experts)).float().mean(0)  # f_e, no gradient
        ll.add_loss("load_balance", len(self.experts) * (share * probs.mean(0)).sum())
        for e in range(len(self.experts)):
            ll.add_metric(f"expert_share/{e}", share[e])
        return x + out


class Classifier(LossDictModule):
    def __init__(self, width: int = 16, experts: int = 4) -> None:
        super().__init__(
            loss_weights={"load_balance": 1e-2},
            optimizer=lambda params: torch.optim.Adam(params, lr=3e-3),
        )
        self.embed = nn.Linear(6, width)
        self.moe = MoE(width, experts)
        self.head = nn.Linear(width, 3)

    def forward(self, batch):
        x, y = batch
        logits = self.head(self.moe(self.embed(x)))
        accuracy = (logits.argmax(-1) == y).float().mean()  # no gradient: a metric
        return {"ce": F.cross_entropy(logits, y), "acc": accuracy}


def main() -> None:
    L.seed_everything(0, verbose=False)
    x = torch.randn(2400, 6)
    y = (x[:, 0] > 0).long() + (x[:, 1] * x[:, 2] > 0).long()
    train = DataLoader(TensorDataset(x[:2000], y[:2000]), batch_size=100, shuffle=True)
    val = DataLoader(TensorDataset(x[2000:], y[2000:]), batch_size=200)
    trainer = L.Trainer(
        max_epochs=4,
        log_every_n_steps=5,
        logger=CSVLogger("runs", name="mixture_of_experts", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(Classifier(), train, val)
    print(f"per-loss logs: {Path(trainer.log_dir) / 'metrics.csv'}")
    final = sorted(trainer.callback_metrics.items())
    print("final values: " + ", ".join(f"{name}={float(value):.4f}" for name, value in final))


if __name__ == "__main__":
    main()
