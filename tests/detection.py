"""The detector stand-in (from examples/detector.py) and a plain-Python reference of its AP.

torchvision cannot be installed for these tests (its only wheel for this torch is a CUDA build
whose ops do not load on CPU), so ``TinyRCNN`` in examples/detector.py stands in for its
detectors with the same calling convention and train/eval behaviour. ``reference_scores`` computes
``BoxAP``'s values without torch ops or torchmetrics, for tests to compare against.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

# appended, not prepended: a module of tests/ (gan.py) wins over an example of the same name
sys.path.append(str(Path(__file__).resolve().parents[1] / "examples"))
from detector import BoxAP, Scenes, TinyRCNN, collate

__all__ = ["BoxAP", "Scenes", "TinyRCNN", "collate", "reference_ap", "reference_scores"]


def iou(a: list[float], b: list[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def hits_of(boxes, scores, labels, target_boxes, target_labels) -> list[float]:
    """Greedy VOC matching: by descending score, a detection claims the best unclaimed object of
    its class at IoU >= 0.5."""
    hits = [0.0] * len(scores)
    claimed = [False] * len(target_labels)
    for i in sorted(range(len(scores)), key=lambda k: -scores[k]):
        best, best_iou = None, -1.0
        for j, (box, label) in enumerate(zip(target_boxes, target_labels)):
            if label == labels[i] and not claimed[j] and iou(boxes[i], box) > best_iou:
                best, best_iou = j, iou(boxes[i], box)
        if best is not None and best_iou >= 0.5:
            hits[i], claimed[best] = 1.0, True
    return hits


def average_precision(scores: list[float], hits: list[float], objects: float) -> float:
    """All-point interpolated AP from detections' scores and hit flags."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    tp = fp = 0.0
    points = []
    for i in order:
        tp, fp = tp + hits[i], fp + (1 - hits[i])
        points.append((tp / objects, tp / (tp + fp)))
    ap, previous_recall = 0.0, 0.0
    for k, (recall, _) in enumerate(points):
        ap += (recall - previous_recall) * max(p for _, p in points[k:])
        previous_recall = recall
    return ap


def reference_ap(model: nn.Module, dataset, num_classes: int = 3) -> float:
    """mAP@0.5 of ``model`` on ``dataset``, computed without torchmetrics or Lightning."""
    return reference_scores(model, dataset, num_classes)["map_50"]


def reference_scores(model: nn.Module, dataset, num_classes: int = 3) -> dict[str, float]:
    """``BoxAP``'s values for ``model`` on ``dataset``: per-image predictions, matched and
    scored in plain Python."""
    model.eval()
    per_class: dict[int, tuple[list[float], list[float]]] = {
        c: ([], []) for c in range(1, num_classes + 1)
    }
    objects = dict.fromkeys(range(1, num_classes + 1), 0.0)
    with torch.no_grad():
        for image, target in dataset:
            prediction = model([image])[0]
            boxes, scores = prediction["boxes"].tolist(), prediction["scores"].tolist()
            labels = prediction["labels"].tolist()
            hits = hits_of(
                boxes, scores, labels, target["boxes"].tolist(), target["labels"].tolist()
            )
            for score, label, hit in zip(scores, labels, hits):
                per_class[label][0].append(score)
                per_class[label][1].append(hit)
            for label in target["labels"].tolist():
                objects[label] += 1
    aps = [average_precision(*per_class[c], objects[c]) for c in per_class if objects[c] > 0]
    hits = sum(sum(flags) for _, flags in per_class.values())
    return {"map_50": sum(aps) / len(aps), "recall_50": hits / sum(objects.values())}
