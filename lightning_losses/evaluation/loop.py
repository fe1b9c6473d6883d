"""The evaluation side of a ``LossDictModule``: validation and test batches, and their epochs.

``validation_step``/``test_step`` call :meth:`Evaluation.evaluate`, which runs the forward that
``eval_losses`` asks for and updates ``metrics=``; the losses it returns go through
``total_loss`` to :meth:`Evaluation.step`, which keeps training's classification of terms and
metrics, combines the terms as training does (``Total``) and records each batch weighted by its
size. At each evaluation epoch's end every loader's means, and the torchmetrics' ``compute()``,
are handed to Lightning as that loader's own results.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lightning_losses import _lightning
from lightning_losses.evaluation import predictions as evaluation
from lightning_losses.logging.recorder import Recorder, warn_untrained_eval
from lightning_losses.terms.calling import describe_batch
from lightning_losses.terms.parse import ParsedOutput, parse_output
from lightning_losses.terms.selector import KeySelector
from lightning_losses.weighting.total import Combined, Total, stack_terms

StepOutput = Tensor | dict[str, Any] | None


class Evaluation:
    """Validation and test of one module (see the module docstring)."""

    def __init__(
        self,
        module: Any,
        select: KeySelector,
        recorder: Recorder,
        total: Total,
        eval_losses: evaluation.EvalLosses,
        metrics: evaluation.EvalMetrics | None,
    ) -> None:
        evaluation.check_eval_losses(eval_losses)
        self.module = module
        self.select = select
        self.recorder = recorder
        self.total = total
        self.eval_losses = eval_losses
        self.metrics = metrics
        self._warned_untrained: set[str] = set()
        #: Why route names could not be read before training (see Core.peek_routes), or None.
        self.routes_unread: str | None = None

    def step(self, output: Any, stage: str, batch: Any, loader: int, trainer: Any) -> StepOutput:
        parsed = parse_output(output, self.select, stage)
        if parsed is None or not parsed.terms:
            if parsed is not None and parsed.metrics:
                self._record(stage, parsed, None, batch, loader, trainer)
            return step_output(None, parsed)
        select = self.select
        if (
            not select.explicit
            and select.total_key is None
            and not select.trained
            and (len(parsed.terms) > 1 or parsed.metrics)  # a lone value can only be the loss
            and not self._warned_untrained
            and not (trainer is not None and trainer.sanity_checking)
        ):
            # once, and only where the guess can be wrong and shows: a name nothing in the
            # configuration calls a term, beside other values, in a validate()/test() before
            # training (the sanity check's values are never written)
            warn_untrained_eval(
                stage,
                [n for n in parsed.terms if select.guessed(n)],
                self._warned_untrained,
                self.routes_unread,
            )
        plan = self.recorder.plan(stage, parsed, loader, self.total.weighting is not None, trainer)
        step = trainer.global_step if trainer is not None else 0
        combined = self.total.combine(plan, stack_terms(parsed.terms), step)
        self._record(stage, parsed, combined, batch, loader, trainer, plan)
        return step_output(combined.total, parsed)

    def _record(
        self,
        stage: str,
        parsed: ParsedOutput,
        combined: Combined | None,
        batch: Any,
        loader: int,
        trainer: Any,
        plan: Any = None,
    ) -> None:
        if plan is None:
            plan = self.recorder.plan(
                stage, parsed, loader, self.total.weighting is not None, trainer
            )
        batch_size = float(self.module.get_batch_size(batch))
        self.recorder.record(
            stage, parsed, plan, combined, self.module.device, loader=loader, batch_size=batch_size
        )

    def evaluate(self, batch: Any, stage: str, loader: int) -> StepOutput:
        """One evaluation batch: its losses (as ``eval_losses`` says) and ``metrics`` updates."""
        module, metrics = self.module, self.metrics
        if self.eval_losses == "train_forward":
            with evaluation.training_mode_losses(module):
                output = module(batch)
            result = module.total_loss(output, stage, batch, loader)
            if metrics is not None:
                metrics.update(stage, loader, module(batch), batch)
            return result
        output = module(batch)
        if metrics is not None:
            metrics.update(stage, loader, output, batch)
        if self.eval_losses is None:
            return None
        if isinstance(output, (list, tuple)) or (
            isinstance(output, Tensor) and not (output.dim() == 0 and output.is_floating_point())
        ):
            raise TypeError(
                f"{stage}: forward returned {describe_batch(output, depth=1)} in eval mode, "
                "not losses: the model predicts in eval mode. Expected eval_losses="
                "'train_forward' (losses from a training-mode forward that changes neither "
                "BatchNorm statistics nor the random state) with metrics= for the predictions, "
                "or eval_losses=None for metrics only"
            )
        return module.total_loss(output, stage, batch, loader)

    def begin(self, stage: str) -> None:
        loaders = _lightning.num_eval_dataloaders(self.module.trainer, stage)
        self.recorder.log.begin_eval(stage, loaders)
        if self.metrics is not None:
            self.metrics.begin(stage, loaders)

    def end(self, stage: str) -> None:
        module = self.module
        trainer = module.trainer
        per_loader = self.recorder.end_eval(stage, module.device)
        if self.metrics is not None:
            for loader, values in self.metrics.compute(stage).items():
                while len(per_loader) <= loader:
                    per_loader.append({})
                clash = sorted(set(values) & set(per_loader[loader]))
                if clash:
                    raise ValueError(
                        f"metrics log {', '.join(map(repr, clash))}, which forward also returns; "
                        "expected distinct names (rename the metric in a mapping or "
                        "MetricCollection)"
                    )
                per_loader[loader].update(values)
        if trainer.sanity_checking:
            # callbacks see the sanity check's values, as with self.log; Lightning writes none
            # of them and clears them after it (so they define no logger summary either)
            _lightning.publish_eval_metrics(trainer, per_loader)
            return
        self.recorder.publish_eval(trainer, per_loader)


def step_output(total: Tensor | None, parsed: ParsedOutput | None) -> StepOutput:
    """What a ``*_step`` returns: the total, with any pass-through outputs beside it.

    A pass-through output named ``loss`` (a tensor of shape (1,), an HF model's ``loss=None``) is
    dropped: under that name Lightning backpropagates, and only the total may be there.
    """
    if parsed is None or not parsed.outputs:
        return total
    outputs = {name: value for name, value in parsed.outputs.items() if name != "loss"}
    if total is None:
        return outputs or None
    return {"loss": total, **outputs} if outputs else total
