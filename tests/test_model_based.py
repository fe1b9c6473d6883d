"""Model-based test of the logging contract (API.md §1-§3): every logged value against a reference.

Hypothesis draws a Trainer configuration (windows, accumulation, mid-epoch validation, limits,
max_epochs/max_steps/should_stop, one or two val loaders, sanity checks, validate/test before and
after fit on fresh Trainers or on fit's own, a second fit) and a model (scalar, HuggingFace-like
``{"loss": ...}`` or dict returns, nested names, optional terms present on some batches only, a term
that sometimes lacks a gradient, metrics without gradient, non-scalar pass-through outputs, batches
returning None, constant and scheduled weights). The model records every value it returns, as a
Python float, together with the step, stage, dataloader and batch size; ``tests/reference.py``
turns those records into what must be logged, in plain float arithmetic. Then EVERY value of every
``metrics.csv`` and every dict returned by ``trainer.validate()``/``trainer.test()`` must match it
to ``rel=1e-9`` (the model is float64 end to end, so float32 rounding anywhere shows), with no
name missing and none extra.

The first tests check the reference itself on numbers computed by hand, so that a failure of the
model-based test can be blamed on the library rather than on the reference.
"""

from __future__ import annotations

import csv
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from reference import EpochStart, EvalStart, Event, Expected, Point, Reference, Step, Weight
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossDictModule

REL = 1e-9
ABS = 1e-12  # only for values that are exactly 0 in exact arithmetic


def schedule(step: int) -> float:
    return 1 + 0.1 * step


# --------------------------------------------------------------------------------------------
# The reference on hand-computed numbers
# --------------------------------------------------------------------------------------------


def values(expected: Expected) -> dict[str, list[float]]:
    return {name: [p.value for p in points] for name, points in expected.series.items()}


def assert_values(expected: Expected, by_hand: dict[str, list[float]]) -> None:
    """Same names, same number of writes, values equal up to the hand arithmetic's rounding."""
    got = values(expected)
    assert set(got) == set(by_hand)
    for name, want in by_hand.items():
        assert got[name] == pytest.approx(want, rel=1e-12), name


def test_reference_windows_epochs_weights_and_final_write() -> None:
    """3 batches an epoch, 2 epochs, a write every 2 steps, ``aux`` on some batches only and an
    accuracy-like metric: windows cross the epoch boundary, the last partial window is written,
    the metric is never summed and an absent key writes nothing."""
    ref = Reference({"aux": 0.5, "main": schedule})
    g = frozenset({"main", "aux"})
    steps = [
        {"main": 1.0, "aux": 10.0, "acc": 0.5},
        {"main": 2.0},
        {"main": 3.0, "acc": 1.0},
        {"main": 4.0},
        {"main": 5.0, "aux": 20.0},
        {"main": 6.0},
    ]
    events: list[Event] = []
    for i, v in enumerate(steps):
        if i % 3 == 0:
            events.append(EpochStart())
        events.append(Step(v, g & set(v), global_step=i))
    got = ref.fit(events, batches_per_epoch=3, log_every_n_steps=2)
    w = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5]  # schedule(step) for main
    totals = [w[0] * 1 + 5.0, w[1] * 2, w[2] * 3, w[3] * 4, w[4] * 5 + 10.0, w[5] * 6]
    assert_values(
        got,
        {
            "train/main": [1.5, 3.5, 5.5],
            "train/aux": [10.0, 20.0],  # absent from the window of steps 2-3: not written
            "train/acc": [0.5, 1.0],
            "train/loss": [
                (totals[0] + totals[1]) / 2,
                (totals[2] + totals[3]) / 2,
                (totals[4] + totals[5]) / 2,
            ],
            "weight/main": [1.05, 1.25, 1.45],
            "weight/aux": [0.5, 0.5],
            "train/main_epoch": [2.0, 5.0],
            "train/aux_epoch": [10.0, 20.0],
            "train/acc_epoch": [0.75],
            "train/loss_epoch": [sum(totals[:3]) / 3, sum(totals[3:]) / 3],
        },
    )
    assert [p.steps for p in got.series["train/main"]] == [{1}, {3}, {5}]
    assert got.series["train/main_epoch"][1].steps == {5, 6}

    # max_steps=5 would have stopped after step 4: the partial window {4} is written at the end
    partial = Reference({"aux": 0.5}).fit(events[:7], batches_per_epoch=3, log_every_n_steps=2)
    assert values(partial)["train/main"] == [1.5, 3.5, 5.0]
    assert partial.series["train/main"][2].steps == {4, 5}


