"""lightning_losses: the model returns its losses; Lightning takes it from there.

Importing this package never imports ``wandb`` (an optional extra).
"""

from lightning_losses._warnings import LossDictWarning
from lightning_losses.module import LossDictModule
from lightning_losses.routing import RouteConfig, RouteMap
from lightning_losses.terms.added import add_loss, add_metric
from lightning_losses.terms.parse import flatten, parse_output
from lightning_losses.weighting import Weighting

__all__ = [
    "LossDictModule",
    "LossDictWarning",
    "RouteConfig",
    "RouteMap",
    "Weighting",
    "add_loss",
    "add_metric",
    "flatten",
    "parse_output",
]
__version__ = "0.4.0.dev0"
