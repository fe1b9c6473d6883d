"""FSDP2 with blocks: every rank issues the same collectives in the same order.

``fully_shard`` on each block, then on the root (FSDP2's usual recipe), gives each block a group
that all-gathers its parameters before its forward, frees them after it
(``reshard_after_forward=True``), all-gathers them again when a backward reaches the block's
outputs (a hook on each output) and reduce-scatters its gradients when that backward leaves the
block. Collectives pair up across ranks by their order alone, so every rank must reach the same
blocks in the same order. Three things the library adds to a step would break that:

* a term absent on one rank: its head's outputs are not in that rank's objective, so the
  head's backward (all-gather, reduce-scatter) happens on the other ranks only, and a zero
  gradient handed straight to the head's parameters is reduce-scattered at the end of the
  backward instead of in its turn (for blocks of equal size: silently swapped gradients);
* a rank whose ``forward`` returned ``None``;
* per-key routes that need one ``autograd.grad`` per route: each pass through a resharded block
  all-gathers it, and ranks with other terms take other passes.

So this module records what each block's forward returned in the step (one forward hook per
block), and the zero that covers what a rank's objective misses goes through those outputs
(see ``absent_terms``). Routes that need their own passes first gather every block once, in a
fixed order on every rank (:func:`gather`), and keep them gathered through the passes
(:func:`held`): the passes then issue no collective at all, and the backward Lightning runs
reduce-scatters each block in its turn. Whether a fit's routes gather is settled at its first
routed step, the same on every rank (:meth:`BlockSteps.settle`).

This file is also the one place that reads FSDP2's private records (a state's parameter groups,
a parameter's sharded and unsharded tensors, a group's ``reshard_after_backward``): torch gives no
public way to name the tensor that a resharded group's forward made the leaf of the graph. A
torch upgrade has this file to check.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


def fsdp2_modules(module: nn.Module) -> list[nn.Module]:
    """The modules ``fully_shard`` was applied to, in module order (the root first)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6: FSDP2 is not public there
        return []
    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def _groups(fsdp_module: nn.Module) -> list[Any]:
    """An FSDP2 module's parameter groups (private records: see the module docstring)."""
    state = fsdp_module._get_fsdp_state()  # type: ignore[operator]
    groups = getattr(state, "_fsdp_param_groups", None)  # torch >= 2.10: a list of them
    if groups is None:
        group = getattr(state, "_fsdp_param_group", None)
        groups = [] if group is None else [group]
    return list(groups)


def unsharded_parameters(module: nn.Module) -> dict[int, Tensor]:
    """``id(sharded parameter) -> its unsharded parameter``, for every FSDP2 group of ``module``
    that has all-gathered at least once (empty without FSDP2).

    The unsharded parameter is allocated at a group's first all-gather and refilled by every
    later one: it is the leaf of each step's graph, also once FSDP2 has resharded the group
    and put the sharded parameter back on the module. No collective (``unshard()`` would be one).
    """
    found: dict[int, Tensor] = {}
    for fsdp_module in fsdp2_modules(module):
        for group in _groups(fsdp_module):
            for fsdp_param in group.fsdp_params:
                unsharded = getattr(fsdp_param, "_unsharded_param", None)
                if unsharded is not None:
                    found[id(fsdp_param.sharded_param)] = unsharded
    return found


def reshards_after_forward(module: nn.Module) -> bool:
    """Whether some FSDP2 group of ``module`` frees its parameters after its forward: read from
    how it was sharded, the same on every rank whatever this step ran (a group's
    ``post_forward_mesh_info`` is what FSDP2 reshards to after forward, ``None`` if it keeps
    them)."""
    return any(
        getattr(group, "post_forward_mesh_info", None) is not None
        for fsdp_module in fsdp2_modules(module)
        for group in _groups(fsdp_module)
    )


def gather(module: nn.Module) -> None:
    """Every FSDP2 group of ``module`` unsharded, in reverse module order (the order a backward
    reaches them in): one all-gather per group that its forward resharded, none for the others.
    Every rank calls this at the same point of a step, so the all-gathers pair up."""
    for fsdp_module in reversed(fsdp2_modules(module)):
        fsdp_module.unshard()  # type: ignore[operator]


@contextmanager
def held(module: nn.Module) -> Iterator[None]:
    """The groups stay unsharded after each backward inside (``autograd.grad`` passes), so that
    the next pass needs no all-gather; each group's own setting applies again afterwards, to
    the backward Lightning runs."""
    groups = [g for m in fsdp2_modules(module) for g in _groups(m)]
    saved = [g.reshard_after_backward for g in groups]
    for group in groups:
        group.reshard_after_backward = False
    try:
        yield
    finally:
        for group, value in zip(groups, saved):
            group.reshard_after_backward = value


