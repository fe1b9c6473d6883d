"""The logging lifecycle of one ``LossDictModule``, as one object that knows nothing of Lightning.

Every bug of 0.1's logging was a lifecycle bug: accumulators that outlived a ``fit``, buffers made
under inference mode and reused in training, a last window never written, two loaders pooled. So
the state lives here, in one place, with explicit transitions that the module's hooks call:

    begin("fit" | "validate" | "test")   a fresh session: registry, window, epoch, eval, plans
    begin_eval(stage, loaders)           fresh accumulators for one evaluation run
    plan(...) / record_train / record_eval
    write()                              the window's means (drained into the epoch first)
    end_train_epoch() / end_eval(stage)  the epoch's / each loader's means
    state() / load_state()               what a checkpoint carries

A session is everything that must never leak from one ``fit``/``validate``/``test`` call into the
next; the per-step path (``plan`` hit, ``record_*``) is a dictionary look-up and two tensor ops.
Under DDP every transition that reduces (``write``, ``end_*``) is called on every rank together,
and ``begin`` on every rank at the same point of the run, so the registries stay identical.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_losses.cache import BoundedCache
from lightning_losses.devices import device_tensor
from lightning_losses.logging.accumulators import MeanAccumulator, Reduced
from lightning_losses.logging.layout import WEIGHT_PREFIX, StepPlan
from lightning_losses.logging.registry import KeyRegistry
from lightning_losses.logging.saved import check_saved
from lightning_losses.weighting.static import WeightPlan

#: A step's logged values are copied into a float64 buffer, which autograd refuses for inputs
#: that carry a gradient, so grad mode is switched off around it. ``torch.no_grad()`` costs
#: four Python calls per use (its ``__enter__``/``__exit__`` go through ``set_grad_enabled``'s
#: constructor); this is the switch they end up calling.
set_grad_enabled = torch._C._set_grad_enabled

#: Staged training steps per plan before they are summed into the window (see plan.py): a
#: flush every this many steps at most, whatever ``log_every_n_steps`` is.
STAGED_ROWS = 32

#: Names the library logs itself beside the model's keys (see LossLog.check_names).
SKIPPED_STEPS = "skipped_steps"
EPOCH_SUFFIX = "_epoch"


def loader_suffix(loader: int, loaders: int) -> str:
    """The suffix Lightning's ``self.log`` gives a name logged from one of several loaders."""
    return f"/dataloader_idx_{loader}" if loaders > 1 else ""


class Session:
    """The state of one ``fit``, ``validate`` or ``test`` call."""

    def __init__(self) -> None:
        self.registry = KeyRegistry()
        # Only the window is updated per training step; it drains into the epoch accumulator
        # when it is written and at epoch end, so epoch means cost nothing on ordinary steps.
        self.window = MeanAccumulator(self.registry)
        self.epoch = MeanAccumulator(self.registry)
        #: (stage, dataloader index) -> batch-size-weighted accumulator of one evaluation run
        self.eval: dict[tuple[str, int], MeanAccumulator] = {}
        self.loaders: dict[str, int] = {}
        self.plans: BoundedCache[tuple[Any, ...], StepPlan] = BoundedCache()
        #: Training base names seen this session, for the ``x`` / ``x_epoch`` collision check.
        self.train_names: set[str] = set()
        #: Whether the window holds steps not yet written.
        self.window_open = False
        #: Plans with staged rows not yet added to the window (see LossLog.flush).
        self.staged: list[StepPlan] = []
        #: The (step, epoch) labels of the last batch before a checkpoint this session was
        #: restored from (see LossLog.take_restored); None otherwise.
        self.restored_labels: tuple[int, int] | None = None
        #: Whether that checkpoint was saved before its epoch's end was logged.
        self.restored_epoch_open = False


