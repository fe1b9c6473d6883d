"""A HuggingFace DETR, whose output holds ``loss`` and the ``loss_dict`` it was summed from.

    python examples/detr_loss_dict.py            # DETR's own weighting (total_key="loss")
    python examples/detr_loss_dict.py --reweigh  # the terms chosen and weighted here

~10 s on a CPU; needs ``pip install transformers scipy`` (DETR's Hungarian matcher uses scipy).
The model is built tiny from a config with HuggingFace's own ResNet backbone (no timm, nothing
downloaded); batches are ``{"pixel_values", "labels"}``, so it is called as ``model(**batch)``.

Two ways to train it, one constructor argument each:

* ``total_key="loss"``: DETR's ``loss`` (``loss_ce + bbox_loss_coefficient * loss_bbox +
  giou_loss_coefficient * loss_giou``) is backpropagated and logged as ``train/loss``; every part
  is logged as ``train/loss_dict/<part>``, and ``cardinality_error`` (no gradient) too;
* ``loss_keys`` + ``loss_weights``: the parts are the terms and the weights are ours to change
  (here: DETR's own, read from its config, so ``train/loss`` equals DETR's ``loss``); each weight
  is logged as ``weight/loss_dict/<part>``. DETR's own ``loss`` then passes through unlogged.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader
from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

from lightning_losses import LossDictModule


def tiny_detr() -> DetrForObjectDetection:
    backbone = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], out_features=["stage4"]
    )
    config = DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=backbone,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=6,
        num_labels=3,
    )
    return DetrForObjectDetection(config)


def boxes_on_noise(n: int, seed: int) -> list[dict]:
    """Images with one or two bright squares; targets: classes and normalised cx, cy, w, h."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        pixels = torch.randn(4, 3, 64, 64, generator=g) * 0.1
        labels = []
        for image in pixels:
            k = int(torch.randint(1, 3, (), generator=g))
            classes = torch.randint(0, 3, (k,), generator=g)
            boxes = []
            for cls in classes.tolist():
                x, y = torch.randint(0, 44, (2,), generator=g).tolist()
                image[cls, y : y + 20, x : x + 20] += 1.0
                boxes.append([(x + 10) / 64, (y + 10) / 64, 20 / 64, 20 / 64])
            labels.append({"class_labels": classes, "boxes": torch.tensor(boxes)})
        batches.append({"pixel_values": pixels, "labels": labels})
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reweigh", action="store_true")
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    model = tiny_detr()
    if args.reweigh:
        parts = {
            "loss_dict/loss_ce": 1.0,
            "loss_dict/loss_bbox": model.config.bbox_loss_coefficient,
            "loss_dict/loss_giou": model.config.giou_loss_coefficient,
        }
        options = {"loss_keys": list(parts), "loss_weights": parts}
    else:
        options = {"total_key": "loss"}
    module = LossDictModule(
        model, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3), **options
    )
    trainer = L.Trainer(
        max_epochs=2,
        log_every_n_steps=4,
        logger=CSVLogger("runs", name="detr_loss_dict", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    # batch_size=None: each item is already a batch
    train = DataLoader(boxes_on_noise(24, seed=0), batch_size=None, shuffle=True)
    val = DataLoader(boxes_on_noise(4, seed=1), batch_size=None)
    trainer.fit(module, train, val)
    print(f"per-loss logs: {Path(trainer.log_dir) / 'metrics.csv'}")
    final = sorted(trainer.callback_metrics.items())
    print("final values: " + ", ".join(f"{name}={float(value):.4f}" for name, value in final))


if __name__ == "__main__":
    main()
