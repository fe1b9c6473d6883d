"""FSDP: which tensors the step's autograd graph differentiates.

Between steps FSDP2 registers each parameter as a sharded ``DTensor``: that is what the optimizers
hold and what receives the reduce-scattered gradient. For forward and backward it registers, under
the same name, an unsharded parameter (allocated once, then refilled by every all-gather), and that
is the leaf of the step's graph. FSDP1 (``FSDPStrategy``, ``use_orig_params=True``) sets, under the
same names, views of its flat parameter, the graph's only leaf. Per-key routes differentiate the
terms with respect to their parameters, so they need these: this module maps the first to the
second by name. A group sharded with ``reshard_after_forward=True`` (FSDP2's default for every
module but the root) is sharded again when its forward ends, so its parameters have no unsharded
value to differentiate once the losses exist: that is an error that names them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


def is_sharded(param: Tensor) -> bool:
    """Whether ``param`` is a sharded FSDP2 parameter (a ``DTensor``)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without torch.distributed
        return False
    return isinstance(param, DTensor)


def leaf_resolver(module: nn.Module) -> Callable[[Sequence[Tensor]], list[Tensor]]:
    """A function from parameters as the optimizers hold them to what the step's graph
    differentiates: the tensor the module holds under the same name during the step.

    Call this while the module holds the parameters the optimizers were built with (between
    steps); call the function it returns during a step, after ``forward``. Without FSDP it
    returns the same tensors. Under FSDP2 they are the unsharded parameters; under FSDP1
    (``FSDPStrategy``, ``use_orig_params=True``) views of the flat parameter, which is the graph's
    only leaf.
    """
    names = {id(p): name for name, p in module.named_parameters()}

    def leaves(params: Sequence[Tensor]) -> list[Tensor]:
        out = []
        for param in params:
            name = names.get(id(param))
            if name is None:
                out.append(param)
                continue
            owner, _, attribute = name.rpartition(".")
            out.append(getattr(module.get_submodule(owner), attribute))
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


_ZERO_METHOD = "_lightning_losses_zero_through_parameters"


def zero_through(module: nn.Module) -> Tensor | None:
    """A zero whose backward reaches every trainable parameter (``None`` without any): what a
    rank with nothing to learn backpropagates, so that the gradient reduction completes on every
    rank with its zero contribution.

    Under FSDP2 the parameters are reduce-scattered from hooks FSDP2 attaches to a forward's
    outputs, and a step whose ``forward`` returned ``None`` has none: the zero is computed by a
    method registered with ``register_fsdp_forward_method``, which FSDP2 treats as a forward.
    """
    compute = getattr(module, _ZERO_METHOD, None)
    if compute is None:
        from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

        def zero() -> Tensor | None:
            params = [p for p in module.parameters() if p.requires_grad]
            return torch.stack([p.sum() for p in params]).sum() * 0.0 if params else None

        object.__setattr__(module, _ZERO_METHOD, zero)
        if isinstance(module, FSDPModule):
            register_fsdp_forward_method(module, _ZERO_METHOD)
        compute = getattr(module, _ZERO_METHOD)
    return compute()
