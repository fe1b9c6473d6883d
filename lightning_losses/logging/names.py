"""Logged names that every Lightning logger keeps as they are.

The library's own names (``train/<term>``, ``weight/<term>``, ``grad_norm/<term>``,
``grad_cos/<a>_vs_<b>``) use only letters, digits and ``_ . / -`` around the model's keys.
MLflow keeps only ASCII letters, digits and ``_ - . / `` (space): Lightning's ``MLFlowLogger``
deletes every other character, so ``seg|depth`` becomes ``segdepth`` and a name of Chinese
characters becomes ``train/``, which MLflow refuses mid-run. A model key that MLflow would change
is therefore checked when it is first seen with an MLflow logger attached: a warning names the
rewritten name, and an error names a key that MLflow would refuse or merge with another.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from lightning_losses import _warnings

#: Written beside a file logger's run: which names are loss terms, totals and metrics.
KINDS_FILE = "lightning_losses_kinds.json"
#: What Lightning's MLFlowLogger deletes from a metric name.
_MLFLOW_DROPS = re.compile(r"[^a-zA-Z0-9_/. -]+")


def mlflow_name(name: str) -> str:
    """The name as Lightning's ``MLFlowLogger`` writes it."""
    return _MLFLOW_DROPS.sub("", name)


def uses_mlflow(loggers: Iterable[Any]) -> bool:
    return any(type(logger).__name__ == "MLFlowLogger" for logger in loggers)


class NameCheck:
    """Checks each logged name once per run against the loggers attached."""

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}  # MLflow's name -> ours

    def check(self, names: Iterable[str], loggers: Iterable[Any]) -> None:
        if not uses_mlflow(loggers):
            return
        for name in names:
            written = mlflow_name(name)
            other = self._seen.get(written)
            if other is not None:
                if other != name:
                    raise ValueError(
                        f"the logged names {other!r} and {name!r} both become {written!r} in "
                        "MLflow, which keeps only ASCII letters, digits and '_', '-', '.', '/', "
                        "' '; expected keys that stay distinct (rename one)"
                    )
                continue
            if not written or any(not part.strip() for part in written.split("/")):
                raise ValueError(
                    f"the logged name {name!r} has characters MLflow does not keep; "
                    f"MLFlowLogger would write it as {written!r}, which MLflow refuses. Expected "
                    "keys of ASCII letters, digits and '_', '-', '.', ' ' (rename the key)"
                )
            self._seen[written] = name
            if written != name:
                _warnings.warn(
                    f"MLflow keeps only ASCII letters, digits and '_', '-', '.', '/', ' ' in "
                    f"metric names: {name!r} is logged there as {written!r}"
                )
