"""torchjd's scalarizers (``torchjd.scalarization``: FAMO, IMTLL, UW, DWA, STCH, GeometricMean,
...) as ``weighting=`` strategies, with the guarantees of ours: identical on every DDP rank,
checkpointed, resumed exactly.

A scalarizer maps the vector of loss values ``l`` to one scalar ``S(l)``; the model's gradient is
``sum_k dS/dl_k * grad l_k``. Under DDP each rank only has its own batch's ``l``, and a nonlinear
``S`` of a rank's losses is not ``S`` of the pooled batch's: averaging the ranks' gradients would
not be the single-process update. So every step the loss values are pooled over ranks (one
all-reduce of ``K`` numbers, the only collective this adds; none without DDP), ``S`` and its
weights ``w_k = dS/dl_k`` are evaluated at the pooled values, and each rank backpropagates
``sum_k w_k l_k`` of its own batch: DDP's average of those gradients is then exactly the gradient
of ``S`` on the pooled batch (for mean-reduced losses and equal batch sizes). The ``w_k`` are the
weights logged as ``weight/<term>``.

A scalarizer's own learnable parameters (UW's log-variances, IMTLL's scales) train through a
penalty ``S(pooled) - sum_k w_k pooled_k``, which carries their gradient and makes the total's
value ``S``. Its state that is not a parameter or buffer (FAMO's inner Adam, DWA's epoch history)
travels in the module's state dict as extra state, so a resumed run continues exactly.

Stateful scalarizers get what they need when they need it: FAMO's ``update`` after each optimizer
step, with the losses recomputed on the same batch (a forward without gradients; no second
backward), pooled over ranks; DWA's ``step`` after each training epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_losses.devices import device_tensor
from lightning_losses.distributed import collectives
from lightning_losses.terms.values import describe
from lightning_losses.weighting.base import Weighting


def is_scalarizer(module: Any) -> bool:
    """Whether ``module`` is a torchjd scalarizer (checked without importing torchjd)."""
    return any(
        cls.__name__ == "Scalarizer" and cls.__module__.startswith("torchjd")
        for cls in type(module).__mro__
    )


class ScalarizerWeighting(Weighting):
    """A torchjd scalarizer as a ``weighting=`` strategy (see the module docstring).

    Args:
        scalarizer: a ``torchjd.scalarization`` module, built for the number of terms.
        terms: the terms in the order of the scalarizer's values; default: the first training
            step's terms, in the order ``forward`` returned them. Every step must carry all of
            them (torchjd's scalarizers have a fixed shape).
    """

    def __init__(self, scalarizer: nn.Module, terms: Sequence[str] | None = None) -> None:
        super().__init__()
        if not isinstance(scalarizer, nn.Module) or not callable(scalarizer):
            raise TypeError(
                f"scalarizer is {describe(scalarizer)}; expected a torchjd.scalarization module "
                "such as FAMO(3)"
            )
        self.scalarizer = scalarizer
        # Parameters the scalarizer learns by itself (FAMO's logits, stepped by its own Adam in
        # update) get no gradient from the loss: frozen outside update, so that neither DDP (no
        # find_unused_parameters) nor the model's optimizer ever counts them.
        self._self_learned = (
            [p for p in scalarizer.parameters() if p.requires_grad]
            if callable(getattr(scalarizer, "update", None))
            else []
        )
        for parameter in self._self_learned:
            parameter.requires_grad_(False)
        self.terms: tuple[str, ...] | None = None if terms is None else tuple(terms)
        self._order: dict[tuple[str, ...], Tensor] = {}
        self._objective: Tensor | None = None
        self._pooled: Tensor | None = None
        self._weights: Tensor | None = None

    def constructor_arguments(self) -> dict[str, object]:
        """The arguments that rebuild it (the scalarizer a module, written as its class path)."""
        return {
            "scalarizer": self.scalarizer,
            "terms": None if self.terms is None else list(self.terms),
        }

    def forward(self, losses: Tensor, names: tuple[str, ...]) -> Tensor:
        order = self._positions(names, losses.device)
        pooled = self._pool(losses.detach()[order].to(torch.float32))
        # Evaluation (no gradients, Lightning's inference mode) asks for the weights too, for
        # val/loss: they are computed the same way, but must not advance a stateful
        # scalarizer (DWA would count validation batches into its training epoch).
        evaluating = not torch.is_grad_enabled()
        saved = self._snapshot() if evaluating else None
        with torch.inference_mode(False), torch.enable_grad():
            point = pooled.clone().requires_grad_(True)
            objective = self.scalarizer(point)
            (weights,) = torch.autograd.grad(objective, point, retain_graph=not evaluating)
        if saved is not None:
            for name, value in saved.items():
                setattr(self.scalarizer, name, value)
            objective = objective.detach()
        self._objective, self._pooled, self._weights = objective, pooled, weights
        # back in the step's order of terms
        unordered = torch.empty_like(weights)
        unordered[order] = weights
        return unordered.detach()

    def penalty(self, losses: Tensor, names: tuple[str, ...]) -> Tensor | None:
        objective, pooled, weights = self._objective, self._pooled, self._weights
        self._objective = self._pooled = self._weights = None
        if objective is None or pooled is None or weights is None:
            return None
        # the scalarizer's own parameters learn through it; the model's through sum w * l
        return objective - (weights * pooled).sum()

    def after_step(self, losses: Tensor, names: tuple[str, ...]) -> None:
        """After the optimizer step: FAMO's ``update`` with the batch's recomputed losses."""
        update = getattr(self.scalarizer, "update", None)
        if update is None:
            return
        order = self._positions(names, losses.device)
        pooled = self._pool(losses.detach()[order].to(torch.float32))
        for parameter in self._self_learned:
            parameter.requires_grad_(True)
        try:
            update(pooled)
        finally:
            for parameter in self._self_learned:
                parameter.requires_grad_(False)

    @property
    def needs_after_step(self) -> bool:
        return callable(getattr(self.scalarizer, "update", None))

    def epoch_end(self, means: Mapping[str, float]) -> None:
        step = getattr(self.scalarizer, "step", None)  # DWA: roll its epoch history
        if callable(step):
            step()

    def absent(self, device: torch.device) -> None:
        """This rank has no terms at a step where the others pool theirs: join the collective
        (so no rank waits forever), and every rank raises the same error."""
        if self.terms is not None and collectives.is_distributed():
            self._pool(torch.full((len(self.terms),), torch.nan, device=device), valid=False)

    def _pool(self, values: Tensor, valid: bool = True) -> Tensor:
        """The values' mean over ranks, with every rank told whether any rank had none."""
        if not collectives.is_distributed():
            return values
        flag = torch.tensor([1.0 if valid else 0.0], device=values.device, dtype=values.dtype)
        rows = collectives.gather_rows(torch.cat([values, flag]))
        missing = (rows[:, -1] == 0).nonzero().flatten().tolist()  # a sync: one per step
        if missing:
            raise ValueError(
                f"weighting={type(self.scalarizer).__name__}(...) pools the terms "
                f"{list(self.terms or ())} over ranks every step, but rank(s) {missing} had "
                "none at this step; expected every term on every rank at every step"
            )
        return rows[:, :-1].mean(dim=0)

    def _positions(self, names: tuple[str, ...], device: torch.device) -> Tensor:
        order = self._order.get(names)
        if order is not None:
            return order
        if self.terms is None:
            self.terms = names
        missing = [t for t in self.terms if t not in names]
        extra = [n for n in names if n not in self.terms]
        if missing or extra:
            raise ValueError(
                f"weighting={type(self.scalarizer).__name__}(...) scalarizes the terms "
                f"{list(self.terms)}, but this step has {list(names)} (missing {missing}, "
                f"unexpected {extra}); expected every term at every step (torchjd's scalarizers "
                "have a fixed shape)"
            )
        order = device_tensor([names.index(t) for t in self.terms], torch.long, device)
        self._order[names] = order
        return order

    def _snapshot(self) -> dict[str, Any]:
        names = ("_prev_losses", *self._EXTRA)
        return {n: getattr(self.scalarizer, n) for n in names if hasattr(self.scalarizer, n)}

    # State torchjd keeps outside parameters and buffers (its private attributes, read where
    # present): without it a resumed FAMO or DWA would restart its inner state.
    _EXTRA = ("_loss_sum", "_n_batches", "_previous_averages")

    def get_extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"terms": list(self.terms) if self.terms is not None else None}
        optimizer = getattr(self.scalarizer, "_optimizer", None)
        if optimizer is not None:
            state["optimizer"] = optimizer.state_dict()
        for name in self._EXTRA:
            if hasattr(self.scalarizer, name):
                state[name] = getattr(self.scalarizer, name)
        return state

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, Mapping):
            return
        terms = state.get("terms")
        self.terms = tuple(terms) if terms is not None else None
        self._order.clear()
        if "optimizer" in state:
            # FAMO builds its Adam on its first update: build it now, then give it its state
            logits = getattr(self.scalarizer, "_w", None)
            if logits is not None:
                optimizer = torch.optim.Adam(
                    [logits],
                    lr=self.scalarizer.lr,  # type: ignore[arg-type]
                    weight_decay=self.scalarizer.weight_decay,  # type: ignore[arg-type]
                )
                optimizer.load_state_dict(state["optimizer"])
                self.scalarizer._optimizer = optimizer  # type: ignore[assignment]
        for name in self._EXTRA:
            if name in state:
                setattr(self.scalarizer, name, state[name])
