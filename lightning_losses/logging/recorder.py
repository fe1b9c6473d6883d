"""The Lightning side of logging: one step's values into the accumulators, and out to the loggers.

:class:`~lightning_losses.logging.windows.LossLog` holds the lifecycle (sessions, windows,
epochs, plans) and knows nothing of Lightning; this class hands it each step's values in the
plan's layout and hands what it reduces to Lightning, at the moments Lightning writes its own
values:

- a window at each batch where Lightning writes step metrics (``log_metrics``: same ``step`` and
  ``epoch`` columns as ``self.log(on_step=True)``), and the last partial one when training stops;
- the epoch's means at training epoch end (``self.log``, so monitors see them);
- each evaluation loader's means into the evaluation loop's own per-loader results.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_losses import _lightning, _warnings
from lightning_losses.devices import device_tensor
from lightning_losses.gradients.diagnostics import diagnostic_names
from lightning_losses.logging.accumulators import Reduced, accumulator_dtype
from lightning_losses.logging.layout import StepPlan
from lightning_losses.logging.names import NameCheck
from lightning_losses.logging.summaries import Summaries, write_kinds_file
from lightning_losses.logging.windows import EPOCH_SUFFIX, SKIPPED_STEPS, LossLog
from lightning_losses.terms.parse import ParsedOutput
from lightning_losses.terms.values import TOTAL, check_term_devices
from lightning_losses.weighting.static import LossWeights
from lightning_losses.weighting.total import Combined


class Recorder:
    """Plans, records and writes one module's values (see the module docstring)."""

    def __init__(self, weights: LossWeights, prog_bar: Iterable[str]) -> None:
        self.log = LossLog()
        self.weights = weights
        #: The names asked for (``prog_bar=``), and as logged.
        self.prog_bar_given = tuple(prog_bar)
        self.prog_bar = frozenset(f"train/{name}" for name in prog_bar)
        self.default_prog_bar = tuple(prog_bar) == (TOTAL,)
        self.summaries = Summaries()
        self._names = NameCheck()

    # ------------------------------------------------------------------ per step

    def plan(
        self,
        stage: str,
        parsed: ParsedOutput,
        loader: int,
        weighted: bool,
        trainer: pl.Trainer | None,
    ) -> StepPlan:
        """The plan of this step's key set (built once per key set and session)."""
        terms = tuple(parsed.terms)
        if parsed.metrics:
            metrics = parsed.metrics.items()
            tensor_metrics = tuple(k for k, v in metrics if isinstance(v, Tensor))
            number_metrics = tuple(k for k, v in metrics if not isinstance(v, Tensor))
        else:
            tensor_metrics = number_metrics = ()
        # (a change of the number of loaders drops the stage's plans, see LossLog.begin_eval)
        key = (stage, loader, terms, tensor_metrics, number_metrics)
        plan = self.log.cached_plan(key)
        if plan is not None:
            return plan
        weight_plan = self.weights.plan(terms, returned=(*tensor_metrics, *number_metrics))
        if stage != "train":
            logged: tuple[int, ...] = ()
        elif weighted:
            logged = tuple(range(len(terms)))
        else:
            logged = weight_plan.logged
        if trainer is not None:  # a key set new to this run: names MLflow would change
            self._names.check(
                (f"{stage}/{name}" for name in (*terms, *tensor_metrics, *number_metrics)),
                trainer.loggers,
            )
        plan = self.log.plan(
            key, stage, loader, terms, tensor_metrics, number_metrics, weight_plan, logged
        )
        plan.learned_weights = weighted
        if stage == "train":
            shown = self.prog_bar
            plan.bar_columns = tuple(
                (name, i) for i, name in enumerate(plan.logged_names) if name in shown
            )
        return plan

    def record(
        self,
        stage: str,
        parsed: ParsedOutput,
        plan: StepPlan,
        combined: Combined | None,
        device: torch.device,
        *,
        step: int = 0,
        check_nonfinite: bool = False,
        loader: int = 0,
        batch_size: float = 1.0,
    ) -> None:
        """Add this step's values, in the plan's layout, to the stage's accumulator."""
        if combined is not None:
            device = combined.losses.device
        with torch.no_grad():
            values = _concatenate(plan, parsed, combined, device)
        if stage == "train":
            self.log.record_train(plan, values, step, check_nonfinite and combined is not None)
        else:
            self.log.record_eval(plan, values, loader, batch_size)

    def record_diagnostics(self, names: tuple[str, ...], values: Tensor) -> None:
        values = values.detach().to(accumulator_dtype(values.device))
        self.log.record_diagnostics(diagnostic_names(names), values)

    # ------------------------------------------------------------------ writes

    def write_window(
        self, trainer: pl.Trainer, device: torch.device, extra: Mapping[str, float], **kw: Any
    ) -> Reduced:
        """The window's means to every logger, callbacks and the progress bar."""
        reduced = self.log.write(device)
        metrics = reduced.means
        metrics.update(extra)
        self.summaries.define(trainer, metrics, self.log.kind_of)
        _lightning.publish_step_metrics(trainer, metrics, self.prog_bar, **kw)
        return reduced

    def end_train_epoch(
        self, module: pl.LightningModule, labels: tuple[int, int] | None = None
    ) -> Reduced:
        """The epoch's training means, as ``train/<name>_epoch`` in Lightning's epoch-end row;
        ``labels`` (step, epoch): an epoch whose end Lightning does not run (a fit resumed from
        a checkpoint of its last batch), written as its own row with those labels."""
        trainer = module.trainer
        reduced = self.log.end_train_epoch(module.device)
        train = {n: v for n, v in reduced.means.items() if n.startswith("train/")}
        epoch_means = {f"{name}{EPOCH_SUFFIX}": value for name, value in train.items()}
        # As Lightning's own on_step + on_epoch logging does: after the epoch, the plain name
        # holds the epoch mean for monitors (which run after this hook), not the last window.
        trainer.callback_metrics.update(_lightning.as_tensors(train))
        self.summaries.define(trainer, epoch_means, self.log.kind_of)
        if labels is not None:
            _lightning.publish_step_metrics(trainer, epoch_means, labels=labels)
            return reduced
        # self.log (not a direct logger write) so that these land in Lightning's own epoch-end
        # row and callbacks can monitor them. The values are already means over all ranks, the
        # same on every rank: sync_dist=True says they are synchronised (Lightning advises it at
        # the epoch's end otherwise, once per key), rank_zero_only=True that Lightning must not
        # reduce them again (its sync function becomes a no-op: no collective per key).
        for name, value in epoch_means.items():
            module.log(
                name,
                torch.tensor(value, dtype=torch.float64),
                on_step=False,
                on_epoch=True,
                batch_size=1,
                sync_dist=True,
                rank_zero_only=True,
            )
        return reduced

    def end_eval(self, stage: str, device: torch.device) -> list[dict[str, float]]:
        return [dict(reduced.means) for reduced in self.log.end_eval(stage, device)]

    def publish_eval(self, trainer: pl.Trainer, per_loader: list[dict[str, float]]) -> None:
        for means in per_loader:
            self.summaries.define(trainer, means, self.log.kind_of)
        _lightning.publish_eval_metrics(trainer, per_loader)

    def write_kinds(self, trainer: pl.Trainer) -> None:
        write_kinds_file(trainer, self.log.session.registry.kind_of)

    def unshown(self) -> tuple[list[str], list[str]]:
        """``prog_bar=`` names (given, not the default) no training value was logged under,
        and the names that were."""
        logged = [n.split("/", 1)[1] for n in self.log.session.registry.names if n[:6] == "train/"]
        given = () if self.default_prog_bar else self.prog_bar_given
        return [n for n in given if n not in logged], logged

    def train_terms_of(self, reduced: Reduced) -> dict[str, float]:
        """The loss terms among an epoch's training means, by bare name."""
        kind_of = self.log.kind_of
        return {
            name.split("/", 1)[1]: value
            for name, value in reduced.means.items()
            if name.startswith("train/") and kind_of(name) == "term"
        }

    def show_step(self, trainer: pl.Trainer, plan: StepPlan, device: torch.device) -> None:
        """A fit's first step's values, until the first write replaces them with the window's
        means: as tensors in ``callback_metrics`` (a copy on the device, no host sync), so that
        a monitor or a scheduler stepping on ``train/loss`` has it from the first step as with
        ``self.log(on_step=True)``; and as floats in the progress bar (one host sync, only when
        a progress bar is attached)."""
        values = plan.buffer(device).detach().clone()  # (later steps reuse the buffer)
        trainer.callback_metrics.update(
            (name, value)
            for name, value in zip(plan.logged_names, values.unbind())
            if name[:6] == "train/"  # (weights reach callbacks with the writes only)
        )
        if not plan.bar_columns or trainer.progress_bar_callback is None:
            return
        shown = torch.stack(plan.buffer_bar_views).tolist()
        names = [name for name, _ in plan.bar_columns]
        _lightning.progress_bar_values(trainer).update(zip(names, shown))

    def show_route_losses(self, routes: Iterable[Iterable[str]]) -> None:
        """Alternating routes: the sum of a generator's and a discriminator's loss means nothing,
        so the progress bar shows each route's terms instead of the total (default only)."""
        if self.default_prog_bar:
            names = [t for route in routes for t in route if t != TOTAL]
            self.prog_bar = frozenset(f"train/{name}" for name in names) or self.prog_bar


