"""A Faster R-CNN-style detector: losses in training mode, predictions in eval mode.

    python examples/detector.py     # ~5 s on a CPU

``TinyRCNN`` has the calling convention of torchvision's detectors (``model(images, targets)``
-> a dict of four losses in training, ``model(images)`` -> one ``{"boxes", "scores", "labels"}``
dict per image in eval), a BatchNorm backbone with dropout, and a proposal sampler that draws from
torch's random stream. With torchvision installed, its detectors and torchmetrics'
``MeanAveragePrecision`` drop in unchanged::

    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, num_classes=4)
    module = LossDictModule(model, eval_losses="train_forward", metrics=MeanAveragePrecision())

(this file does not import torchvision, so that it runs where torchvision cannot be installed;
``BoxAP`` below, a torchmetrics ``Metric`` computing VOC-style AP at IoU 0.5, stands in for
``MeanAveragePrecision``).

The whole glue is two constructor arguments:

* ``eval_losses="train_forward"``: ``val/`` losses come from a training-mode forward in which
  BatchNorm and dropout stay in eval mode and the random state is restored, so validation changes
  nothing that training sees;
* ``metrics=``: torchmetrics updated with the eval-mode predictions and ``batch[-1]`` (the
  targets), logged per epoch as ``val/map_50``...; under DDP torchmetrics syncs its own states.

The batch ``(images, targets)`` is unpacked into ``model(images, targets)`` because ``forward``'s
signature asks for it (``call="auto"``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics import Metric

from lightning_losses import LossDictModule

IMAGE = 32
GRID = 4
CELL = IMAGE // GRID


def anchors() -> Tensor:
    """One anchor box per grid cell, ``[GRID * GRID, 4]`` in ``x1, y1, x2, y2``."""
    ys, xs = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    x1, y1 = xs.flatten() * CELL, ys.flatten() * CELL
    return torch.stack([x1, y1, x1 + CELL, y1 + CELL], dim=1).float()


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


class TinyRCNN(nn.Module):
    """``GeneralizedRCNN``'s calling convention and train/eval behaviour, in a few layers."""

    def __init__(self, num_classes: int = 3, negatives: int = 4) -> None:
        super().__init__()
        self.negatives = negatives
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.AdaptiveAvgPool2d(GRID),
        )
        self.objectness = nn.Linear(8, 1)
        self.rpn_deltas = nn.Linear(8, 4)
        self.classifier = nn.Linear(8, num_classes + 1)  # 0 is the background
        self.box_deltas = nn.Linear(8, 4)
        self.register_buffer("anchors", anchors(), persistent=False)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.training and targets is None:
            raise ValueError("targets should not be none when in training mode")
        features = self.backbone(torch.stack(list(images)))  # [B, 8, GRID, GRID]
        cells = features.flatten(2).transpose(1, 2)  # [B, A, 8]
        if self.training:
            return self._losses(cells, targets)
        return self._detections(cells)

    def _losses(self, cells: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        objectness, rpn, classes, deltas = [], [], [], []
        for image_cells, target in zip(cells, targets):
            labels, boxes = self._match(target)
            positive = (labels > 0).nonzero().flatten()
            negative = (labels == 0).nonzero().flatten()
            # the sampler draws from torch's global random stream, as torchvision's does
            negative = negative[torch.randperm(negative.numel())[: self.negatives]]
            sampled = torch.cat([positive, negative])
            objectness.append(
                F.binary_cross_entropy_with_logits(
                    self.objectness(image_cells[sampled]).squeeze(-1),
                    (labels[sampled] > 0).float(),
                )
            )
            classes.append(F.cross_entropy(self.classifier(image_cells[sampled]), labels[sampled]))
            goal = (boxes[positive] - self.anchors[positive]) / CELL
            rpn.append(
                F.smooth_l1_loss(self.rpn_deltas(image_cells[positive]), goal, reduction="sum")
            )
            deltas.append(
                F.smooth_l1_loss(self.box_deltas(image_cells[positive]), goal, reduction="sum")
            )
        count = max(1, sum(int((self._match(t)[0] > 0).sum()) for t in targets))
        return {
            "loss_classifier": torch.stack(classes).mean(),
            "loss_box_reg": torch.stack(deltas).sum() / count,
            "loss_objectness": torch.stack(objectness).mean(),
            "loss_rpn_box_reg": torch.stack(rpn).sum() / count,
        }

    def _match(self, target: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Each anchor's class (0: background) and box: the object whose centre it holds."""
        labels = torch.zeros(len(self.anchors), dtype=torch.long, device=self.anchors.device)
        boxes = self.anchors.clone()
        for box, label in zip(target["boxes"], target["labels"]):
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            index = int(cy // CELL) * GRID + int(cx // CELL)
            labels[index], boxes[index] = label, box
        return labels, boxes

    def _detections(self, cells: Tensor) -> list[dict[str, Tensor]]:
        out = []
        for image_cells in cells:
            probabilities = self.classifier(image_cells).softmax(-1)[:, 1:]
            scores, labels = probabilities.max(-1)
            boxes = self.anchors + self.box_deltas(image_cells) * CELL
            keep = scores > 0.05
            out.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep] + 1})
        return out