class LossLog:
    """Registry, windows, epoch and evaluation accumulators, plans, and their transitions."""

    def __init__(self) -> None:
        self.session = Session()
        self._restored: Mapping[str, Any] | None = None

    # ---------------------------------------------------------------- transitions

    def begin(self, kind: str) -> None:
        """Start a ``fit``, ``validate`` or ``test`` call from empty windows and means.

        A state restored from a checkpoint for this call (``load_state`` just before, as
        ``fit(ckpt_path=)`` does) is applied to the new session instead of being dropped.
        """
        self.session = Session()
        restored, self._restored = self._restored, None
        if restored is not None and kind == "fit":
            self._apply(restored)

    def end(self) -> None:
        """A call ended: its windows, plans and staging rows go with it (what it logged was
        written; a module keeps no run)."""
        self.session = Session()

    def begin_eval(self, stage: str, loaders: int) -> None:
        """One evaluation run (a validation epoch, a ``validate``/``test`` call) starts."""
        session = self.session
        for key in [k for k in session.eval if k[0] == stage]:
            del session.eval[key]
        loaders = max(1, loaders)
        if session.loaders.get(stage, loaders) != loaders:
            # the names' /dataloader_idx_<i> suffix depends on how many loaders run
            session.plans.discard_if(lambda key: key[0] == stage)
        session.loaders[stage] = loaders

    # ---------------------------------------------------------------- per step

    def cached_plan(self, key: tuple[Any, ...]) -> StepPlan | None:
        """The plan of a step whose key set (stage, loader, names) was seen this session."""
        return self.session.plans.get(key)

    def plan(
        self,
        key: tuple[Any, ...],
        stage: str,
        loader: int,
        terms: tuple[str, ...],
        tensor_metrics: tuple[str, ...],
        number_metrics: tuple[str, ...],
        weights: WeightPlan,
        logged_weights: tuple[int, ...],
    ) -> StepPlan:
        """Build (and cache under ``key``) the plan of a key set new to this session."""
        session = self.session
        loaders = session.loaders.get(stage, 1) if stage != "train" else 1
        suffix = loader_suffix(loader, loaders) if stage != "train" else ""
        plan = StepPlan(
            stage, terms, tensor_metrics, number_metrics, weights, logged_weights, suffix
        )
        if stage == "train":
            self._check_train_names(plan)
        session.plans.put(key, plan)
        # a key set new to this session: where churning key sets would pile up counts
        session.window.fold()
        for accumulator in session.eval.values():
            accumulator.fold()
        return plan

    def _check_train_names(self, plan: StepPlan) -> None:
        """Names the library derives must not collide with names the model returns."""
        seen = self.session.train_names
        for name in (*plan.terms, *plan.tensor_metrics, *plan.number_metrics):
            if name in seen:
                continue
            if name == SKIPPED_STEPS:
                raise ValueError(
                    f"forward returned an entry named {name!r}; train/{name} is where the count "
                    "of skipped non-finite steps is logged, so expected another name for it"
                )
            base = name.removesuffix(EPOCH_SUFFIX)
            partner = base if base != name else f"{name}{EPOCH_SUFFIX}"
            if partner in seen or partner in plan.terms + plan.tensor_metrics:
                epoch_of = base
                raise ValueError(
                    f"forward returned entries named {epoch_of!r} and {epoch_of + EPOCH_SUFFIX!r}; "
                    f"train/{epoch_of + EPOCH_SUFFIX} is where the epoch mean of {epoch_of!r} is "
                    "logged, so expected names that do not end in '_epoch'"
                )
            seen.add(name)

    def record_train(
        self, plan: StepPlan, values: Tensor, step: int, check_nonfinite: bool
    ) -> None:
        """Add one training step's values (in the plan's layout, on the device)."""
        session = self.session
        slots = plan.slots(session.registry, values.device)
        session.window.update(plan.logged_names, slots, values)
        if check_nonfinite and plan.terms:
            session.window.note_nonfinite(plan.nonfinite_slots, plan.nonfinite_values(values), step)

    def stage_step(
        self,
        plan: StepPlan,
        record: str,
        terms: tuple[Tensor, ...],
        losses: Tensor | None,
        total: Tensor,
        metrics: tuple[Tensor, ...] | None,
        weights: Tensor | None,
        step: int | None,
    ) -> bool:
        """Copy a fast training step's values into its plan's next staging row, the cheapest
        way for its key set (``record``: see ``session.fast_plans.FastPlan``); the rows are
        added to the window at the next flush. ``step`` is kept when non-finite values must be
        reported. ``False`` (nothing staged) where torch refuses the values."""
        views = plan.row_views if plan.rows is not None else plan.staging(total.device, STAGED_ROWS)
        row = plan.filled
        if row == len(views):
            self.flush()
            row = 0
        if row == 0:
            self.session.staged.append(plan)
        plan.filled = row + 1
        if step is not None:
            plan.row_steps.append(step)
        try:
            set_grad_enabled(False)  # (grad is on: total requires grad)
            if record == "head":  # [term, total], both the one term
                plan.head_views[row].copy_(total)
            elif record == "copies":
                plan.terms_views[row].copy_(losses)  # type: ignore[arg-type]
                plan.total_views[row].copy_(total)
                if metrics is not None:
                    plan.metric_views[row].copy_(metrics[0])
            else:
                values = (*terms, total) if not plan.sole_total else (total,)
                plan.prefix_views[row].copy_(torch.stack(values + (metrics or ())))
            if plan.learned_weights:
                plan.weight_views[row].copy_(weights)  # type: ignore[arg-type]
        except (RuntimeError, TypeError):  # give the row back: the full path takes the step
            plan.filled -= 1
            if step is not None:
                plan.row_steps.pop()
            if not plan.filled:
                self.session.staged.remove(plan)
            return False
        finally:
            set_grad_enabled(True)
        self.session.window_open = True
        return True

    def flush(self) -> None:
        """Add every staged row to the window (before it is reduced, saved or the epoch ends)."""
        session = self.session
        for plan in session.staged:
            filled = plan.filled
            if not filled:
                continue
            assert plan.rows is not None
            rows = plan.rows[:filled]
            window = session.window
            window.add_rows(plan.logged_names, plan.slots(session.registry, rows.device), rows)
            if plan.row_steps:
                checked = max(plan.total_position, 1)
                window.note_nonfinite_rows(plan.nonfinite_slots, rows[:, :checked], plan.row_steps)
            plan.filled = 0
            plan.row_steps.clear()
        session.staged.clear()

    def record_diagnostics(self, names: tuple[str, ...], values: Tensor) -> None:
        """Gradient statistics of one step, into the same window as the losses."""
        session = self.session
        slots = device_tensor(
            session.registry.slots(names, ["diagnostic"] * len(names)), torch.long, values.device
        )
        session.window.update(names, slots, values)

    def record_eval(self, plan: StepPlan, values: Tensor, loader: int, batch_size: float) -> None:
        """Add one evaluation batch's values, weighted by its number of samples."""
        session = self.session
        key = (plan.stage, loader)
        accumulator = session.eval.get(key)
        if accumulator is None:
            accumulator = session.eval[key] = MeanAccumulator(session.registry)
        slots = plan.slots(session.registry, values.device)
        accumulator.update(plan.logged_names, slots, values, batch_size)

    # ---------------------------------------------------------------- reductions

    def step_taken(self) -> None:
        """A training step ran (whatever it recorded): the window has something to write.

        Set per step rather than per record, so that it is the same on every rank: a rank whose
        batch had nothing to learn still takes part in the final write's collective.
        """
        self.session.window_open = True

    @property
    def window_open(self) -> bool:
        return self.session.window_open

    def write(self, device: torch.device) -> Reduced:
        """The window's means over steps and ranks; the window then starts again, empty."""
        self.flush()
        session = self.session
        session.window.drain_into(session.epoch)
        reduced = session.window.compute(device)
        session.window.reset()
        session.window_open = False
        return reduced

    def peek(self, device: torch.device) -> Reduced:
        """The window's means and first non-finite steps so far, over steps and ranks, without
        writing it (a collective under DDP: every rank calls this together)."""
        self.flush()
        return self.session.window.compute(device)

    def take_restored(self) -> tuple[tuple[int, int] | None, bool]:
        """The labels ``(step, epoch)`` of the last batch before the checkpoint this fit resumed
        from (None for a fit that did not resume), and whether its epoch's end was still to be
        logged; once. A resumed run whose first batch runs in another epoch ends that one
        first (see ``FitSession.close_restored_epoch``)."""
        session = self.session
        labels, session.restored_labels = session.restored_labels, None
        return labels, session.restored_epoch_open

    def end_train_epoch(self, device: torch.device) -> Reduced:
        self.flush()
        session = self.session
        session.window.drain_into(session.epoch)
        reduced = session.epoch.compute(device)
        session.epoch.reset()
        return reduced

    def end_eval(self, stage: str, device: torch.device) -> list[Reduced]:
        """Each loader's means, in loader order; one reduction per loader, on every rank."""
        session = self.session
        loaders = session.loaders.get(stage, 1)
        reduced = []
        for loader in range(loaders):
            accumulator = session.eval.pop((stage, loader), None)
            if accumulator is None:  # a rank (or a loader) without batches still takes part
                accumulator = MeanAccumulator(session.registry)
            reduced.append(accumulator.compute(device))
        return reduced

    def kind_of(self, name: str) -> str | None:
        return self.session.registry.kind_of.get(name)

    # ---------------------------------------------------------------- checkpoints

    def state(self, labels: tuple[int, int], epoch_open: bool) -> dict[str, Any]:
        """The partly filled window and epoch of the running fit, as plain data, with the
        ``(step, epoch)`` labels of its last batch and whether its epoch's end is to come."""
        self.flush()
        session = self.session
        return {
            "registry": session.registry.state(),
            "window": session.window.state(),
            "epoch": session.epoch.state(),
            "labels": list(labels),
            "epoch_open": epoch_open,
            "window_open": session.window_open,
        }

    def load_state(self, state: Mapping[str, Any], apply_now: bool, rank: int = 0) -> None:
        """Restore a :meth:`state`.

        ``apply_now=False`` (``fit(ckpt_path=)``: Lightning restores the module before the fit's
        ``begin``) keeps it for the next ``begin("fit")``. Under DDP the file is rank 0's: every
        rank restores the agreed names (identical on all ranks when it was saved), only rank 0
        the partial sums, so the first write after resuming pools rank 0's steps before the
        checkpoint with every rank's steps after it.
        """
        if "registry" not in state:
            return
        check_saved(state)
        state = dict(state, rank=rank)
        if apply_now:
            self._apply(state)
        else:
            self._restored = state

    def _apply(self, state: Mapping[str, Any]) -> None:
        session = self.session
        first = state.get("rank", 0) == 0
        session.registry.load_state(state["registry"], pending=first)
        if first:
            device = torch.device("cpu")
            session.window.load_state(state["window"], device)
            session.epoch.load_state(state["epoch"], device)
        # on every rank alike, so that all of them join (or skip) the final write together
        session.window_open = bool(state.get("window_open", True))
        labels = state.get("labels")  # (a checkpoint of 0.3 or earlier has none)
        session.restored_labels = (int(labels[0]), int(labels[1])) if labels else None
        session.restored_epoch_open = bool(state.get("epoch_open", False))
        session.train_names.update(
            name.split("/", 1)[1]
            for name, kind in session.registry.kind_of.items()
            if name.startswith("train/") and kind in ("term", "metric")
        )


__all__ = ["EPOCH_SUFFIX", "SKIPPED_STEPS", "WEIGHT_PREFIX", "LossLog", "Session", "loader_suffix"]
