"""What a training step must not do silently: non-finite losses, terms without a gradient, a
batch with nothing to learn.

Each guard answers one question at the point of the step where the answer is needed, and says
what it found in the words of the contract (API.md sections 1 and 5):

- ``nonfinite="raise"`` raises at the next write, naming every term that went non-finite at the
  first step it did (the per-step check is a queued device op, see ``tracking``); ``"skip"``
  must decide before the optimizer steps, so it is the one place a step syncs with the host;
- a term that does not require grad while grad is enabled gets one warning naming it;
- a batch with nothing to learn still joins DDP's gradient all-reduce on every rank.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_losses import _warnings
from lightning_losses.distributed import collectives, sharding
from lightning_losses.logging.accumulators import Reduced

NonFinite = Literal["raise", "skip", "off"]
NONFINITE_MODES = ("raise", "skip", "off")


def check_nonfinite_mode(nonfinite: Any) -> None:
    if nonfinite not in NONFINITE_MODES:
        raise ValueError(
            f"nonfinite={nonfinite!r}; expected one of {', '.join(map(repr, NONFINITE_MODES))}"
        )


class Guards:
    """The guards of one module; ``module.skipped_steps`` counts the steps skipped over all
    epochs (it is public, and checkpointed)."""

    def __init__(self, module: nn.Module, nonfinite: NonFinite) -> None:
        self.module: Any = module  # a LossDictModule (its public skipped_steps count)
        self.set_mode(nonfinite)
        self._warned_no_grad: set[str] = set()
        #: A skipped step's gradients are dropped before its optimizer step.
        self.drop_pending = False

    def set_mode(self, nonfinite: Any) -> None:
        check_nonfinite_mode(nonfinite)
        self.nonfinite: NonFinite = nonfinite

    @property
    def skips(self) -> bool:
        return self.nonfinite == "skip"

    def warn_no_grad(self, terms: dict[str, Tensor]) -> None:
        """One warning per term that cannot train anything (checked when a key set is new)."""
        if not torch.is_grad_enabled():
            return
        for name, term in terms.items():
            if not term.requires_grad and name not in self._warned_no_grad:
                self._warned_no_grad.add(name)
                _warnings.warn(
                    f"loss term {name!r} does not require grad although grad is enabled in "
                    "training: it cannot train anything (was it computed under no_grad, or from "
                    "detached tensors?)",
                    owner=self.module,
                )

    def skip_nonfinite(self, losses: Tensor) -> bool:
        """``nonfinite="skip"``: whether this step must update nothing, decided on every rank
        alike (one host sync: the decision must come before the optimizer steps)."""
        if not collectives.any_rank(~torch.isfinite(losses.detach()).all()):
            return False
        self.module.skipped_steps += 1
        # Cancels the whole optimizer step this batch belongs to (also with accumulation).
        self.drop_pending = True
        return True

    def drop_skipped_gradients(self) -> None:
        """Before the optimizer step: a skipped step's parameters keep no gradient (an optimizer
        skips a parameter without one)."""
        if self.drop_pending:
            self.drop_pending = False
            for param in self.module.parameters():
                param.grad = None

    def raise_if_nonfinite(self, reduced: Reduced, world_size: int) -> None:
        """``nonfinite="raise"``: every term that went non-finite at the window's first such
        step, with that step (and the rank, under DDP)."""
        if self.nonfinite != "raise" or not reduced.nonfinite:
            return
        step, rank = min(reduced.nonfinite.values())
        names = [
            name.split("/", 1)[1] for name, first in reduced.nonfinite.items() if first[0] == step
        ]
        where = f" on rank {rank}" if world_size > 1 else ""
        raise FloatingPointError(
            f"non-finite loss term{'s' if len(names) > 1 else ''} "
            f"{', '.join(map(repr, names))} at step {step}{where}; expected finite losses. "
            "Pass nonfinite='skip' to skip such steps, or nonfinite='off' to disable this check."
        )


def nothing_requires_grad(names: tuple[str, ...], world_size: int) -> None:
    """No term carries a graph: Lightning's backward would fail deep inside autograd. Under DDP
    raising on one rank would leave the others waiting in the gradient all-reduce, so the step
    is skipped there (the per-term warning has named the terms already)."""
    if world_size > 1:
        return
    raise ValueError(
        f"no loss term requires grad (terms {list(names)}); expected at least one term "
        "computed from trainable parameters (was forward run under torch.no_grad, from "
        "detached tensors, or are all parameters frozen?)"
    )


def zero_through_parameters(module: nn.Module, world_size: int) -> Tensor | None:
    """What a training step with nothing to learn returns: ``None`` in a single process; under
    DDP a zero through every trainable parameter, so that this rank joins the gradient
    all-reduce that the other ranks wait in (with zero gradients)."""
    if world_size <= 1:
        return None
    return sharding.zero_through(module)  # under FSDP2 through its hooks (see sharding.py)


def warn_unreached(module: nn.Module, names: tuple[str, ...], objective: Tensor) -> None:
    """At a fit's first step: a total whose gradient reaches no trainable parameter of the
    module (everything it depends on is frozen, or it flows only into the inputs) trains
    nothing, silently. Read from the autograd graph (one walk); skipped where the graph's
    leaves are not the module's parameters (FSDP's sharded or flat parameters)."""
    from lightning_losses.graph import reached_parameters

    params = [p for p in module.parameters() if p.requires_grad]
    if not params or any(sharding.is_sharded(p) or not p.is_leaf for p in params):
        return
    reached = reached_parameters(objective)
    if any(id(p) in reached for p in params):
        return
    frozen = sum(1 for p in module.parameters() if not p.requires_grad)
    _warnings.warn(
        f"the loss terms {list(names)} reach no trainable parameter of "
        f"{type(module).__name__} ({len(params)} trainable, {frozen} frozen): their gradient "
        "flows only into frozen parameters or the inputs, so training changes nothing; "
        "expected terms computed from trainable parameters (unfreeze with "
        "requires_grad_(True), register a learnable tensor as an nn.Parameter, or check that "
        "forward uses the module's own layers)",
        owner=module,
    )


def raise_not_returned(module: nn.Module) -> None:
    """A ``training_step`` that called ``total_loss`` and returned nothing: Lightning then skips
    the backward and the optimizer step, while the logs show a loss as if it trained."""
    raise RuntimeError(
        f"{type(module).__name__}.training_step computed self.total_loss(...) but returned "
        "None, so Lightning trained nothing on this batch (while the loss is logged as if it "
        "had); expected `return self.total_loss(...)`. To skip a batch, return None without "
        "calling total_loss, or let forward return None"
    )


def raise_called_twice(module: nn.Module) -> None:
    """A second ``total_loss`` in one training step: each call would be logged as a step of
    its own (two rows, epoch means counting the batch twice), and neither is what the step
    returns if it adds them."""
    raise RuntimeError(
        f"{type(module).__name__}.training_step called self.total_loss(...) twice in one step; "
        "each call is logged as a step of its own, so the batch would count twice; expected one "
        "call on everything the step computed, e.g. two views as one mapping: "
        "self.total_loss({'view1': self(batch1), 'view2': self(batch2)}) (nested names are "
        "joined with '/'), or add_loss() from inside the model"
    )