def test_reference_accumulation_scalar_return_and_validation_during_fit() -> None:
    """A scalar return logs only the weighted ``train/loss``; with ``accumulate_grad_batches=2``
    and 3 batches an epoch the optimizer steps after batches 1 and 2, so with a write every step
    the windows are {0, 1} and {2}; validation follows training's verdict, is weighted by batch
    size, keeps its loaders apart and ignores the sanity check."""
    ref = Reference({"loss": 2.0})
    lone = frozenset({"loss"})
    events: list[Event] = [
        EvalStart(sanity=True),
        Step({"loss": 100.0}, batch_size=4, training=False),
        EpochStart(),
        Step({"loss": 1.0}, lone, global_step=0),
        Step({"loss": 3.0}, lone, global_step=0),
        Step({"loss": 5.0}, lone, global_step=1),
        EvalStart(),
        Step({"loss": 1.0, "acc": 0.5}, batch_size=3, global_step=2, training=False),
        Step({"loss": 2.0}, batch_size=1, global_step=2, training=False),
        Step(
            {"loss": 10.0, "acc": 1.0},
            batch_size=2,
            global_step=2,
            dataloader_idx=1,
            training=False,
        ),
    ]
    got = ref.fit(
        events,
        batches_per_epoch=3,
        accumulate_grad_batches=2,
        log_every_n_steps=1,
        num_dataloaders=2,
    )
    assert values(got) == {
        "train/loss": [4.0, 10.0],
        "weight/loss": [2.0, 2.0],
        "train/loss_epoch": [6.0],
        "val/loss/dataloader_idx_0": [(3 * 2.0 + 1 * 4.0) / 4],
        "val/acc/dataloader_idx_0": [0.5],
        "val/loss/dataloader_idx_1": [20.0],
        "val/acc/dataloader_idx_1": [1.0],
    }
    assert [p.steps for p in got.series["train/loss"]] == [{0}, {1}]
    # validation ran after the last batch, before Lightning counted that batch as stepped
    assert got.series["val/acc/dataloader_idx_0"][0].steps == {1}


def test_reference_evaluation_before_and_after_training() -> None:
    """Before any training step every scalar is a term (so ``acc`` is summed into ``val/loss``);
    after training, names follow training's verdict: ``acc`` is a metric and ``late``, never a
    term in training, is a metric too. Each call starts from empty means."""
    ref = Reference({"main": 0.5})
    batches = [
        Step({"main": 2.0, "acc": 1.0}, batch_size=3, training=False),
        Step({"main": 4.0, "acc": 0.0, "late": 7.0}, batch_size=1, training=False),
    ]
    before = ref.evaluate("val", batches)
    assert before.returned == [
        {"val/main": 2.5, "val/acc": 0.75, "val/loss": (3 * 2.0 + 1 * 9.0) / 4, "val/late": 7.0}
    ]
    ref.fit(
        [EpochStart(), Step({"main": 1.0, "acc": 1.0}, frozenset({"main"}))], batches_per_epoch=1
    )
    after = ref.evaluate("test", batches, step=3)
    assert after.returned == [
        {"test/main": 2.5, "test/acc": 0.75, "test/loss": (3 * 1.0 + 1 * 2.0) / 4, "test/late": 7.0}
    ]
    assert after.series["test/loss"] == [Point(1.25, frozenset({3}))]


