"""A detector-like model: losses in training mode, predictions in eval mode.

    python examples/detector.py

Like torchvision's detectors, ``forward`` returns a dict of losses while training and predictions
otherwise. Training needs nothing but the model; validation overrides ``validation_step`` to score
predictions with a torchmetrics metric (a stateful metric logged with ``self.log`` is reduced by
torchmetrics itself, correctly under DDP).
"""

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossDictModule


class TinyDetector(nn.Module):
    """Classifies an object and regresses its box centre; two losses, like an RPN's."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(12, 64), nn.ReLU())
        self.cls, self.box = nn.Linear(64, classes), nn.Linear(64, 2)

    def forward(self, images, targets=None):
        h = self.backbone(images)
        logits, boxes = self.cls(h), self.box(h)
        if self.training:
            labels, centres = targets
            return {
                "loss_classifier": F.cross_entropy(logits, labels),
                "loss_box_reg": F.smooth_l1_loss(boxes, centres),
            }
        return {"labels": logits.argmax(-1), "scores": logits.softmax(-1).amax(-1), "boxes": boxes}


class DetectionModule(LossDictModule):
    def __init__(self) -> None:
        super().__init__(
            TinyDetector(),
            loss_keys="loss_*",
            optimizer=lambda params: torch.optim.Adam(params, lr=3e-3),
        )
        self.accuracy = torchmetrics.Accuracy(task="multiclass", num_classes=3)

    def forward(self, batch):
        images, labels, centres = batch
        return self.model(images, (labels, centres) if self.training else None)

    def validation_step(self, batch, batch_idx):
        predictions = self(batch)  # eval mode: predictions, no losses
        self.accuracy(predictions["labels"], batch[1])
        self.log("val/accuracy", self.accuracy, on_epoch=True)
        box_error = (predictions["boxes"] - batch[2]).abs().mean()
        return self.total_loss({"box_error": box_error}, stage="val", batch=batch)


def synthetic_scenes(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 12, generator=g)
    labels = images[:, :3].argmax(-1)
    centres = images[:, 3:5] * 0.5
    return TensorDataset(images, labels, centres)


def main() -> None:
    L.seed_everything(0, verbose=False)
    train = DataLoader(synthetic_scenes(1024, 0), batch_size=64, shuffle=True)
    val = DataLoader(synthetic_scenes(256, 1), batch_size=64)
    trainer = L.Trainer(
        max_epochs=5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(DetectionModule(), train, val)
    print({k: round(float(v), 4) for k, v in sorted(trainer.callback_metrics.items())})


if __name__ == "__main__":
    main()
