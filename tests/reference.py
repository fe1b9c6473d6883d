"""A plain-Python reference of what ``lightning_losses`` must log (API.md §1-§3, decisions of 0.2).

The model-based test (``test_model_based.py``) records every value a model returned, step by step,
as Python floats, and asks this module what the loggers must then have received. The reference is
written from the contract only, never from the library's code, so that a bug shared by both cannot
hide: it does its arithmetic in Python floats with ``math.fsum`` (no tensors, no float32 anywhere),
and it knows about Lightning only the few loop facts the contract names (when the optimizer steps,
``log_every_n_steps``, ``_batches_that_stepped`` as the logged step).

What it encodes:

- classification: in training a value that requires grad is a loss term, one that does not is a
  metric; a name once a term in training stays a term. Validation and test follow training's
  verdict, except before any training step of the module, when every scalar is a term;
- a lone term named ``loss`` (a scalar return, or a dict whose only term is ``loss``) is logged
  only as the weighted total ``<stage>/loss``; otherwise every term is logged unweighted next to
  the total;
- ``weight/<term>`` for weights that are not a constant 1, in training only;
- training windows close on optimizer-stepping batches whose count is a multiple of
  ``log_every_n_steps``; the rest is written once when training stops; epoch means are plain means
  over batches; evaluation means are weighted by batch size, per dataloader, never pooled;
- every ``fit``/``validate``/``test`` call starts empty, and sanity-check validation logs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

Weight = float | Callable[[int], float]

TOTAL = "loss"


@dataclass(frozen=True)
class Step:
    """One ``training_step``/``validation_step``/``test_step`` as the model saw it.

    ``values`` holds every 0-dim floating entry the model returned (flattened names), as Python
    floats; ``requires_grad`` the names among them whose tensor carried a gradient.
    ``global_step`` is ``trainer.global_step`` during the step (the argument of weight schedules).
    ``training`` tells a training step from a validation step inside ``fit`` (validation may run
    mid-epoch, and training resumes after it without any other marker).
    """

    values: Mapping[str, float]
    requires_grad: frozenset[str] = frozenset()
    batch_size: int = 1
    global_step: int = 0
    dataloader_idx: int = 0
    training: bool = True


@dataclass(frozen=True)
class EpochStart:
    """``on_train_epoch_start``: the epoch means restart here."""


@dataclass(frozen=True)
class EvalStart:
    """``on_validation_epoch_start``/``on_test_epoch_start``; ``sanity`` for the sanity check."""

    sanity: bool = False


Event = Step | EpochStart | EvalStart


@dataclass(frozen=True)
class Point:
    """One expected logged value. ``steps``: the logged ``step`` values accepted, ``None`` = any.

    Where the contract fixes the step (a periodic window, an evaluation run) exactly one step is
    accepted. Epoch means and the final window are written when an epoch or the training ends, and
    the contract leaves open whether that goes through Lightning's epoch-end path (which logs at
    ``_batches_that_stepped - 1``) or straight to the loggers (``_batches_that_stepped``): both are
    accepted there.
    """

    value: float
    steps: frozenset[int] | None = None


@dataclass
class Expected:
    """What one Trainer call must log: ``series[name]`` in order, and ``trainer.validate()``'s
    or ``trainer.test()``'s returned dicts (one per dataloader; ``None`` for ``fit``)."""

    series: dict[str, list[Point]] = field(default_factory=dict)
    returned: list[dict[str, float]] | None = None

    def add(self, name: str, value: float, steps: Iterable[int] | None) -> None:
        self.series.setdefault(name, []).append(
            Point(value, None if steps is None else frozenset(steps))
        )

    def extend(self, other: Expected) -> None:
        """Append ``other``'s series after this one's (two calls logging to one logger)."""
        for name, points in other.series.items():
            self.series.setdefault(name, []).extend(points)


def mean(values: Sequence[float]) -> float:
    """Exactly rounded mean (``fsum``), so the reference adds no error of its own."""
    return math.fsum(values) / len(values)


def weighted_mean(pairs: Sequence[tuple[float, int]]) -> float:
    """Mean of ``(value, batch_size)`` pairs weighted by batch size."""
    return math.fsum(v * b for v, b in pairs) / math.fsum(b for _, b in pairs)


def stepping_batch(batch_idx: int, batches_per_epoch: int, accumulate: int) -> bool:
    """Whether Lightning steps the optimizer after this batch (accumulation done, or last batch)."""
    return (batch_idx + 1) % accumulate == 0 or batch_idx == batches_per_epoch - 1


