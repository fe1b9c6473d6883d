"""FSDP: which tensors the step's autograd graph differentiates.

Between steps FSDP2 registers each parameter as a sharded ``DTensor``: that is what the optimizers
hold and what receives the reduce-scattered gradient. For forward and backward it all-gathers an
unsharded parameter (allocated once, then refilled by every all-gather), and that is the leaf of
the step's graph. A group sharded with ``reshard_after_forward=True`` (FSDP2's default for every
module but the root) frees that parameter's data when its forward ends and puts the sharded one
back on the module, but the graph keeps the unsharded tensor as its leaf, and FSDP2's
pre-backward hook all-gathers it again whenever a backward (``autograd.grad`` included) reaches
the group. FSDP1 (``FSDPStrategy``, ``use_orig_params=True``) sets, under the parameters' names,
views of its flat parameter, the graph's only leaf.

Per-key routes, absent terms and gradient diagnostics differentiate the terms with respect to
parameters, so they need the graph's tensors: :func:`leaf_resolver` maps the optimizers' ones to
them, through FSDP2's own record of each sharded parameter's unsharded one (one lookup per
parameter, no collective), else by name on the module (FSDP1, or no FSDP).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from lightning_losses.distributed import fsdp2


def is_sharded(param: Tensor) -> bool:
    """Whether ``param`` is a sharded FSDP2 parameter (a ``DTensor``)."""
    return fsdp2.is_dtensor(param)


def leaf_resolver(module: nn.Module) -> Callable[[Sequence[Tensor]], list[Tensor]]:
    """A function from parameters as the optimizers hold them to what the step's graph
    differentiates.

    Call this while the module holds the parameters the optimizers were built with (between
    steps); call the function it returns during a step, after ``forward``. Without FSDP it
    returns the same tensors. Under FSDP2 they are the unsharded parameters, whether the module
    holds them now (``reshard_after_forward=False``, the root) or FSDP2 resharded them after
    their module's forward; under FSDP1 (``FSDPStrategy``, ``use_orig_params=True``) the views
    of the flat parameter that the module holds under the same names, which FSDP1 makes anew at
    every forward.
    """
    names = {id(p): name for name, p in module.named_parameters()}

    def leaves(params: Sequence[Tensor]) -> list[Tensor]:
        unsharded = fsdp2.unsharded_parameters(module)
        out = []
        for param in params:
            leaf = unsharded.get(id(param))
            if leaf is not None:
                out.append(leaf)
                continue
            name = names.get(id(param))
            if name is None:
                out.append(param)
                continue
            owner, _, attribute = name.rpartition(".")
            out.append(getattr(module.get_submodule(owner), attribute))
        missing = [names.get(id(p), "?") for p, leaf in zip(params, out) if is_sharded(leaf)]
        if missing:
            raise_never_gathered(missing, "per-key optimizer routes")
        return out

    return leaves


def raise_resharded(names: Sequence[str], feature: str) -> None:
    """``feature`` needs the unsharded value of parameters that FSDP2 resharded after their
    module's forward (gradient diagnostics and ``aggregator=``, which differentiate them before
    the backward, without the gathering that routes do)."""
    raise RuntimeError(
        f"{feature} differentiate the loss terms with respect to parameters, but FSDP2 has "
        f"resharded {_shown(names)} after their module's forward (fully_shard's "
        "reshard_after_forward=True, the default below the root), so they have no unsharded "
        "value to differentiate; expected fully_shard(..., reshard_after_forward=False) on "
        "those modules, or fully_shard on the root module only"
    )


def raise_never_gathered(names: Sequence[str], feature: str) -> None:
    raise RuntimeError(
        f"{feature} differentiate the loss terms with respect to parameters, but FSDP2 has "
        f"never gathered {_shown(names)} on this rank (their module's forward has not run); "
        "expected every fully_shard module to run its forward in each training step, as FSDP2 "
        "itself requires"
    )


def _shown(names: Sequence[str]) -> str:
    return ", ".join(map(repr, names[:6])) + (" ..." if len(names) > 6 else "")


_ZERO_METHOD = "_lightning_losses_zero_through_parameters"


def zero_through(module: nn.Module) -> Tensor | None:
    """A zero whose backward reaches every trainable parameter (``None`` without any): what a
    rank with nothing to learn backpropagates, so that the gradient reduction completes on every
    rank with its zero contribution.

    Under FSDP2 the parameters are reduce-scattered from hooks FSDP2 attaches to a forward's
    outputs, and a step whose ``forward`` returned ``None`` has none of the root's: the zero of
    the root's own parameters is computed by a method registered with
    ``register_fsdp_forward_method``, which FSDP2 treats as a forward. Each block (``fully_shard``
    below the root) that ran its forward in this step is reached through the outputs it
    returned, in its turn as on the other ranks (see ``fsdp2``); one that did not is run the
    same way as the root, inside it, in module order (a forward that returned ``None`` before
    running any block). Routes that gather every group before their backward gather here too.
    """
    steps = fsdp2.steps_of(module)
    blocks = steps.blocks if steps is not None else []
    records = steps.take() if steps is not None else []
    ran = {id(block) for block, _ in records}
    parts = []
    own = _zero_method(module, blocks)([b for b in blocks if id(b) not in ran])
    if own is not None:
        parts.append(own)
    if steps is not None and steps.routed and steps.settle(needs_passes=False):
        fsdp2.gather(module)
    parts += [t.sum() for _, tensors in records for t in tensors]
    return torch.stack(parts).sum() * 0.0 if parts else None


def _zero_method(module: nn.Module, blocks: Sequence[nn.Module]) -> Callable[..., Tensor | None]:
    """``module``'s zero of its own trainable parameters (those of no block below it), plus
    the zeros of the given blocks, computed inside: a forward as FSDP2 sees it."""
    compute = getattr(module, _ZERO_METHOD, None)
    if compute is None:
        from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

        below = [b for b in blocks if b is not module and _contains(module, b)]

        def zero(run: Sequence[nn.Module] = (), carry: Tensor | None = None) -> Tensor | None:
            # ``carry``: the zero of the blocks run before this one, its input as the previous
            # block's output is a block's input in a forward. FSDP2 reduce-scatters a block when
            # the gradient of its input is computed (or, for an input without one, at the end
            # of the backward), so chaining the blocks in module order gives the reverse order
            # the other ranks' backward takes: the ranks' reduce-scatters pair up.
            inner = {id(p) for b in below for p in b.parameters()}
            parts = [p.sum() for p in module.parameters() if p.requires_grad and id(p) not in inner]
            if carry is not None:
                parts.append(carry)
            chained = None
            for block in run:
                chained = _zero_method(block, blocks)(carry=chained)
            if chained is not None:
                parts.append(chained)
            return torch.stack(parts).sum() * 0.0 if parts else None

        object.__setattr__(module, _ZERO_METHOD, zero)
        if isinstance(module, FSDPModule):
            register_fsdp_forward_method(module, _ZERO_METHOD)
        compute = getattr(module, _ZERO_METHOD)
    return compute


def _contains(module: nn.Module, other: nn.Module) -> bool:
    return any(m is other for m in module.modules())
