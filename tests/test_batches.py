"""The weight of a batch in evaluation means: its number of samples, for every common layout."""

from collections import namedtuple
from dataclasses import dataclass

import pytest
import torch

from lightning_losses.evaluation.batches import batch_size

Pair = namedtuple("Pair", ["x", "y"])


@dataclass
class Batch:
    pixels: torch.Tensor
    labels: torch.Tensor


IMAGES = [torch.zeros(3, 8, 8), torch.zeros(3, 5, 7)]
TARGETS = [{"boxes": torch.zeros(1, 4)}, {"boxes": torch.zeros(2, 4)}]


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        ((torch.zeros(5, 4), torch.zeros(5)), 5),
        ([torch.zeros(7, 4)], 7),  # a TensorDataset batch
        (torch.zeros(6, 2), 6),
        (torch.tensor(1.0), 1),
        ((IMAGES, TARGETS), 2),  # a detection batch: 2 images, not 3 channels
        ({"images": IMAGES, "targets": TARGETS}, 2),
        ({"input_ids": torch.zeros(4, 9, dtype=torch.long), "labels": torch.zeros(4, 9)}, 4),
        (Pair(torch.zeros(3, 1), torch.zeros(3)), 3),
        (Batch(torch.zeros(8, 3, 2, 2), torch.zeros(8)), 8),
        ([1, 2, 3], 3),  # a plain list of samples
        (None, 1),
        ((), 1),
        ({}, 1),
        ("text", 1),
        (([], torch.zeros(4, 1)), 4),  # an empty list has no size: the next value decides
    ],
)
def test_batch_size_counts_samples(batch, expected):
    assert batch_size(batch) == expected