def skipped_steps_metric(count: int) -> dict[str, float]:
    return {f"train/{SKIPPED_STEPS}": float(count)}


def warn_untrained_eval(
    stage: str, names: Iterable[str], warned: set[str], routes_unread: str | None = None
) -> None:
    """``routes_unread``: why ``configure_optimizers`` could not be read for route names."""
    names = [name for name in names if name not in warned]
    if not names:
        return
    warned.update(names)
    unread = (
        f" (the route names of configure_optimizers would decide, but it could not run "
        f"outside a fit: {routes_unread})"
        if routes_unread
        else ""
    )
    _warnings.warn(
        f"{stage}: no training step has told loss terms from metrics yet (it goes by which "
        f"values carry a gradient) and nothing in the configuration names these values, so "
        f"they count as terms of {stage}/loss: {', '.join(map(repr, names))}{unread}. Pass "
        "loss_keys= to decide, or load a checkpoint of a trained model."
    )


def _concatenate(
    plan: StepPlan, parsed: ParsedOutput, combined: Combined | None, device: torch.device
) -> Tensor:
    """The step's values in the plan's layout, cast into its float64 buffer in one op."""
    buffer = plan.buffer(device)
    losses = total = weights = None
    if combined is not None:
        losses, total, weights = combined.losses, combined.total, combined.weights
    if plan.terms_and_total and total is not None:
        if plan.sole_total:
            return buffer.copy_(total.view(1))
        return torch.cat((losses, total.view(1)), out=buffer)  # type: ignore[arg-type]
    parts: list[Tensor] = []
    if losses is not None and not plan.sole_total:
        parts.append(losses)
    if total is not None:
        parts.append(total.view(1))
    if plan.tensor_metrics:
        metrics = {k: parsed.metrics[k] for k in plan.tensor_metrics}
        try:
            stacked = torch.stack([m.to(device) for m in metrics.values()])  # type: ignore[union-attr]
        except (RuntimeError, NotImplementedError):
            check_term_devices({**parsed.terms, **metrics}, "logged values")
            raise
        parts.append(stacked.to(buffer.dtype))
    if plan.number_metrics:
        numbers = [float(parsed.metrics[k]) for k in plan.number_metrics]
        parts.append(device_tensor(numbers, buffer.dtype, device))
    if plan.logged_weights and weights is not None:
        parts.append(weights if plan.logs_every_weight else weights[plan.weight_index(device)])
    return torch.cat([p.to(buffer.dtype) for p in parts], out=buffer)
