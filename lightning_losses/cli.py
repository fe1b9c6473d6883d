"""LightningCLI with help a person can read.

jsonargparse lists, under every argument typed with a class, each subclass of that class that is
imported. For ``LossDictModule``'s ``model: nn.Module`` and ``weighting: nn.Module`` that is every
``nn.Module`` in torch, Lightning and torchmetrics: ``fit --help`` ran to 1,800 lines, 900 of them
class paths. :class:`ShortHelpFormatter` keeps a short list (this library's classes and the
user's own first) and counts the rest by package; :class:`LossDictCLI` is ``LightningCLI`` with
that formatter on every parser. Parsing is unchanged: any class path is still accepted, and
``--model.weighting.help CLASS_PATH`` still shows one class's arguments.

Needs the ``cli`` extra (jsonargparse); importing ``lightning_losses`` does not import this module.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

__all__ = ["LossDictCLI", "ShortHelpFormatter"]

#: packages whose classes are counted rather than listed once a listing is long
FRAMEWORKS = frozenset(
    {"torch", "lightning", "pytorch_lightning", "torchmetrics", "transformers", "torchvision"}
)
LISTING = re.compile(r"known subclasses: (?P<paths>[\w.]+(?:, [\w.]+)*)")


def shorten_listing(paths: list[str], limit: int) -> str:
    """``paths`` as a listing of at most ``limit`` class paths, the rest counted by package.

    This library's classes come first, then those outside the big frameworks (the user's own),
    then the frameworks' in their order, up to ``limit``.
    """
    if len(paths) <= limit:
        return ", ".join(paths)

    def rank(path: str) -> int:
        package = path.split(".", 1)[0]
        return 0 if package == "lightning_losses" else 2 if package in FRAMEWORKS else 1

    ordered = sorted(paths, key=rank)  # stable: each group keeps jsonargparse's order
    shown = [p for p in ordered if rank(p) < 2][:limit] or ordered[:limit]
    rest = Counter(p.split(".", 1)[0] for p in paths if p not in shown)
    counts = ", ".join(f"{n} in {package}" for package, n in rest.most_common())
    return ", ".join(shown) + f" and {sum(rest.values())} more ({counts})"


class ShortHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help formatter with each "known subclasses" listing cut to ``limit`` paths."""

    limit = 8

    def _get_help_string(self, action: Any) -> str:
        text = super()._get_help_string(action)
        return LISTING.sub(
            lambda m: "known subclasses: " + shorten_listing(m["paths"].split(", "), self.limit),
            text,
        )


class LossDictCLI(LightningCLI):
    """``LightningCLI`` whose ``--help`` lists a few known subclasses per argument, not hundreds.

    A drop-in replacement: ``LossDictCLI(MultiTask, SyntheticTasks)``. Pass ``formatter_class``
    in ``parser_kwargs`` to choose another formatter.
    """

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("formatter_class", ShortHelpFormatter)
        return super().init_parser(**kwargs)
