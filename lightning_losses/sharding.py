"""FSDP2 (``fully_shard``): which tensors the step's autograd graph differentiates.

Between steps FSDP2 registers each parameter as a sharded ``DTensor``: that is what the optimizers
hold and what receives the reduce-scattered gradient. For forward and backward it registers, under
the same name, an unsharded parameter (allocated once, then refilled by every all-gather), and that
is the leaf of the step's graph. Per-key routes, gradient diagnostics and aggregators differentiate
the terms with respect to parameters, so they need the unsharded ones: this module maps the
first to the second by name. A group sharded with ``reshard_after_forward=True`` (FSDP2's default
for every module but the root) is sharded again when its forward ends, so its parameters have no
unsharded leaf to differentiate once the losses exist: that is an error that names them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn


def is_sharded(param: Tensor) -> bool:
    """Whether ``param`` is a sharded FSDP2 parameter (a ``DTensor``)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without torch.distributed
        return False
    return isinstance(param, DTensor)


def leaf_resolver(module: nn.Module) -> Callable[[Sequence[Tensor]], list[Tensor]] | None:
    """A function from parameters as the optimizers hold them to the step's graph leaves, or
    ``None`` when the module has no sharded parameter (then both are the same tensors).

    Call this while the module holds the parameters the optimizers were built with (between
    steps); call the function it returns during a step, after ``forward``.
    """
    names = {id(p): name for name, p in module.named_parameters() if is_sharded(p)}
    if not names:
        return None

    def leaves(params: Sequence[Tensor]) -> list[Tensor]:
        current = dict(module.named_parameters())
        out = [current[names[id(p)]] if id(p) in names else p for p in params]
        resharded = [names[id(p)] for p, leaf in zip(params, out) if is_sharded(leaf)]
        if resharded:
            raise_resharded(resharded, "per-key optimizer routes")
        return out

    return leaves


def raise_resharded(names: Sequence[str], feature: str) -> None:
    shown = ", ".join(map(repr, names[:6])) + (" ..." if len(names) > 6 else "")
    raise RuntimeError(
        f"{feature} differentiate the loss terms with respect to parameters, but FSDP2 has "
        f"resharded {shown} after their module's forward (fully_shard's "
        "reshard_after_forward=True, the default below the root), so they have no unsharded "
        "value to differentiate; expected fully_shard(..., reshard_after_forward=False) on "
        "those modules, or fully_shard on the root module only"
    )
