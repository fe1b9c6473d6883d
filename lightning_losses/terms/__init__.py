"""What ``forward`` returned, made into loss terms, metrics and pass-through outputs.

``parse`` classifies and checks the returned values, ``selector`` remembers which names are
terms, ``added`` collects what submodules add with ``add_loss``/``add_metric``, ``calling``
calls a wrapped model with a batch, and ``patterns`` matches names and glob patterns.
"""

from lightning_losses.terms.parse import flatten, parse_output

__all__ = ["flatten", "parse_output"]
