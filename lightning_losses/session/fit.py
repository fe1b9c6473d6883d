"""One fit: everything that lives from ``on_fit_start`` to the fit's end, and is then dropped.

A :class:`FitSession` holds the trainer and what the steps look up every time (the write
schedule, the step counter, the fast plans), chooses the training step once (see ``steps``) and
runs the fit's hooks. The module keeps no reference to it once the fit ends (``teardown``, or
``on_exception`` for a fit that failed): pickling or deep-copying a fitted module copies weights
and settings, never a run.

What is deferred happens before anything durable sees it: the staged rows and the non-finite
check before every write, epoch end, validation and checkpoint; the epoch means before any
callback's ``on_train_epoch_end`` (see ``epoch_ends``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lightning_losses import _lightning
from lightning_losses.cache import BoundedCache
from lightning_losses.distributed.absent_terms import AbsentTerms
from lightning_losses.logging.recorder import skipped_steps_metric
from lightning_losses.session import fast_plans, guards
from lightning_losses.session.steps import Step, joint_step, sequential_step
from lightning_losses.terms import added
from lightning_losses.terms.parse import ParsedOutput, parse_output
from lightning_losses.weighting.total import Combined, stack_terms

if TYPE_CHECKING:
    from lightning_losses.logging.layout import StepPlan


class FitSession:
    """The running fit of one module (see the module docstring)."""

    def __init__(self, core: Any, trainer: Any) -> None:
        self.core, self.module, self.trainer = core, core.module, trainer
        # the parts a step reaches for, looked up once
        self.select, self.total, self.routing = core.select, core.total, core.routing
        self.recorder, self.log = core.recorder, core.recorder.log
        self.writes = _lightning.StepWrites(trainer)
        #: ``completed`` is ``trainer.global_step``; None under manual optimization
        self.steps = _lightning.step_counter(trainer)
        self.distributed = trainer.world_size > 1
        self.absent = AbsentTerms(self.distributed)
        #: The returned dict's keys -> their fast plans (see fast_plans.py).
        self.keysets: BoundedCache[tuple[str, ...], fast_plans.KeySet] = BoundedCache()
        #: What ``total_loss`` gave Lightning to backpropagate in this batch (see batch end).
        self.objective: Any = None
        self.first_step = True
        #: Whether a training batch ran in this fit, and the epoch of the last one (read from
        #: Lightning's epoch progress by attribute: ``trainer.current_epoch`` is a call).
        self.ran = False
        self.epochs = trainer.fit_loop.epoch_progress
        self.batch_epoch = 0
        self.epoch_just_ended = False
        self.step_at_batch_start = 0
        self.choose_step()

    def choose_step(self) -> None:
        """Which step this fit takes (again whenever an option changes): the fast step serves
        the options whose step is a plain function of the terms."""
        core = self.core
        nonfinite = core.guards.nonfinite
        self.check_nonfinite = nonfinite == "raise"
        self.sequential = self.routing.route_mode == "sequential"
        eligible = (
            self.steps is not None  # automatic optimization
            and nonfinite != "skip"  # a host-side decision every step
            and core.diagnostics is None
            and core.aggregator is None
            and not self.sequential
        )
        self.fast = self.keysets if eligible else None
        self.keysets.clear()

    # ------------------------------------------------------------------ the step

    def full_step(self, output: Any) -> Step:
        """``total_loss`` in training where no fast plan holds (see ``Core.step``)."""
        if self.sequential and self.routing.sequential_pass() is not None:
            last = self.routing.last_pass()
            step = sequential_step(self, self.core, output)
            if not last:
                return step  # the batch's values are recorded after its last pass
        else:
            step = joint_step(self, self.core, output)
        self.objective = step.objective
        self.log.step_taken()
        if self.writes.due():
            self.write_window()
        return step

    def global_step(self) -> int:
        return int(self.trainer.global_step)

    def after_full_step(
        self, output: Any, parsed: ParsedOutput, plan: StepPlan, combined: Combined, goal: Any
    ) -> None:
        """A full step was recorded: the fit's first-step work, and its plan for later steps."""
        core = self.core
        if self.first_step:
            self.first_step = False
            # monitors and the bar have values before the first write
            self.recorder.show_step(self.trainer, plan, combined.losses.device)
            if goal is not None and goal.requires_grad:
                guards.warn_unreached(core.module, plan.terms, goal)
        if self.fast is not None:
            fast_plans.remember(
                self.fast,
                output,
                parsed,
                plan,
                weighted=core.weighting is not None,
                routed=self.routing.router is not None,
                losses=combined.losses,
                verdicts=self.select.version,
            )

    # ------------------------------------------------------------------ writes and checks

    def write_window(
        self, to_callbacks: bool = True, labels: tuple[int, int] | None = None
    ) -> None:
        """The window's means to the loggers (the non-finite check travels in the same
        reduction: every rank raises together)."""
        core = self.core
        extra = skipped_steps_metric(self.module.skipped_steps) if core.guards.skips else {}
        reduced = self.recorder.write_window(
            self.trainer, self.module.device, extra, to_callbacks=to_callbacks, labels=labels
        )
        core.guards.raise_if_nonfinite(reduced, self.trainer.world_size)

    def check_nonfinite_now(self) -> None:
        """Before something durable (a checkpoint, a validation): raise for a non-finite loss
        the window holds, rather than let its weights be saved or evaluated. One reduction
        (under DDP one gather: every rank calls this together); nothing is written."""
        if self.check_nonfinite and self.log.window_open:
            reduced = self.log.peek(self.module.device)
            self.core.guards.raise_if_nonfinite(reduced, self.trainer.world_size)

    # ------------------------------------------------------------------ hooks

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # (every training batch: attribute reads and one C call unless something is to do)
        module = self.module
        self.epoch_just_ended = False
        self.objective = None
        added.STEP.set(added.Collected(module))  # add_loss / add_metric of this step
        self.batch_epoch = self.epochs.current.completed
        if not self.ran:
            self.ran = True
            self.close_restored_epoch()
        core = self.core
        if core.scalarizer:  # FAMO: did this batch step?
            self.step_at_batch_start = self.trainer.global_step
        routing = self.routing
        if not routing.single_optimizer and routing.begin_batch(
            self.trainer, core.combines_terms()
        ):
            router = routing.router
            assert router is not None
            self.recorder.show_route_losses(router.routes)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        module = self.module
        collected = added.STEP.get()
        if collected is not None and collected.owner is module:
            added.STEP.set(None)  # a step that never reached total_loss keeps nothing
        if not outputs and self.objective is not None:
            guards.raise_not_returned(module)
        # a callback asked to stop after this batch (Timer, EarlyStopping): Lightning writes its
        # own step metrics here, so the last window is written here too, with its labels
        trainer = self.trainer
        if trainer.should_stop and self.log.window_open and _lightning.writes_step_metrics(trainer):
            self.write_window()
        core = self.core
        if core.scalarizer:
            weighting = core.weighting
            if weighting.needs_after_step and trainer.global_step > self.step_at_batch_start:
                self.after_optimizer_step(weighting, batch)  # an optimizer step ran

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        skipping = self.core.guards  # a step nonfinite="skip" skipped keeps no gradient
        if skipping.drop_pending:
            skipping.drop_skipped_gradients()

    def close_restored_epoch(self) -> tuple[int, int] | None:
        """A fit resumed from a checkpoint: if it was saved on an epoch's last batch (or at a
        validation or a stop after it), Lightning resumes in the next epoch and never runs that
        epoch's end, which the uninterrupted run logged right after the checkpoint: it is
        ended here, with its last batch's labels. Returns those labels (None: no resume)."""
        labels, epoch_open = self.log.take_restored()
        if labels is not None and epoch_open and labels[1] != self.epochs.current.completed:
            self.end_epoch(labels)
        return labels

    def labels_now(self) -> tuple[int, int]:
        """The ``(step, epoch)`` labels of the fit's latest batch, for a checkpoint saved now
        (the step is counted after the batch's end, its validation and its checkpoint, but
        before the epoch's end)."""
        stepped = _lightning.batches_that_stepped(self.trainer)
        return (stepped - 1 if self.epoch_just_ended else stepped), self.batch_epoch

    def end_epoch(self, labels: tuple[int, int] | None = None) -> None:
        """The training epoch's means, before any callback's ``on_train_epoch_end`` reads
        them (run by the first callback, see ``epoch_ends``); with ``labels``, an epoch whose
        end Lightning does not run (see :meth:`close_restored_epoch`)."""
        core = self.core
        reduced = self.recorder.end_train_epoch(self.module, labels)
        core.guards.raise_if_nonfinite(reduced, self.trainer.world_size)
        epoch_end = getattr(core.weighting, "epoch_end", None)
        if epoch_end is not None:
            epoch_end(self.recorder.train_terms_of(reduced))
        self.epoch_just_ended = True
        core.warn_unmatched_once()

    def on_train_end(self) -> None:
        # Training stopped (max_epochs, max_steps, a callback's should_stop, a Timer): the steps
        # since the last write are still to be written.
        trainer = self.trainer
        if self.ran:  # the last batch's step (Lightning counted it), in the epoch it ran in
            labels = (_lightning.last_batch_labels(trainer)[0], self.batch_epoch)
        else:  # resumed with nothing left to run: the checkpoint's last batch
            restored = self.close_restored_epoch()
            labels = restored if restored is not None else _lightning.last_batch_labels(trainer)
        if self.log.window_open:
            # after an epoch's end the monitors keep its means; a run stopped mid-epoch has
            # none, and the last window is what it has
            self.write_window(to_callbacks=not self.epoch_just_ended, labels=labels)
        self.recorder.write_kinds(trainer)

    def after_optimizer_step(self, weighting: Any, batch: Any) -> None:
        """FAMO's update: the batch's losses recomputed after the model's step (a forward
        without gradients, in the mode training runs in)."""
        module = self.module
        with torch.no_grad():
            added.open_step(module, fresh=True)
            try:
                output = module(batch)
                collected = added.drain(module)
            finally:
                added.close(module)
        if collected is not None:
            output = added.merge(output, collected)
        parsed = parse_output(output, self.select, "train")
        if parsed is None or not parsed.terms:
            weighting.absent(module.device)
            return
        weighting.after_step(stack_terms(parsed.terms), tuple(parsed.terms))


__all__ = ["FitSession"]