def test_reference_a_term_stays_a_term_and_none_logs_nothing() -> None:
    """``aux`` was a term with a gradient, so without one it is still a term and summed; a batch
    whose forward returned None is a step for Lightning (the optimizer count goes on) but adds
    nothing to any mean, and a window holding only that batch writes nothing."""
    ref = Reference({"main": 0.5})
    both = frozenset({"main", "aux"})
    got = ref.fit(
        [
            EpochStart(),
            Step({"main": 1.0, "aux": 2.0}, both, global_step=0),
            Step({}, global_step=1),
            Step({"main": 3.0, "aux": 4.0}, frozenset({"main"}), global_step=2),
        ],
        batches_per_epoch=3,
        log_every_n_steps=1,
    )
    assert values(got) == {
        "train/main": [1.0, 3.0],
        "train/aux": [2.0, 4.0],
        "train/loss": [0.5 + 2.0, 1.5 + 4.0],
        "weight/main": [0.5, 0.5],
        "train/main_epoch": [2.0],
        "train/aux_epoch": [3.0],
        "train/loss_epoch": [(2.5 + 5.5) / 2],
    }
    assert [p.steps for p in got.series["train/loss"]] == [{0}, {2}]


# --------------------------------------------------------------------------------------------
# The model, its data and the recording callbacks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One drawn experiment. See :func:`configs` for the ranges and why."""

    seed: int
    n_train: int
    train_batch_size: int
    limit_train_batches: int | None
    accumulate_grad_batches: int
    log_every_n_steps: int
    max_epochs: int
    max_steps: int
    stop_after_batches: int | None
    val_sizes: tuple[int, ...]
    val_batch_sizes: tuple[int, ...]
    limit_val_batches: int | None
    val_check_interval: float | int
    num_sanity_val_steps: int
    form: str  # "scalar" | "dict" | "loss_dict"
    nested: bool
    aux_every: int
    metrics: tuple[str, ...]
    passthrough: bool
    weights: tuple[tuple[str, str], ...]  # (term, "0.5" | "1.0" | ... | "schedule")
    before_fit: tuple[str, ...]
    after_fit: tuple[str, ...]
    reuse_fit_trainer: bool
    detach_aux: bool = False  # aux without gradient on some batches: a term stays a term
    fit_twice: bool = False  # fit again after everything else, on a fresh Trainer
    none_batches: bool = False  # forward returns None on some batches

    @property
    def batches_per_epoch(self) -> int:
        n = math.ceil(self.n_train / self.train_batch_size)
        return n if self.limit_train_batches is None else min(n, self.limit_train_batches)

    def loss_weights(self) -> dict[str, Weight]:
        return {k: schedule if w == "schedule" else float(w) for k, w in self.weights}


class Recorded(LossDictModule):
    """Linear 4->3 in float64 returning what ``config.form`` asks; records every returned scalar.

    Which optional entries a batch returns depends only on the sum of its sample ids, so that
    the presence pattern is deterministic, differs between batches and repeats across epochs.
    """

    def __init__(self, config: Config) -> None:
        super().__init__(
            loss_weights=config.loss_weights(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1)
        )
        torch.manual_seed(config.seed)
        self.net = nn.Linear(4, 3, dtype=torch.float64)
        self.config = config
        self.events: list[Event] = []
        self.current_dataloader = 0

    def losses(self, batch: Any) -> Any:
        x, y, ids = batch
        c = self.config
        logits = self.net(x)
        s = int(ids.sum())
        main = F.cross_entropy(logits, y)
        if c.none_batches and s % 4 == 3:
            return None  # nothing to learn from this batch: it logs nothing, counts nowhere
        if c.form == "scalar":
            return main
        out: dict[str, Any] = {"loss" if c.form == "loss_dict" else "main": main}
        if c.form == "dict" and s % c.aux_every == 0:
            aux = logits.pow(2).mean()
            if c.detach_aux and s % 3 == 2:
                aux = aux.detach()  # a term without gradient: summed if it ever was a term
            out.update({"extra": {"aux": aux}} if c.nested else {"aux": aux})
        if "acc" in c.metrics and s % 2 == 0:
            out["acc"] = (logits.argmax(-1) == y).double().mean()
        if "det" in c.metrics and s % 3 != 1:
            out["det"] = 0.5 * main.detach() + 1
        if c.passthrough:
            out["logits"] = logits  # not a scalar: passed through, never logged
        return out

    def forward(self, batch: Any) -> Any:
        out = self.losses(batch)
        flat = flatten({} if out is None else out if isinstance(out, dict) else {"loss": out})
        self.events.append(
            Step(
                values={k: float(v.detach()) for k, v in flat.items()},
                requires_grad=frozenset(k for k, v in flat.items() if v.requires_grad),
                batch_size=len(batch[2]),
                global_step=self.trainer.global_step,
                dataloader_idx=0 if self.training else self.current_dataloader,
                training=self.trainer.training,
            )
        )
        return out


