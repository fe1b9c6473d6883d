"""Weighting strategies: modules that turn a step's loss vector into per-term weights.

A strategy is an ``nn.Module`` passed as ``LossDictModule(weighting=...)``. Being a submodule, its
parameters are trained by the module's optimizer and saved in its checkpoints.
"""

from lightning_losses.weighting.base import Weighting

__all__ = ["Weighting"]