class Scenes(Dataset):
    """Images with one or two coloured squares; the colour is the class."""

    def __init__(self, n: int, seed: int, num_classes: int = 3) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            image = torch.randn(3, IMAGE, IMAGE, generator=generator) * 0.1
            boxes, labels = [], []
            for _ in range(int(torch.randint(1, 3, (), generator=generator))):
                label = int(torch.randint(1, num_classes + 1, (), generator=generator))
                x, y = torch.randint(0, IMAGE - 10, (2,), generator=generator).tolist()
                size = int(torch.randint(6, 10, (), generator=generator))
                image[(label - 1) % 3, y : y + size, x : x + size] += 1.0
                boxes.append([x, y, x + size, y + size])
                labels.append(label)
            target = {
                "boxes": torch.tensor(boxes, dtype=torch.float),
                "labels": torch.tensor(labels),
            }
            self.items.append((image, target))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def collate(samples):
    """torchvision's detection references collate: ``(images, targets)`` as tuples."""
    return tuple(zip(*samples))


class BoxAP(Metric):
    """VOC-style average precision at IoU 0.5, averaged over classes with objects.

    Detections are matched in ``update`` (greedily, by score, per image and class) so that the
    states are flat: every detection's score, class and whether it matched, and the number of
    objects per class. torchmetrics concatenates and sums them across ranks in ``compute``.
    """

    full_state_update = False

    def __init__(self, num_classes: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self.add_state("hits", default=[], dist_reduce_fx="cat")
        self.add_state("objects", default=torch.zeros(num_classes + 1), dist_reduce_fx="sum")

    def update(self, predictions, targets) -> None:
        for prediction, target in zip(predictions, targets):
            hits = match(prediction, target)
            self.scores.append(prediction["scores"].float())
            self.labels.append(prediction["labels"])
            self.hits.append(hits.float())
            self.objects += torch.bincount(target["labels"], minlength=self.num_classes + 1)

    def compute(self) -> dict[str, Tensor]:
        scores = _cat(self.scores)
        labels, hits = _cat(self.labels), _cat(self.hits)
        aps = []
        for cls in range(1, self.num_classes + 1):
            objects = float(self.objects[cls])
            if objects == 0:
                continue
            chosen = labels == cls
            aps.append(average_precision(scores[chosen], hits[chosen], objects))
        recall = float(hits.sum()) / max(1.0, float(self.objects.sum()))
        mean = sum(aps) / len(aps) if aps else -1.0
        return {"map_50": torch.tensor(mean), "recall_50": torch.tensor(recall)}


def _cat(state) -> Tensor:
    if isinstance(state, Tensor):
        return state
    return torch.cat(state) if state else torch.zeros(0)


def match(prediction: dict[str, Tensor], target: dict[str, Tensor]) -> Tensor:
    """Whether each detection (by descending score) claims a not yet claimed object of its
    class at IoU >= 0.5."""
    hits = torch.zeros(len(prediction["scores"]), dtype=torch.bool)
    claimed = torch.zeros(len(target["labels"]), dtype=torch.bool)
    if len(target["labels"]) == 0 or len(hits) == 0:
        return hits
    iou = box_iou(prediction["boxes"].detach().float(), target["boxes"].float())
    for index in prediction["scores"].argsort(descending=True).tolist():
        same = (target["labels"] == prediction["labels"][index]) & ~claimed
        if not same.any():
            continue
        candidates = torch.where(same, iou[index], torch.full_like(iou[index], -1.0))
        best = int(candidates.argmax())
        if candidates[best] >= 0.5:
            hits[index] = claimed[best] = True
    return hits


def average_precision(scores: Tensor, hits: Tensor, objects: float) -> float:
    """All-point interpolated AP (the area under the precision envelope)."""
    order = scores.argsort(descending=True)
    tp = hits[order].cumsum(0)
    precision = tp / torch.arange(1, len(tp) + 1)
    recall = tp / objects
    envelope = precision.flip(0).cummax(0).values.flip(0)
    steps = torch.diff(recall, prepend=torch.zeros(1))
    return float((steps * envelope).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    module = LossDictModule(
        TinyRCNN(),
        eval_losses="train_forward",
        metrics={"ap": BoxAP()},
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    )
    train = DataLoader(Scenes(256, 0), batch_size=16, shuffle=True, collate_fn=collate)
    val = DataLoader(Scenes(64, 1), batch_size=16, collate_fn=collate)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        log_every_n_steps=8,
        logger=CSVLogger("runs", name="detector", version=""),
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
