"""A HuggingFace mixture-of-experts causal LM, trained as it is: its ``loss`` already includes
``router_aux_loss_coef * aux_loss``.

    python examples/huggingface_moe.py     # ~10 s on a CPU; needs `pip install transformers`

The model is a tiny ``MixtralForCausalLM`` built from a config (nothing is downloaded) and the
batches are HuggingFace-style mappings ``{"input_ids", "labels"}``, so ``LossDictModule`` calls
``model(**batch)`` (its ``forward`` takes those keywords). ``total_key="loss"`` says that ``loss``
is the model's own total: it is what is backpropagated and logged as ``train/loss``, and
``aux_loss`` is logged beside it as ``train/aux_loss`` without being added again. Without it,
the ``loss`` next to ``aux_loss`` is an error that names this option.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader
from transformers import MixtralConfig, MixtralForCausalLM

from lightning_losses import LossDictModule


def counting_sequences(n: int, length: int, vocab: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Token sequences that count up modulo ``vocab`` from a random start: learnable quickly."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, vocab, (n, 1), generator=g)
    ids = (starts + torch.arange(length)) % vocab
    return [{"input_ids": row, "labels": row} for row in ids]


def main() -> None:
    L.seed_everything(0, verbose=False)
    config = MixtralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        output_router_logits=True,  # the model returns aux_loss (and adds it to loss)
        router_aux_loss_coef=0.02,
        max_position_embeddings=64,
    )
    module = LossDictModule(
        MixtralForCausalLM(config),
        total_key="loss",
        optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3),
    )
    train = DataLoader(counting_sequences(512, 16, 64, seed=0), batch_size=32, shuffle=True)
    val = DataLoader(counting_sequences(64, 16, 64, seed=1), batch_size=32)
    trainer = L.Trainer(
        max_epochs=3,
        log_every_n_steps=4,
        logger=CSVLogger("runs", name="huggingface_moe", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, train, val)
    print(f"per-loss logs: {Path(trainer.log_dir) / 'metrics.csv'}")
    final = sorted(trainer.callback_metrics.items())
    print("final values: " + ", ".join(f"{name}={float(value):.4f}" for name, value in final))


if __name__ == "__main__":
    main()