@contextmanager
def passes() -> Iterator[None]:
    """:func:`held` for every module of a running FSDP2 fit on this process: what
    ``autograd.grad`` passes taken before the backward (gradient diagnostics, ``aggregator=``)
    run under, so that they issue no collective. Nothing without such a fit."""
    with contextlib.ExitStack() as stack:
        for module in list(_STEPS):
            stack.enter_context(held(module))
        yield


def output_tensors(output: Any) -> list[Tensor]:
    """The tensors of a forward's output that carry a gradient (nested tuples, lists, dicts)."""
    if isinstance(output, Tensor):
        return [output] if output.requires_grad else []
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in output_tensors(item)]
    if isinstance(output, dict):
        return [t for item in output.values() for t in output_tensors(item)]
    return []


class BlockSteps:
    """One module's FSDP2 blocks (``fully_shard`` modules below the root) over a fit: what each
    returned from its forward in the current step, and whether routed steps gather.

    The records are taken by whoever builds the step's backward (``take``); the root's forward
    clears what a step left untaken, so no output outlives the next step's forward.
    """

    def __init__(self, module: nn.Module) -> None:
        self._module = weakref.ref(module)
        self.blocks = [m for m in fsdp2_modules(module) if m is not module]
        self.records: list[tuple[nn.Module, list[Tensor]]] = []
        #: Routes take turns or run in sequence: every step needs one pass per route.
        self.alternating = False
        #: Whether this fit has per-key routes (set before its first step).
        self.routed = False
        #: Routed steps gather every group before their backward (None: not settled yet).
        self.gathering: bool | None = None
        self._handles = [b.register_forward_hook(self._record) for b in self.blocks]
        self._handles.append(module.register_forward_pre_hook(self._clear))

    def _record(self, block: nn.Module, args: Any, output: Any) -> None:
        if torch.is_grad_enabled():
            tensors = output_tensors(output)
            if tensors:
                self.records.append((block, tensors))

    def _clear(self, *_: Any) -> None:
        if self.records:
            self.records = []

    def take(self) -> list[tuple[nn.Module, list[Tensor]]]:
        """This step's block outputs, in the order the blocks ran; forgotten here."""
        records, self.records = self.records, []
        return records

    @property
    def module(self) -> nn.Module:
        module = self._module()
        assert module is not None, "the module outlives its fit"
        return module

    def settle(self, needs_passes: bool) -> bool:
        """Whether this fit's routed steps gather every group before their backward: decided at
        the first routed step, the same on every rank.

        Gathering costs nothing where no group reshards after its forward, and is needed by
        routes that take turns or run in sequence (every step passes per route). Otherwise
        (FSDP2's usual recipe with joint routes) it costs holding the whole unsharded model
        through the backward, so the ranks agree, in one all-reduce at the first routed step,
        to gather only if one of them needs a pass per route: a route's terms reaching another
        route's parameters (``needs_passes``). A rank whose ``forward`` returned ``None`` has no
        say (``needs_passes=False``).
        """
        if self.gathering is None:
            module = self.module
            if self.alternating or not reshards_after_forward(module):
                self.gathering = True
            else:
                vote = torch.tensor([int(needs_passes)], device=_device(module))
                dist.all_reduce(vote, op=dist.ReduceOp.MAX)
                self.gathering = bool(vote.item())  # once per fit
        return self.gathering

    def gather(self) -> None:
        gather(self.module)

    def held(self) -> contextlib.AbstractContextManager[None]:
        return held(self.module)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.records = []


def is_dtensor(param: Tensor) -> bool:
    """Whether ``param`` is a ``DTensor`` (what FSDP2 registers while a group is sharded)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without torch.distributed
        return False
    return isinstance(param, DTensor)


def _device(module: nn.Module) -> torch.device:
    for param in module.parameters():
        return param.device
    return torch.device("cpu")


_STEPS: weakref.WeakKeyDictionary[nn.Module, BlockSteps] = weakref.WeakKeyDictionary()


def watch(module: nn.Module, distributed: bool) -> BlockSteps | None:
    """Start a fit: record ``module``'s FSDP2 blocks from its first step on (before that
    step's forward). ``None`` (and nothing recorded) without FSDP2 on several processes."""
    old = _STEPS.pop(module, None)
    if old is not None:
        old.close()
    if not distributed or not fsdp2_modules(module):
        return None
    steps = _STEPS[module] = BlockSteps(module)
    return steps


def steps_of(module: nn.Module) -> BlockSteps | None:
    """The running fit's :class:`BlockSteps` of ``module`` (``None``: no FSDP2 fit watched)."""
    return _STEPS.get(module)
