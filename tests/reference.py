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
- training windows close where Lightning writes its own step metrics (optimizer-stepping batches
  whose count is a multiple of ``log_every_n_steps``, or where ``should_stop`` is set); the rest is
  written once when training stops, labelled with the last batch's ``step`` and ``epoch``; epoch
  means are plain means over batches; evaluation means are weighted by batch size, per dataloader,
  never pooled;
- every ``fit``/``validate``/``test`` call starts empty, and sanity-check validation logs nothing.

When validation runs, when training stops and which row carries which ``step`` and ``epoch`` are
predicted from Lightning's loop rules (``lightning/pytorch/loops/training_epoch_loop.py``,
``fit_loop.py``, ``callbacks/early_stopping.py``, the logger connector), never read from the run:
:meth:`Reference.fit` simulates the loops and takes from the run only the values each batch
returned, checking that the run executed exactly the batches it predicted.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
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
    mid-epoch, and training resumes after it without any other marker). ``where`` names the batch
    as the loops ran it: ``("train", epoch, batch_idx)``, ``("val"|"test", loader, batch_idx)``.
    ``added_metrics`` are the names among ``values`` that came from ``add_metric``.
    """

    values: Mapping[str, float]
    requires_grad: frozenset[str] = frozenset()
    batch_size: int = 1
    global_step: int = 0
    dataloader_idx: int = 0
    training: bool = True
    where: tuple[str, int, int] = ("train", 0, 0)
    added_metrics: frozenset[str] = frozenset()
    #: per sample, what a ``metrics=`` metric (a mean over samples) is updated with
    samples: tuple[float, ...] = ()


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


@dataclass(frozen=True)
class Row:
    """One logger write: the ``step`` and ``epoch`` columns and every value of the row."""

    step: int
    epoch: int
    values: Mapping[str, float]


@dataclass
class Expected:
    """What one Trainer call must log: the rows in order, ``trainer.validate()``'s or
    ``trainer.test()``'s returned dicts (one per dataloader; ``None`` for ``fit``) and, for
    ``fit``, the library's names in ``trainer.callback_metrics`` at its end."""

    rows: list[Row] = field(default_factory=list)
    returned: list[dict[str, float]] | None = None
    callback: dict[str, float] = field(default_factory=dict)

    def write(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        if values:
            self.rows.append(Row(step, epoch, dict(values)))

    @property
    def series(self) -> dict[str, list[Point]]:
        """Each name's values in row order, with the step of their row."""
        out: dict[str, list[Point]] = {}
        for row in self.rows:
            for name, value in row.values.items():
                out.setdefault(name, []).append(Point(value, frozenset({row.step})))
        return out

    def extend(self, other: Expected) -> None:
        """Append ``other``'s rows after this one's (two calls logging to one logger)."""
        self.rows.extend(other.rows)


@dataclass(frozen=True)
class EarlyStop:
    """``EarlyStopping(monitor, patience, strict=False, check_on_train_epoch_end=...)``, mode min;
    ``on_train_epoch_end=None`` is Lightning's default (decided from the Trainer's flags)."""

    monitor: str
    patience: int
    on_train_epoch_end: bool | None = None


@dataclass(frozen=True)
class Loop:
    """The Trainer flags that decide the loops' schedule, as Lightning resolves them.

    ``batches_per_epoch`` is after ``limit_train_batches``; ``val_batches`` per loader after
    ``limit_val_batches``; ``val_check_batch`` as ``_FitLoop.setup_data`` computes it from
    ``val_check_interval`` (an int as is, a float ``f`` as ``max(1, int(batches * f))``).
    """

    batches_per_epoch: int
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 50
    max_epochs: int = 1
    max_steps: int = -1
    stop_after_batches: int | None = None
    val_batches: tuple[int, ...] = ()
    val_check_batch: int | None = None
    check_val_every_n_epoch: int = 1
    val_check_interval_is_one: bool = True
    num_sanity_val_steps: int = 0
    early_stopping: EarlyStop | None = None


class Feed:
    """The run's recorded steps, taken in the order the reference predicts them."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps, self.i = list(steps), 0

    def take(self, where: tuple[str, int, int]) -> Step:
        assert self.i < len(self.steps), f"the reference predicted batch {where}; the run ended"
        step = self.steps[self.i]
        assert step.where == where, (
            f"the reference predicted batch {where} as the run's step {self.i}; the run ran "
            f"{step.where}"
        )
        self.i += 1
        return step

    def done(self) -> None:
        rest = [s.where for s in self.steps[self.i : self.i + 3]]
        assert self.i == len(self.steps), (
            f"the run ran batches the reference did not predict: {rest}"
        )


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

    ``select`` (``loss_keys`` as a predicate) decides in every stage. ``all_terms``: the names
    a weighting's term list or routes without a ``"loss"`` route give, which before any training
    step are all the terms there are. ``total_key``: the model's own total was recorded as
    ``loss``; it is the one term, every other value a metric. ``dwa``: a
    ``DynamicWeightAverage(terms, temperature)`` whose weights multiply ``loss_weights`` and are
    all logged.
    """

    def __init__(
        self,
        loss_weights: Mapping[str, Weight] | None = None,
        select: Callable[[str], bool] | None = None,
        all_terms: Sequence[str] | None = None,
        total_key: bool = False,
        dwa: tuple[Sequence[str], float] | None = None,
        metric: str | None = None,
    ) -> None:
        self.metric = metric  # a metrics= mean over evaluation samples, logged under this name
        self.loss_weights = dict(loss_weights or {})
        self.select = select
        self.all_terms = None if all_terms is None else set(all_terms)
        self.total_key = total_key
        self.dwa_terms, self.temperature = (list(dwa[0]), dwa[1]) if dwa else ([], 1.0)
        self.dwa_weights = {t: 1.0 for t in self.dwa_terms}
        self.dwa_means: list[dict[str, float]] = []  # the last two epochs' term means
        self.train_terms: set[str] = set()
        self.trained = False

    def dwa_epoch_end(self, means: Mapping[str, float]) -> None:
        """DWA's update from an epoch's term means: ``K softmax(r / T)``, ``r`` the ratio of the
        last two epochs' means (1 where either is missing), all 1 before two epochs."""
        if not self.dwa_terms:
            return
        self.dwa_means = [*self.dwa_means, {t: means[t] for t in self.dwa_terms if t in means}]
        self.dwa_means = self.dwa_means[-2:]
        if len(self.dwa_means) < 2 or not self.dwa_means[0]:
            self.dwa_weights = {t: 1.0 for t in self.dwa_terms}
            return
        before, last = self.dwa_means
        ratios = [last[t] / before[t] if t in before and t in last else 1.0 for t in self.dwa_terms]
        exps = [math.exp(r / self.temperature - max(ratios) / self.temperature) for r in ratios]
        self.dwa_weights = {
            t: len(exps) * e / math.fsum(exps) for t, e in zip(self.dwa_terms, exps)
        }

    # -- one step ---------------------------------------------------------------------------

    def _weight_entry(self, name: str) -> Weight | None:
        """An exact name wins, then the first matching glob pattern in the order given."""
        if name in self.loss_weights:
            return self.loss_weights[name]
        for pattern, w in self.loss_weights.items():
            if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(name, pattern):
                return w
        return None

    def weight(self, name: str, global_step: int) -> float:
        w = self._weight_entry(name)
        learned = self.dwa_weights.get(name, 1.0)
        if w is None:
            return learned
        return (float(w(global_step)) if callable(w) else float(w)) * learned

    def logs_weight(self, name: str) -> bool:
        """A weight is logged unless it is the constant 1 (an unlisted term, or ``1.0``);
        with a weighting, every weight is logged."""
        if self.dwa_terms:
            return True
        w = self._weight_entry(name)
        return w is not None and (callable(w) or float(w) != 1.0)

    def terms(self, step: Step, training: bool) -> list[str]:
        """Which returned names are loss terms in this step (and remember training's verdict)."""
        if self.total_key:
            return [TOTAL] if TOTAL in step.values else []
        if self.select is not None:
            selected = [k for k in step.values if self.select(k)]
            if training:
                self.trained = self.trained or bool(step.values)
                self.train_terms.update(selected)
            return selected
        candidates = [k for k in step.values if k not in step.added_metrics]
        if training:
            terms = [k for k in candidates if k in step.requires_grad or k in self.train_terms]
            self.train_terms.update(terms)
            # A step whose forward returned None classified nothing: until a training step has
            # returned values there is no training verdict to follow (the "no training step
            # yet" rule still holds, as it does before any fit).
            self.trained = self.trained or bool(step.values)
            return terms
        if not self.trained:
            if self.all_terms is not None:
                return [k for k in candidates if k in self.all_terms]
            if TOTAL in candidates:  # beside a key named "loss" (HuggingFace), it is the term
                return [TOTAL]
            return candidates
        return [k for k in candidates if k in self.train_terms]

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

    def fit(self, steps: Sequence[Step], loop: Loop) -> Expected:
        """What ``trainer.fit`` on a fresh Trainer logs, by simulating Lightning's loops.

        ``steps`` are the run's records in order (sanity check, training and validation
        batches); each must be the batch the simulation expects next.
        """
        feed = Feed(steps)
        expected = Expected()
        callback = expected.callback
        n_loaders = len(loop.val_batches)
        validation = sum(loop.val_batches) > 0
        if loop.num_sanity_val_steps and validation:
            for i, n in enumerate(loop.val_batches):
                for j in range(min(n, loop.num_sanity_val_steps)):
                    feed.take(("val", i, j))  # sanity check: nothing is logged
        per_epoch = loop.batches_per_epoch
        check_batch = loop.val_check_batch or per_epoch
        early = loop.early_stopping
        early_at_epoch_end = early is not None and (
            early.on_train_epoch_end
            if early.on_train_epoch_end is not None
            else loop.val_check_interval_is_one and loop.check_val_every_n_epoch == 1
        )
        best, wait = math.inf, 0
        stepped = global_step = seen = 0  # _batches_that_stepped, optimizer steps, batches
        should_stop = False
        window: list[dict[str, float]] = []
        last_labels = (0, 0)

        def write_window(step: int, epoch: int, to_callbacks: bool) -> None:
            nonlocal window
            means = {
                name if name.startswith("weight/") else f"train/{name}": value
                for name, value in window_means(window).items()
            }
            expected.write(step, epoch, means)
            if to_callbacks:
                callback.update(means)
            window = []

        def early_check() -> None:
            nonlocal best, wait, should_stop
            assert early is not None
            current = callback.get(early.monitor)
            if current is None:  # strict=False: no decision without the monitored value
                return
            if current < best:
                best, wait = current, 0
            else:
                wait += 1
                if wait >= early.patience:
                    should_stop = True

        for epoch in range(loop.max_epochs):
            epoch_rows: list[dict[str, float]] = []
            for b in range(per_epoch):
                step = feed.take(("train", epoch, b))
                assert step.global_step == global_step, (
                    f"the reference's model of Lightning is wrong: batch {b} of epoch {epoch} "
                    f"ran at global_step {step.global_step}, expected {global_step}"
                )
                row = self.entries(step, training=True)
                window.append(row)
                epoch_rows.append(row)
                stepping = (b + 1) % loop.accumulate_grad_batches == 0 or b == per_epoch - 1
                global_step += stepping
                seen += 1
                if loop.stop_after_batches == seen:
                    should_stop = True  # a callback's on_train_batch_end
                last_labels = (stepped, epoch)
                # update_train_step_metrics: not while accumulating; should_update_logs
                if stepping and ((stepped + 1) % loop.log_every_n_steps == 0 or should_stop):
                    write_window(stepped, epoch, to_callbacks=True)
                # on_advance_end: _should_check_val_fx
                if (
                    validation
                    and (epoch + 1) % loop.check_val_every_n_epoch == 0
                    and (should_stop or (b + 1) % check_batch == 0)
                ):
                    run = Evaluation(self.metric)
                    for i, n in enumerate(loop.val_batches):
                        for j in range(n):
                            vstep = feed.take(("val", i, j))
                            run.add(vstep, self.entries(vstep, training=False))
                    merged: dict[str, float] = {}
                    for values in run.means("val", n_loaders):
                        merged.update(values)
                    expected.write(stepped, epoch, merged)
                    callback.update(merged)
                    if early is not None and not early_at_epoch_end:
                        early_check()
                stepped += stepping
                max_steps_reached = loop.max_steps != -1 and global_step >= loop.max_steps
                if max_steps_reached or b == per_epoch - 1 or should_stop:
                    break
            # on_train_epoch_end: epoch means, under the plain names too (for monitors)
            epoch_means = {
                f"train/{name}": value
                for name, value in window_means(window_rows_of(epoch_rows)).items()
            }
            callback.update(epoch_means)
            callback.update({f"{name}_epoch": v for name, v in epoch_means.items()})
            self.dwa_epoch_end(
                {k.split("/", 1)[1]: v for k, v in epoch_means.items() if k[6:] in self.train_terms}
            )
            if early is not None and early_at_epoch_end:
                early_check()
            expected.write(
                stepped - 1, epoch, {f"{name}_epoch": v for name, v in epoch_means.items()}
            )
            max_steps_reached = loop.max_steps != -1 and global_step >= loop.max_steps
            if max_steps_reached or should_stop:
                break
        if window:  # on_train_end: the last partial window, with the last batch's labels
            write_window(*last_labels, to_callbacks=False)
        feed.done()
        self.epochs_run = epoch + 1  # type: ignore[possibly-undefined]
        self.stepped = stepped
        return expected

    def evaluate(
        self,
        stage: str,
        steps: Sequence[Step],
        val_batches: Sequence[int],
        *,
        step: int = 0,
        epoch: int = 0,
    ) -> Expected:
        """What ``trainer.validate`` (``stage="val"``) or ``trainer.test`` (``"test"``) logs and
        returns; ``step`` and ``epoch`` are the trainer's ``_batches_that_stepped`` and
        ``current_epoch`` (0 for a fresh Trainer)."""
        feed = Feed(steps)
        run = Evaluation(self.metric)
        for i, n in enumerate(val_batches):
            for j in range(n):
                s = feed.take((stage, i, j))
                run.add(s, self.entries(s, training=False))
        feed.done()
        expected = Expected()
        expected.returned = run.means(stage, len(val_batches))
        merged: dict[str, float] = {}
        for values in expected.returned:
            merged.update(values)
        expected.write(step, epoch, merged)
        return expected


def window_rows_of(rows: Sequence[Mapping[str, float]]) -> list[dict[str, float]]:
    """Epoch means leave out the weights."""
    return [{k: v for k, v in row.items() if not k.startswith("weight/")} for row in rows]


def window_means(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per name, the plain mean over the rows where it was present."""
    names: dict[str, list[float]] = {}
    for row in rows:
        for name, value in row.items():
            names.setdefault(name, []).append(value)
    return {name: mean(values) for name, values in names.items()}


class Evaluation:
    """One evaluation run: batch-size-weighted means per dataloader and name."""

    def __init__(self, metric: str | None = None) -> None:
        self.pairs: dict[int, dict[str, list[tuple[float, int]]]] = {}
        self.metric = metric
        self.samples: dict[int, list[float]] = {}

    def add(self, step: Step, entries: Mapping[str, float]) -> None:
        if self.metric is not None:
            self.samples.setdefault(step.dataloader_idx, []).extend(step.samples)
        per_name = self.pairs.setdefault(step.dataloader_idx, {})
        for name, value in entries.items():
            per_name.setdefault(name, []).append((value, step.batch_size))

    def means(self, stage: str, num_dataloaders: int) -> list[dict[str, float]]:
        """Each loader's means under Lightning's names (``/dataloader_idx_<i>`` when several)."""
        returned: list[dict[str, float]] = []
        for idx in range(num_dataloaders):
            suffix = f"/dataloader_idx_{idx}" if num_dataloaders > 1 else ""
            returned.append(
                {
                    f"{stage}/{name}{suffix}": weighted_mean(pairs)
                    for name, pairs in self.pairs.get(idx, {}).items()
                }
            )
            if self.samples.get(idx):
                returned[-1][f"{stage}/{self.metric}{suffix}"] = mean(self.samples[idx])
        return returned