def flatten(out: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """0-dim floating entries by their ``/``-joined names (what may be logged)."""
    flat: dict[str, torch.Tensor] = {}
    for k, v in out.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, torch.Tensor) and v.dim() == 0 and v.is_floating_point():
            flat[prefix + k] = v
    return flat


class Recorder(Callback):
    """Marks epoch and evaluation-run boundaries in the model's records, and tells the model
    which dataloader the coming batch is from (``forward`` does not get to know)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        pl_module.events.append(EpochStart())

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        pl_module.events.append(EvalStart(sanity=trainer.sanity_checking))

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        pl_module.events.append(EvalStart())

    def on_validation_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        pl_module.current_dataloader = dataloader_idx

    def on_test_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        pl_module.current_dataloader = dataloader_idx


class StopAfter(Callback):
    """Sets ``trainer.should_stop`` after the given number of training batches (early stopping
    without a monitor: the contract says the last window is written however training stops)."""

    def __init__(self, batches: int) -> None:
        self.batches, self.seen = batches, 0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.seen += 1
        if self.seen == self.batches:
            trainer.should_stop = True


def loader(n: int, batch_size: int, first_id: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    ids = torch.arange(first_id, first_id + n)
    return DataLoader(TensorDataset(x, y, ids), batch_size=batch_size)


def val_loaders(c: Config) -> list[DataLoader]:
    return [
        loader(n, b, 100 * (i + 1), c.seed + i + 1)
        for i, (n, b) in enumerate(zip(c.val_sizes, c.val_batch_sizes))
    ]


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------


def read_csv(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Every ``(step, value)`` written for each name, in file order (``{}`` when no file)."""
    series: dict[str, list[tuple[int, float]]] = {}
    if not path.exists():
        return series
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            for name, cell in row.items():
                if name not in ("step", "epoch") and cell != "":
                    series.setdefault(name, []).append((step, float(cell)))
    return series


def close(expected: float, got: float) -> bool:
    return math.isclose(expected, got, rel_tol=REL, abs_tol=ABS)


def compare_series(
    label: str, expected: Expected, logged: dict[str, list[tuple[int, float]]]
) -> list[str]:
    """Every difference between what a logger received and what the reference expects."""
    problems: list[str] = []
    for name in sorted(set(expected.series) | set(logged)):
        want, got = expected.series.get(name, []), logged.get(name, [])
        if len(want) != len(got):
            problems.append(
                f"{label}: {name}: {len(got)} rows written, expected {len(want)} "
                f"(expected {[p.value for p in want]}, got {[v for _, v in got]})"
            )
            continue
        for i, (point, (step, value)) in enumerate(zip(want, got)):
            if not close(point.value, value):
                problems.append(
                    f"{label}: {name} row {i} (step {step}): expected {point.value!r}, "
                    f"got {value!r}"
                )
            elif point.steps is not None and step not in point.steps:
                problems.append(
                    f"{label}: {name} row {i}: logged at step {step}, expected step in "
                    f"{sorted(point.steps)}"
                )
    return problems