class Reference:
    """The logging contract for one module across its ``fit``/``validate``/``test`` calls.

    The only state kept between calls is the module's classification: the names that have been a
    loss term in training, and whether any training step has happened. Windows and means never
    carry over, which is itself part of the contract.
    """

    def __init__(self, loss_weights: Mapping[str, Weight] | None = None) -> None:
        self.loss_weights = dict(loss_weights or {})
        self.train_terms: set[str] = set()
        self.trained = False

    # -- one step ---------------------------------------------------------------------------

    def weight(self, name: str, global_step: int) -> float:
        w = self.loss_weights.get(name, 1.0)
        return float(w(global_step)) if callable(w) else float(w)

    def logs_weight(self, name: str) -> bool:
        """A weight is logged unless it is the constant 1 (an unlisted term, or ``1.0``)."""
        w = self.loss_weights.get(name, 1.0)
        return callable(w) or float(w) != 1.0

    def terms(self, step: Step, training: bool) -> list[str]:
        """Which returned names are loss terms in this step (and remember training's verdict)."""
        if training:
            terms = [k for k in step.values if k in step.requires_grad or k in self.train_terms]
            self.train_terms.update(terms)
            # A step whose forward returned None classified nothing: until a training step has
            # returned values there is no training verdict to follow (the "no training step
            # yet" rule still holds, as it does before any fit).
            self.trained = self.trained or bool(step.values)
            return terms
        if not self.trained:
            return list(step.values)
        return [k for k in step.values if k in self.train_terms]

    def entries(self, step: Step, training: bool) -> dict[str, float]:
        """The names (without stage prefix) and values this step contributes to its means.

        ``weight/<term>`` is an entry only where the term is (a weight belongs to a term of the
        step; the contract says no more), so its window mean is over the steps with the term.
        """
        terms = self.terms(step, training)
        out = {k: v for k, v in step.values.items() if k not in terms}  # metrics
        if terms:
            if terms != [TOTAL]:
                out.update({k: step.values[k] for k in terms})
            weighted = [self.weight(k, step.global_step) * step.values[k] for k in terms]
            out[TOTAL] = math.fsum(weighted)
        if training:
            for k in terms:
                if self.logs_weight(k):
                    out[f"weight/{k}"] = self.weight(k, step.global_step)
        return out

    # -- calls ------------------------------------------------------------------------------

    def fit(
        self,
        events: Sequence[Event],
        *,
        batches_per_epoch: int,
        accumulate_grad_batches: int = 1,
        log_every_n_steps: int = 50,
        num_dataloaders: int = 1,
    ) -> Expected:
        """What ``trainer.fit`` logs, from the events of that call in order.

        Validation steps (``training=False``) belong to the latest ``EvalStart``. Raises
        ``AssertionError`` if ``trainer.global_step`` did not count optimizer steps as this
        reference assumes, so that a wrong assumption about Lightning is never blamed on the
        library.
        """
        expected = Expected()
        window: list[dict[str, float]] = []
        epoch: list[dict[str, float]] = []
        # optimizer-stepping batches so far in this fit (Lightning's _batches_that_stepped)
        stepped = 0
        last_stepped = False  # whether the latest training batch stepped
        batch_idx = -1
        in_eval: Evaluation | None = None
        sanity = False

        def write_epoch() -> None:
            if epoch:
                for name, value in window_means(epoch).items():
                    if not name.startswith("weight/"):
                        expected.add(f"train/{name}_epoch", value, {stepped - 1, stepped})

        def close_eval() -> None:
            nonlocal in_eval
            if in_eval is not None and not sanity:
                step_at_val = stepped - 1 if last_stepped else stepped
                in_eval.write(expected, "val", num_dataloaders, {step_at_val})
            in_eval = None

        for event in events:
            if isinstance(event, EpochStart):
                close_eval()
                write_epoch()
                epoch, batch_idx = [], -1
            elif isinstance(event, EvalStart):
                close_eval()
                in_eval, sanity = Evaluation(), event.sanity
            elif not event.training:
                assert in_eval is not None, "a validation step outside a validation run"
                in_eval.add(event, self.entries(event, training=False) if not sanity else {})
            else:
                close_eval()
                batch_idx += 1
                assert event.global_step == stepped, (
                    f"the reference's model of Lightning is wrong: batch {batch_idx} ran at "
                    f"global_step {event.global_step}, expected {stepped}"
                )
                row = self.entries(event, training=True)
                window.append(row)
                epoch.append(row)
                last_stepped = stepping_batch(batch_idx, batches_per_epoch, accumulate_grad_batches)
                if last_stepped:
                    if (stepped + 1) % log_every_n_steps == 0:
                        write_window(expected, window, {stepped})
                        window = []
                    stepped += 1
        close_eval()
        write_epoch()
        if window:  # the last partial window, written when training stops
            write_window(expected, window, {max(stepped - 1, 0), stepped})
        return expected

    def evaluate(
        self, stage: str, events: Sequence[Event], *, num_dataloaders: int = 1, step: int = 0
    ) -> Expected:
        """What ``trainer.validate`` (``stage="val"``) or ``trainer.test`` (``"test"``) logs and
        returns; ``step`` is the trainer's ``_batches_that_stepped`` (0 for a fresh Trainer)."""
        run = Evaluation()
        for event in events:
            if isinstance(event, Step):
                run.add(event, self.entries(event, training=False))
        expected = Expected()
        expected.returned = run.write(expected, stage, num_dataloaders, {step})
        return expected


def window_means(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per name, the plain mean over the rows where it was present."""
    names: dict[str, list[float]] = {}
    for row in rows:
        for name, value in row.items():
            names.setdefault(name, []).append(value)
    return {name: mean(values) for name, values in names.items()}


def write_window(expected: Expected, rows: Sequence[Mapping[str, float]], steps: set[int]) -> None:
    for name, value in window_means(rows).items():
        expected.add(name if name.startswith("weight/") else f"train/{name}", value, steps)


class Evaluation:
    """One evaluation run: batch-size-weighted means per dataloader and name."""

    def __init__(self) -> None:
        self.pairs: dict[int, dict[str, list[tuple[float, int]]]] = {}

    def add(self, step: Step, entries: Mapping[str, float]) -> None:
        per_name = self.pairs.setdefault(step.dataloader_idx, {})
        for name, value in entries.items():
            per_name.setdefault(name, []).append((value, step.batch_size))

    def write(
        self, expected: Expected, stage: str, num_dataloaders: int, steps: set[int]
    ) -> list[dict[str, float]]:
        returned: list[dict[str, float]] = []
        for idx in range(num_dataloaders):
            suffix = f"/dataloader_idx_{idx}" if num_dataloaders > 1 else ""
            values = {
                f"{stage}/{name}{suffix}": weighted_mean(pairs)
                for name, pairs in self.pairs.get(idx, {}).items()
            }
            for name, value in values.items():
                expected.add(name, value, steps)
            returned.append(values)
        return returned
