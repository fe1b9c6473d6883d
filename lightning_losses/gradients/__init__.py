"""The terms' gradients on shared parameters: aggregation (torchjd), diagnostics, which
parameters are shared."""