def compare_returned(
    label: str, want: Sequence[dict[str, float]], got: Sequence[dict[str, float]]
) -> list[str]:
    if len(want) != len(got):
        return [f"{label}: returned {len(got)} dicts, expected {len(want)}"]
    problems: list[str] = []
    for i, (w, g) in enumerate(zip(want, got)):
        if set(w) != set(g):
            problems.append(
                f"{label}: dict {i} keys: missing {sorted(set(w) - set(g))}, "
                f"unexpected {sorted(set(g) - set(w))}"
            )
        for k in sorted(set(w) & set(g)):
            if not close(w[k], float(g[k])):
                problems.append(f"{label}: dict {i} {k}: expected {w[k]!r}, got {g[k]!r}")
    return problems


# --------------------------------------------------------------------------------------------
# One experiment
# --------------------------------------------------------------------------------------------


def trainer_for(c: Config, root: Path, name: str, **kwargs: Any) -> L.Trainer:
    options: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(root, name=name, version=0),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=c.limit_val_batches,
        limit_test_batches=c.limit_val_batches,
        callbacks=[Recorder()],
    )
    options.update(kwargs)
    return L.Trainer(**options)


def metrics_csv(root: Path, name: str) -> Path:
    return root / name / "version_0" / "metrics.csv"


def run_experiment(c: Config, root: Path) -> list[str]:
    """Runs every call of ``c`` on one module; returns every difference found."""
    model = Recorded(c)
    ref = Reference(c.loss_weights())
    loaders = val_loaders(c)
    problems: list[str] = []

    def evaluate(stage: str, trainer: L.Trainer, label: str, step: int) -> Expected:
        model.events = []
        call = trainer.validate if stage == "val" else trainer.test
        returned = call(model, loaders, verbose=False)
        expected = ref.evaluate(stage, model.events, num_dataloaders=len(loaders), step=step)
        assert expected.returned is not None
        problems.extend(compare_returned(f"{label} returned", expected.returned, returned))
        return expected

    for i, stage in enumerate(c.before_fit):
        label = f"{stage} before fit"
        expected = evaluate(stage, trainer_for(c, root, f"pre{i}"), label, 0)
        problems.extend(compare_series(label, expected, read_csv(metrics_csv(root, f"pre{i}"))))

    def fit(name: str) -> tuple[L.Trainer, Expected]:
        trainer = trainer_for(
            c,
            root,
            name,
            max_epochs=c.max_epochs,
            max_steps=c.max_steps,
            limit_train_batches=c.limit_train_batches,
            accumulate_grad_batches=c.accumulate_grad_batches,
            log_every_n_steps=c.log_every_n_steps,
            val_check_interval=c.val_check_interval,
            num_sanity_val_steps=c.num_sanity_val_steps,
            callbacks=[Recorder()]
            + ([StopAfter(c.stop_after_batches)] if c.stop_after_batches else []),
        )
        model.events = []
        trainer.fit(model, loader(c.n_train, c.train_batch_size, 0, c.seed), loaders)
        expected = ref.fit(
            model.events,
            batches_per_epoch=c.batches_per_epoch,
            accumulate_grad_batches=c.accumulate_grad_batches,
            log_every_n_steps=c.log_every_n_steps,
            num_dataloaders=len(loaders),
        )
        return trainer, expected

    fit_trainer, fit_expected = fit("fit")
    stepped = fit_trainer.fit_loop.epoch_loop._batches_that_stepped

    for i, stage in enumerate(c.after_fit):
        label = f"{stage} after fit"
        if c.reuse_fit_trainer:  # same Trainer and logger: its rows follow fit's in one file
            fit_expected.extend(evaluate(stage, fit_trainer, label, stepped))
        else:
            expected = evaluate(stage, trainer_for(c, root, f"post{i}"), label, 0)
            problems.extend(
                compare_series(label, expected, read_csv(metrics_csv(root, f"post{i}")))
            )
    problems.extend(compare_series("fit", fit_expected, read_csv(metrics_csv(root, "fit"))))
    if c.fit_twice:  # a second fit of the same module on a fresh Trainer: nothing carries over
        _, expected = fit("fit2")
        problems.extend(compare_series("second fit", expected, read_csv(metrics_csv(root, "fit2"))))
    return problems


