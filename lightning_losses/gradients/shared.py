"""Which parameters the terms share: the ones gradient diagnostics and aggregators look at.

Either named by qualified-name prefix (``"trunk"``, ``["backbone", "neck"]``), or found from the
autograd graph: every trainable parameter that two or more terms reach. The graph walk happens
once per key set.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor, nn

from lightning_losses.cache import BoundedCache
from lightning_losses.distributed.sharding import is_sharded, raise_resharded
from lightning_losses.graph import reached_parameters
from lightning_losses.terms.values import describe

Prefixes = str | Sequence[str] | None


def as_prefixes(prefixes: Prefixes, option: str) -> tuple[str, ...]:
    """Validate a prefix option; ``option`` names it in errors."""
    out = (prefixes,) if isinstance(prefixes, str) else tuple(prefixes or ())
    for prefix in out:
        if not isinstance(prefix, str):
            raise TypeError(
                f"{option} entry {prefix!r} is {describe(prefix)}; expected a qualified "
                "parameter-name prefix such as 'trunk' or 'backbone.layer4'"
            )
    return out


def named(module: nn.Module, prefixes: Iterable[str], option: str) -> list[nn.Parameter]:
    """The trainable parameters under ``prefixes`` (a prefix matches whole name components)."""
    prefixes = tuple(prefixes)
    candidates = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    params = [p for n, p in candidates if _under_any(n, prefixes)]
    if not params:
        raise ValueError(
            f"{option}={list(prefixes)} matched no trainable parameter; expected prefixes of "
            f"names such as {[n for n, _ in candidates[:3]]}"
        )
    return params


class SharedParameters:
    """The shared parameters of each key set, by prefix or by graph, cached."""

    def __init__(self, prefixes: Prefixes, option: str = "shared_parameters") -> None:
        self.option = option
        self.prefixes = as_prefixes(prefixes, option)
        self._cache: BoundedCache[tuple[str, ...], list[nn.Parameter]] = BoundedCache()

    def __call__(
        self, module: nn.Module, terms: tuple[str, ...], losses: Sequence[Tensor]
    ) -> list[nn.Parameter]:
        params = self._cache.get(() if self.prefixes else terms)
        if params is None:
            resharded = [
                n for n, p in module.named_parameters() if p.requires_grad and is_sharded(p)
            ]
            if resharded:  # FSDP2 resharded them after forward: nothing left to differentiate
                raise_resharded(resharded, "gradient diagnostics and aggregator=")
            if self.prefixes:
                params = named(module, self.prefixes, self.option)
                self._cache.put((), params)
            else:
                reach = [reached_parameters(loss) for loss in losses]
                trainable = [p for p in module.parameters() if p.requires_grad]
                reached = set().union(*reach)
                if not any(id(p) in reached for p in trainable):
                    # none held (FSDP1 sharded), or none reached: what the graph holds are views
                    # of FSDP1's flat parameter (also unsharded, on one device)
                    raise RuntimeError(
                        "gradient diagnostics and aggregator= differentiate the loss terms with "
                        "respect to the module's trainable parameters, but it holds none during "
                        "the training step (FSDPStrategy, FSDP1, replaces them by views of its "
                        "flat parameter while forward and backward run); expected DDP or "
                        "ModelParallelStrategy (FSDP2, fully_shard)"
                    )
                params = [p for p in trainable if sum(id(p) in r for r in reach) >= 2]
                self._cache.put(terms, params)
        return params


def _under_any(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)
