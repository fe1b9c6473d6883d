"""Weighting strategies: modules that turn a step's loss vector into per-term weights.

A strategy is an ``nn.Module`` passed as ``LossDictModule(weighting=...)``. Being a submodule, its
parameters are trained by the module's optimizer and its parameters and buffers are saved in its
checkpoints; under DDP they stay identical on every rank.
"""

from lightning_losses.weighting.base import PerTerm, Weighting
from lightning_losses.weighting.dwa import DynamicWeightAverage
from lightning_losses.weighting.gradnorm import GradNorm
from lightning_losses.weighting.scalarizer import ScalarizerWeighting
from lightning_losses.weighting.uncertainty import UncertaintyWeighting

__all__ = [
    "DynamicWeightAverage",
    "GradNorm",
    "PerTerm",
    "ScalarizerWeighting",
    "UncertaintyWeighting",
    "Weighting",
]