# --------------------------------------------------------------------------------------------
# The drawn configurations
# --------------------------------------------------------------------------------------------

WEIGHTS = ("1.0", "0.5", "2.5", "schedule")


@st.composite
def configs(draw: Callable[..., Any]) -> Config:
    """Small enough for CI (at most 10 batches an epoch, 3 epochs), varied enough to cross every
    boundary: uneven last batches, windows across epochs, accumulation ending on a partial group,
    validation mid-epoch, stops mid-window."""
    n_train = draw(st.integers(3, 10))
    train_batch_size = draw(st.integers(1, 4))
    full = math.ceil(n_train / train_batch_size)
    limit_train = draw(st.none() | st.integers(1, full))
    per_epoch = full if limit_train is None else min(full, limit_train)
    accumulate = draw(st.integers(1, 3))
    max_epochs = draw(st.integers(1, 3))
    steps_per_epoch = math.ceil(per_epoch / accumulate)
    max_steps = draw(st.just(-1) | st.integers(1, steps_per_epoch * max_epochs))
    stop = draw(st.none() | st.integers(1, per_epoch * max_epochs))
    n_loaders = draw(st.integers(1, 2))
    form = draw(st.sampled_from(["scalar", "dict", "loss_dict"]))
    nested = form == "dict" and draw(st.booleans())
    terms = {
        "scalar": ["loss"],
        "loss_dict": ["loss"],
        "dict": ["main", "extra/aux" if nested else "aux"],
    }[form]
    calls = st.lists(st.sampled_from(["validate", "test"]), max_size=2).map(tuple)
    before_fit = draw(calls)
    # {"loss": x, "acc": a} before any training would make acc a term beside a term named
    # "loss", whose name the total already has: the contract does not say what to log then.
    metrics_allowed = form != "scalar" and not (form == "loss_dict" and before_fit)
    metrics = draw(st.sets(st.sampled_from(["acc", "det"]))) if metrics_allowed else set()
    # a weight on "acc" applies only where acc is a term (validate/test before any training)
    weighted = terms + (["acc"] if "acc" in metrics else [])
    weights = tuple(
        (t, w) for t in weighted if (w := draw(st.none() | st.sampled_from(WEIGHTS))) is not None
    )
    return Config(
        seed=draw(st.integers(0, 3)),
        n_train=n_train,
        train_batch_size=train_batch_size,
        limit_train_batches=limit_train,
        accumulate_grad_batches=accumulate,
        log_every_n_steps=draw(st.integers(1, 5)),
        max_epochs=max_epochs,
        max_steps=max_steps,
        stop_after_batches=stop,
        val_sizes=tuple(draw(st.integers(2, 7)) for _ in range(n_loaders)),
        val_batch_sizes=tuple(draw(st.integers(1, 3)) for _ in range(n_loaders)),
        limit_val_batches=draw(st.none() | st.integers(1, 3)),
        val_check_interval=draw(st.just(1.0) | st.integers(1, per_epoch)),
        num_sanity_val_steps=draw(st.sampled_from([0, 2])),
        form=form,
        nested=nested,
        aux_every=draw(st.sampled_from([1, 2, 5])),
        metrics=tuple(sorted(metrics)),
        passthrough=form != "scalar" and draw(st.booleans()),
        weights=weights,
        before_fit=tuple("val" if s == "validate" else "test" for s in before_fit),
        after_fit=tuple("val" if s == "validate" else "test" for s in draw(calls)),
        reuse_fit_trainer=draw(st.booleans()),
        detach_aux=form == "dict" and draw(st.booleans()),
        fit_twice=draw(st.booleans()),
        none_batches=draw(st.booleans()),
    )


