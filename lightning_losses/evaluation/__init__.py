"""Validation and test: ``loop`` records each batch's losses weighted by its size and hands each
loader's means to Lightning; ``predictions`` serves models that predict in eval mode (their
losses from a training-mode forward, torchmetrics on their predictions); ``batches`` tells a
batch's size."""

from lightning_losses.evaluation.predictions import (
    EvalLosses,
    EvalMetrics,
    MetricInputs,
    Metrics,
    default_metric_inputs,
    training_mode_losses,
)

__all__ = [
    "EvalLosses",
    "EvalMetrics",
    "MetricInputs",
    "Metrics",
    "default_metric_inputs",
    "training_mode_losses",
]