# Explicit examples run first, whatever hypothesis draws: 25 derandomized draws start from the
# simplest configurations, so these make sure every corner of the contract is in every CI run.
RICH = Config(  # every call kind, two loaders, mid-epoch validation, accumulation, a schedule
    seed=1,
    n_train=9,
    train_batch_size=2,
    limit_train_batches=None,
    accumulate_grad_batches=2,
    log_every_n_steps=2,
    max_epochs=2,
    max_steps=-1,
    stop_after_batches=None,
    val_sizes=(5, 4),
    val_batch_sizes=(2, 3),
    limit_val_batches=None,
    val_check_interval=2,
    num_sanity_val_steps=2,
    form="dict",
    nested=True,
    aux_every=1,
    metrics=("acc", "det"),
    passthrough=True,
    weights=(("main", "schedule"), ("extra/aux", "0.5"), ("acc", "2.5")),
    before_fit=("val", "test"),
    after_fit=("val", "test"),
    reuse_fit_trainer=True,
    detach_aux=True,
    fit_twice=True,
)
SCALAR = Config(  # a weighted scalar; accumulation ending on a partial group; max_steps mid-epoch
    seed=2,
    n_train=10,
    train_batch_size=2,
    limit_train_batches=None,
    accumulate_grad_batches=3,
    log_every_n_steps=4,
    max_epochs=3,
    max_steps=5,
    stop_after_batches=None,
    val_sizes=(3,),
    val_batch_sizes=(2,),
    limit_val_batches=None,
    val_check_interval=1.0,
    num_sanity_val_steps=0,
    form="scalar",
    nested=False,
    aux_every=1,
    metrics=(),
    passthrough=False,
    weights=(("loss", "2.5"),),
    before_fit=("test",),
    after_fit=("val",),
    reuse_fit_trainer=False,
)
HUGGINGFACE = Config(  # {"loss", "acc"} under Lightning's default sanity check; stopped mid-window
    seed=0,
    n_train=8,
    train_batch_size=1,
    limit_train_batches=6,
    accumulate_grad_batches=1,
    log_every_n_steps=4,
    max_epochs=2,
    max_steps=-1,
    stop_after_batches=9,
    val_sizes=(4, 3),
    val_batch_sizes=(3, 1),
    limit_val_batches=2,
    val_check_interval=1.0,
    num_sanity_val_steps=2,
    form="loss_dict",
    nested=False,
    aux_every=1,
    metrics=("acc",),
    passthrough=True,
    weights=(),
    before_fit=(),
    after_fit=("test",),
    reuse_fit_trainer=False,
)
NEVER_TRAINED = Config(  # aux never in a training batch: a term before fit, a metric after
    seed=3,
    n_train=10,
    train_batch_size=3,
    limit_train_batches=None,
    accumulate_grad_batches=1,
    log_every_n_steps=5,
    max_epochs=3,
    max_steps=-1,
    stop_after_batches=None,
    val_sizes=(6,),
    val_batch_sizes=(2,),
    limit_val_batches=2,
    val_check_interval=1,
    num_sanity_val_steps=0,
    form="dict",
    nested=False,
    aux_every=5,
    metrics=("det",),
    passthrough=False,
    weights=(("main", "1.0"), ("aux", "schedule")),
    before_fit=("val",),
    after_fit=("test",),
    reuse_fit_trainer=True,
    none_batches=True,
)


@pytest.mark.filterwarnings("ignore")  # Lightning's advice on tiny loaders is not the subject
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(config=configs())
@example(config=RICH)
@example(config=SCALAR)
@example(config=HUGGINGFACE)
@example(config=NEVER_TRAINED)
def test_every_logged_value_matches_the_reference(config: Config) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        problems = run_experiment(config, Path(tmp))
    shown = "\n".join(problems[:25])
    more = f"\n... and {len(problems) - 25} more" if len(problems) > 25 else ""
    assert not problems, f"{len(problems)} differences from the reference:\n{shown}{more}"
