"""Model-based test of the logging contract (API.md §1-§3): every logged cell against a reference.

Hypothesis draws a Trainer configuration (windows, accumulation, validation every n batches or a
fraction of an epoch, every n epochs, integer and fractional limits, max_epochs/max_steps, a
callback's ``should_stop``, EarlyStopping, one or two val loaders, sanity checks, validate/test
before and after fit on fresh Trainers or on fit's own, a second fit) and a model (subclass or
wrapped with each ``call=``, tuple or dict batches, scalar, HuggingFace-like ``{"loss": ...}``,
``total_key`` or dict returns, nested names, optional terms present on some batches only, a term
that sometimes lacks a gradient, metrics without gradient, ``add_loss``/``add_metric`` from
inside the model, non-scalar pass-through outputs, batches returning None, ``loss_keys`` as
names, globs or a callable, constant, glob-keyed and scheduled weights, a DynamicWeightAverage
weighting, per-key optimizers joint or taking turns, with per-step schedulers whose step counts
are checked, a torchmetrics metric through ``metrics=``). The model records every value it returns,
as a Python float, with the batch the loops ran; ``tests/reference.py`` predicts from Lightning's
loop rules which batches run and which rows are written, and from the contract what they hold,
in plain float arithmetic. Then EVERY row of every ``metrics.csv`` (its ``step``, its ``epoch``,
its cells, in file order), every dict returned by ``trainer.validate()``/``trainer.test()`` and
the library's entries of ``trainer.callback_metrics`` after ``fit`` (float64) must match it to
``rel=1e-9`` (the model is float64 end to end, so float32 rounding anywhere shows).

The first tests check the reference itself on numbers computed by hand, so that a failure of the
model-based test can be blamed on the library rather than on the reference.
"""

from __future__ import annotations

import csv
import dataclasses
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
import torchmetrics
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.loggers import CSVLogger
from reference import EarlyStop, Expected, Loop, Reference, Row, Step, Weight
from torch import nn
from torch.utils.data import DataLoader, Dataset

import lightning_losses as ll
from lightning_losses import LossDictModule

REL = 1e-9
ABS = 1e-12  # only for values that are exactly 0 in exact arithmetic


def schedule(step: int) -> float:
    return 1 + 0.1 * step


# --------------------------------------------------------------------------------------------
# The reference on hand-computed numbers
# --------------------------------------------------------------------------------------------


def assert_rows(got: Sequence[Row], want: Sequence[Row]) -> None:
    """Same rows, labels and names, values equal up to the hand arithmetic's rounding."""
    assert [(r.step, r.epoch, sorted(r.values)) for r in got] == [
        (r.step, r.epoch, sorted(r.values)) for r in want
    ]
    for g, w in zip(got, want):
        assert dict(g.values) == pytest.approx(dict(w.values), rel=1e-12)


def train(epoch: int, b: int, values: dict[str, float], step: int, grad: set[str]) -> Step:
    return Step(values, frozenset(grad & set(values)), global_step=step, where=("train", epoch, b))


def test_reference_windows_epochs_weights_and_labels() -> None:
    """3 batches an epoch, 2 epochs, a write every 2 steps, ``aux`` on some batches only and an
    accuracy-like metric: windows cross the epoch boundary, an absent key writes nothing, the
    metric is never summed, epoch rows sit at the epoch's last step and the last partial window
    is written after them with the last batch's step and epoch."""
    ref = Reference({"aux": 0.5, "ma*": schedule})
    g = {"main", "aux"}
    values = [
        {"main": 1.0, "aux": 10.0, "acc": 0.5},
        {"main": 2.0},
        {"main": 3.0, "acc": 1.0},
        {"main": 4.0},
        {"main": 5.0, "aux": 20.0},
        {"main": 6.0},
        {"main": 7.0},
    ]
    steps = [train(i // 3, i % 3, v, i, g) for i, v in enumerate(values)]
    got = ref.fit(steps, Loop(batches_per_epoch=3, log_every_n_steps=2, max_epochs=3, max_steps=7))
    w = [1 + 0.1 * i for i in range(7)]  # schedule(step) for main, matched by "ma*"
    totals = [w[0] * 1 + 5.0, w[1] * 2, w[2] * 3, w[3] * 4, w[4] * 5 + 10.0, w[5] * 6, w[6] * 7]
    assert_rows(got.rows, [
        Row(1, 0, {"train/main": 1.5, "train/aux": 10.0, "train/acc": 0.5,
                   "train/loss": (totals[0] + totals[1]) / 2, "weight/main": (w[0] + w[1]) / 2,
                   "weight/aux": 0.5}),
        Row(2, 0, {"train/main_epoch": 2.0, "train/aux_epoch": 10.0, "train/acc_epoch": 0.75,
                   "train/loss_epoch": sum(totals[:3]) / 3}),
        Row(3, 1, {"train/main": 3.5, "train/acc": 1.0, "train/loss": (totals[2] + totals[3]) / 2,
                   "weight/main": (w[2] + w[3]) / 2}),
        Row(5, 1, {"train/main": 5.5, "train/aux": 20.0,
                   "train/loss": (totals[4] + totals[5]) / 2, "weight/main": (w[4] + w[5]) / 2,
                   "weight/aux": 0.5}),
        Row(5, 1, {"train/main_epoch": 5.0, "train/aux_epoch": 20.0,
                   "train/loss_epoch": sum(totals[3:6]) / 3}),
        Row(6, 2, {"train/main_epoch": 7.0, "train/loss_epoch": totals[6]}),
        Row(6, 2, {"train/main": 7.0, "train/loss": totals[6], "weight/main": w[6]}),
    ])  # fmt: skip
    assert got.callback["train/main"] == 7.0  # the epoch mean; the last window is not a monitor


def test_reference_accumulation_validation_and_a_stop() -> None:
    """A scalar return logs only the weighted ``train/loss``; with ``accumulate_grad_batches=2``
    and 3 batches an epoch the optimizer steps after batches 1 and 2; validation runs after the
    last batch at its step, follows training's verdict, is weighted by batch size, keeps its
    loaders apart and ignores the sanity check; a stop asked after batch 0 of epoch 1 (an
    accumulating batch) validates and writes the window at the step that batch had."""
    ref = Reference({"loss": 2.0})
    lone = {"loss"}

    def val(loader: int, b: int, v: dict[str, float], size: int) -> Step:
        return Step(
            v, batch_size=size, dataloader_idx=loader, training=False, where=("val", loader, b)
        )

    steps = [
        val(0, 0, {"loss": 100.0}, 4),
        val(1, 0, {"loss": 100.0}, 4),
        train(0, 0, {"loss": 1.0}, 0, lone),
        train(0, 1, {"loss": 3.0}, 0, lone),
        train(0, 2, {"loss": 5.0}, 1, lone),
        val(0, 0, {"loss": 1.0, "acc": 0.5}, 3),
        val(0, 1, {"loss": 2.0}, 1),
        val(1, 0, {"loss": 10.0, "acc": 1.0}, 2),
        train(1, 0, {"loss": 7.0}, 2, lone),
        val(0, 0, {"loss": 1.0}, 3),
        val(0, 1, {"loss": 1.0}, 1),
        val(1, 0, {"loss": 1.0}, 2),
    ]
    loop = Loop(
        batches_per_epoch=3, accumulate_grad_batches=2, log_every_n_steps=1, max_epochs=2,
        stop_after_batches=4, val_batches=(2, 1), num_sanity_val_steps=1,
    )  # fmt: skip
    got = ref.fit(steps, loop)
    assert_rows(got.rows, [
        Row(0, 0, {"train/loss": 4.0, "weight/loss": 2.0}),
        Row(1, 0, {"train/loss": 10.0, "weight/loss": 2.0}),
        Row(1, 0, {"val/loss/dataloader_idx_0": (3 * 2.0 + 1 * 4.0) / 4,
                   "val/acc/dataloader_idx_0": 0.5, "val/loss/dataloader_idx_1": 20.0,
                   "val/acc/dataloader_idx_1": 1.0}),
        Row(1, 0, {"train/loss_epoch": 6.0}),
        Row(2, 1, {"val/loss/dataloader_idx_0": 2.0, "val/loss/dataloader_idx_1": 2.0}),
        Row(1, 1, {"train/loss_epoch": 14.0}),  # no batch stepped in epoch 1
        Row(2, 1, {"train/loss": 14.0, "weight/loss": 2.0}),
    ])  # fmt: skip
    with pytest.raises(AssertionError, match="predicted batch"):
        ref.fit(steps[:-1], loop)


def test_reference_evaluation_before_and_after_training() -> None:
    """Before any training step every scalar but an added metric is a term (so ``acc`` is summed
    into ``val/loss``, ``frac`` is not); after training, names follow training's verdict: ``acc``
    is a metric and ``late``, never a term in training, is a metric too. Each call starts from
    empty means; the row has the trainer's step and epoch."""
    ref = Reference({"main": 0.5})
    frac = frozenset({"frac"})
    batches = [
        Step({"main": 2.0, "acc": 1.0, "frac": 0.0}, batch_size=3, training=False,
             where=("val", 0, 0), added_metrics=frac),
        Step({"main": 4.0, "acc": 0.0, "late": 7.0}, batch_size=1, training=False,
             where=("val", 0, 1)),
    ]  # fmt: skip
    before = ref.evaluate("val", batches, (2,))
    assert before.returned == [
        {
            "val/main": 2.5,
            "val/acc": 0.75,
            "val/frac": 0.0,
            "val/loss": (3 * 2.0 + 1 * 9.0) / 4,
            "val/late": 7.0,
        }
    ]
    ref.fit([train(0, 0, {"main": 1.0, "acc": 1.0}, 0, {"main"})], Loop(batches_per_epoch=1))
    test = [Step(s.values, batch_size=s.batch_size, training=False, where=("test", 0, i),
                 added_metrics=s.added_metrics) for i, s in enumerate(batches)]  # fmt: skip
    after = ref.evaluate("test", test, (2,), step=3, epoch=1)
    assert after.returned == [
        {
            "test/main": 2.5,
            "test/acc": 0.75,
            "test/frac": 0.0,
            "test/loss": (3 * 1.0 + 1 * 2.0) / 4,
            "test/late": 7.0,
        }
    ]
    assert after.rows == [Row(3, 1, after.returned[0])]


def test_reference_early_stopping() -> None:
    """EarlyStopping(patience=0) on ``val/loss`` checked at validation end (validation twice an
    epoch): the second run does not improve, training stops after that batch."""
    ref = Reference()
    g = {"main"}

    def val(n: int, v: float) -> Step:
        return Step({"main": v}, training=False, where=("val", 0, 0))

    steps = [train(0, 0, {"main": 1.0}, 0, g), val(0, 3.0), train(0, 1, {"main": 2.0}, 1, g),
             val(0, 4.0)]  # fmt: skip
    loop = Loop(
        batches_per_epoch=4, log_every_n_steps=10, max_epochs=2, val_batches=(1,),
        val_check_batch=1, val_check_interval_is_one=False,
        early_stopping=EarlyStop("val/loss", 0),
    )  # fmt: skip
    got = ref.fit(steps, loop)
    assert [(r.step, r.epoch) for r in got.rows] == [(0, 0), (1, 0), (1, 0), (1, 0)]
    assert got.rows[-1].values == {"train/main": 1.5, "train/loss": 1.5}


# --------------------------------------------------------------------------------------------
# The model, its data and the recording callbacks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One drawn experiment. See :func:`configs` for the ranges and why."""

    seed: int
    n_train: int
    train_batch_size: int
    limit_train_batches: int | float | None
    accumulate_grad_batches: int
    log_every_n_steps: int
    max_epochs: int
    max_steps: int
    stop_after_batches: int | None
    val_sizes: tuple[int, ...]
    val_batch_sizes: tuple[int, ...]
    limit_val_batches: int | float | None
    val_check_interval: float | int
    num_sanity_val_steps: int
    form: str  # "scalar" | "dict" | "loss_dict"
    nested: bool
    aux_every: int
    metrics: tuple[str, ...]
    passthrough: bool
    weights: tuple[tuple[str, str], ...]  # (name or pattern, "0.5" | "1.0" | ... | "schedule")
    before_fit: tuple[str, ...]
    after_fit: tuple[str, ...]
    reuse_fit_trainer: bool
    detach_aux: bool = False  # aux without gradient on some batches: a term stays a term
    fit_twice: bool = False  # fit again after everything else, on a fresh Trainer
    none_batches: bool = False  # forward returns None on some batches
    wrap: str | None = None  # None: a subclass; else the wrapped model's call=
    dict_batches: bool = False
    added: bool = False  # add_loss("reg") and add_metric("frac") from inside the model
    loss_keys: str | None = None  # None | "names" | "globs" | "callable"
    check_val_every_n_epoch: int = 1
    early_stopping: tuple[int, bool | None] | None = None  # (patience, check_on_train_epoch_end)
    weighting: float | None = None  # DynamicWeightAverage(terms, temperature) (form "dict")
    routes: tuple[int, int] | None = None  # per-key optimizers; (0, 0): joint, else frequencies
    metric: bool = False  # metrics={"m0": mean of the first logit over evaluation samples}
    sequential: bool = False  # route_mode="sequential" (joint routes, no accumulation)

    def batches(self, n: int, batch_size: int, limit: int | float | None) -> int:
        full = math.ceil(n / batch_size)
        if limit is None:
            return full
        return min(full, limit) if isinstance(limit, int) else int(full * limit)

    @property
    def batches_per_epoch(self) -> int:
        return self.batches(self.n_train, self.train_batch_size, self.limit_train_batches)

    @property
    def val_batches(self) -> tuple[int, ...]:
        return tuple(
            self.batches(n, b, self.limit_val_batches)
            for n, b in zip(self.val_sizes, self.val_batch_sizes)
        )

    def terms(self) -> list[str]:
        return {
            "scalar": ["loss"],
            "loss_dict": ["loss"],
            "total": ["loss"],
            "dict": ["main", "extra/aux" if self.nested else "aux"],
        }[self.form] + (["reg"] if self.added else [])

    def reference(self) -> Reference:
        return Reference(
            self.loss_weights(),
            self.selection()[1],
            all_terms=self.terms() if self.weighting is not None else None,
            total_key=self.form == "total",
            dwa=(self.terms(), self.weighting) if self.weighting is not None else None,
            metric="m0" if self.metric else None,
        )

    def loss_weights(self) -> dict[str, Weight]:
        return {k: schedule if w == "schedule" else float(w) for k, w in self.weights}

    def selection(self) -> Any:
        """``loss_keys`` for the module, and the same choice as a plain predicate."""
        names = self.terms()
        if self.loss_keys is None:
            return None, None
        if self.loss_keys == "names":
            return list(names), lambda n: n in names
        if self.loss_keys == "globs":
            globs = [GLOBS[n] for n in names]
            return globs, lambda n: n in names
        return select_terms, lambda n: n in names

    def loop(self) -> Loop:
        per_epoch = self.batches_per_epoch
        interval = self.val_check_interval
        check = interval if isinstance(interval, int) else max(1, int(per_epoch * interval))
        early = None
        if self.early_stopping is not None:
            monitor = "val/loss" + ("/dataloader_idx_0" if len(self.val_sizes) > 1 else "")
            early = EarlyStop(monitor, *self.early_stopping)
        return Loop(
            batches_per_epoch=per_epoch,
            accumulate_grad_batches=self.accumulate_grad_batches,
            log_every_n_steps=self.log_every_n_steps,
            max_epochs=self.max_epochs,
            max_steps=self.max_steps,
            stop_after_batches=self.stop_after_batches,
            val_batches=self.val_batches,
            val_check_batch=check,
            check_val_every_n_epoch=self.check_val_every_n_epoch,
            # (EarlyStopping compares with ==, so an int 1 counts as 1.0 too)
            val_check_interval_is_one=interval == 1.0,
            num_sanity_val_steps=self.num_sanity_val_steps,
            early_stopping=early,
        )


GLOBS = {"main": "ma*", "aux": "*aux", "extra/aux": "extra/*", "reg": "re?", "loss": "lo*"}


def select_terms(name: str) -> bool:
    """``loss_keys`` as a callable (module level: hyperparameters record it by reference)."""
    return name in {"main", "aux", "extra/aux", "reg", "loss"}


class Recording:
    """Where the loops are (set by :class:`Recorder` before each batch) and what ran there."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.where: tuple[str, int, int] = ("train", 0, 0)
        self.global_step = 0
        self.training = True


class Net(nn.Module):
    """Linear 4->3 in float64 returning what ``config.form`` asks; records every value.

    Which optional entries a batch returns depends only on the sum of its sample ids, so that
    the presence pattern is deterministic, differs between batches and repeats across epochs.
    """

    def __init__(self, config: Config, recording: Recording) -> None:
        super().__init__()
        torch.manual_seed(config.seed)
        self.net = nn.Linear(4, 3, dtype=torch.float64)
        self.config = config
        self.recording = recording

    def losses(self, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor) -> Any:
        c = self.config
        logits = self.net(x)
        s = int(ids.sum())
        main = F.cross_entropy(logits, y)
        added: dict[str, torch.Tensor] = {}
        if c.added and s % 3 != 2:
            added["reg"] = 0.01 * self.net.weight.pow(2).sum()
            ll.add_loss("reg", added["reg"])
        if c.added and s % 2 == 1:
            added["frac"] = (logits > 0).double().mean()
            ll.add_metric("frac", added["frac"])
        if c.none_batches and s % 4 == 3:
            out = None  # nothing to learn from this batch: it logs nothing, counts nowhere
        elif c.form == "scalar":
            out = main
        elif c.form == "total":  # a HuggingFace-like output whose "tot" already is the total
            aux = logits.pow(2).mean()
            out = {"tot": main + 0.5 * aux, "ce": main}
            if s % c.aux_every == 0:
                out["aux"] = aux
            if "acc" in c.metrics and s % 2 == 0:
                out["acc"] = (logits.argmax(-1) == y).double().mean()
            if c.passthrough or (c.metric and not r_training(self)):
                out["logits"] = logits
        else:
            out = {"loss" if c.form == "loss_dict" else "main": main}
            if c.form == "dict" and s % c.aux_every == 0:
                aux = logits.pow(2).mean()
                if c.detach_aux and s % 3 == 2:
                    aux = aux.detach()  # a term without gradient: summed if it ever was a term
                out.update({"extra": {"aux": aux}} if c.nested else {"aux": aux})
            if "acc" in c.metrics and s % 2 == 0:
                out["acc"] = (logits.argmax(-1) == y).double().mean()
            if "det" in c.metrics and s % 3 != 1:
                out["det"] = 0.5 * main.detach() + 1
            if c.passthrough or (c.metric and not r_training(self)):
                out["logits"] = logits  # not a scalar: passed through, never logged
        samples = ()
        if c.metric and not r_training(self):
            samples = tuple(float(v) for v in logits[:, 0].detach())
        self.record(out, added, len(ids), samples)
        return out

    def record(
        self,
        out: Any,
        added: dict[str, torch.Tensor],
        batch_size: int,
        samples: tuple[float, ...] = (),
    ) -> None:
        r = self.recording
        flat = flatten({} if out is None else out if isinstance(out, dict) else {"loss": out})
        if "tot" in flat:  # total_key="tot": the library logs the model's total as "loss"
            flat["loss"] = flat.pop("tot")
        flat.update(added)
        r.steps.append(
            Step(
                values={k: float(v.detach()) for k, v in flat.items()},
                requires_grad=frozenset(k for k, v in flat.items() if v.requires_grad),
                batch_size=batch_size,
                global_step=r.global_step,
                dataloader_idx=r.where[1] if r.where[0] != "train" else 0,
                training=r.training,
                where=r.where,
                added_metrics=frozenset({"frac"} & set(added)),
                samples=samples,
            )
        )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:  # call="keyword" (or "auto" with a dict batch)
            return self.losses(kwargs["x"], kwargs["y"], kwargs["ids"])
        if len(args) == 3:  # call="positional" (or "auto" with a tuple batch)
            return self.losses(*args)
        return self.losses(*unpack(args[0]))  # call="batch"


def r_training(net: Net) -> bool:
    return net.recording.training


def first_logit(predictions: Any, batch: Any) -> tuple[torch.Tensor]:
    """``metric_inputs``: what the ``m0`` metric averages (module level: recorded by name)."""
    return (predictions["logits"][:, 0],)


class SampleMean(torchmetrics.Metric):
    """The mean over samples of what it is updated with, in float64 (torchmetrics' MeanMetric
    casts its inputs to the metric's dtype, which is float32 again once the module moved)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor) -> None:
        self.total += values.double().sum()
        self.count += values.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.count


class BatchNet(Net):
    """A wrapped model whose forward takes the whole batch (``call="auto"`` passes it whole)."""

    def forward(self, batch: Any) -> Any:  # type: ignore[override]
        return self.losses(*unpack(batch))


def unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if isinstance(batch, dict):
        return batch["x"], batch["y"], batch["ids"]
    return tuple(batch)  # type: ignore[return-value]


def call_net(model: Net, batch: Any) -> Any:
    """``call=`` as a callable ``(model, batch) -> output``."""
    return model.losses(*unpack(batch))


class CountingSGD(torch.optim.SGD):
    """SGD that counts its steps (a route's optimizer)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steps = 0

    def step(self, closure: Any = None) -> Any:
        self.steps += 1
        return super().step(closure)


class Recorded(LossDictModule):
    """Subclass mode: ``forward(batch)`` of a LossDictModule around :class:`Net`; with
    ``config.routes``, ``main`` and the total on optimizers of their own, each with a
    scheduler stepping every optimizer step, joint or taking turns."""

    def __init__(self, config: Config, recording: Recording, **options: Any) -> None:
        super().__init__(**options)
        self.inner = Net(config, recording)
        self.config = config
        self.route_optimizers: dict[str, CountingSGD] = {}
        self.schedulers: dict[str, Any] = {}

    def forward(self, batch: Any) -> Any:
        return self.inner.losses(*unpack(batch))

    def configure_optimizers(self) -> Any:
        if self.config.routes is None:
            return super().configure_optimizers()
        routes: dict[str, Any] = {}
        for (route, parameter), frequency in zip(
            (("main", self.inner.net.weight), ("loss", self.inner.net.bias)), self.config.routes
        ):
            optimizer = self.route_optimizers[route] = CountingSGD([parameter], lr=0.1)
            scheduler = self.schedulers[route] = torch.optim.lr_scheduler.StepLR(optimizer, 1)
            routes[route] = {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
            }
            if frequency:
                routes[route]["frequency"] = frequency
        return routes

    def step_counts(self) -> dict[str, tuple[int, int]]:
        """Each route's optimizer steps and scheduler steps."""
        return {
            route: (optimizer.steps, self.schedulers[route].last_epoch)
            for route, optimizer in self.route_optimizers.items()
        }


def make_module(c: Config, recording: Recording) -> LossDictModule:
    loss_keys, _ = c.selection()
    options: dict[str, Any] = dict(
        loss_weights=c.loss_weights(),
        loss_keys=loss_keys,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    )
    if c.form == "total":
        options["total_key"] = "tot"
    if c.sequential:
        options["route_mode"] = "sequential"
    if c.metric:
        options.update(metrics={"m0": SampleMean()}, metric_inputs=first_logit)
    if c.weighting is not None:
        from lightning_losses.weighting import DynamicWeightAverage

        options["weighting"] = DynamicWeightAverage(c.terms(), temperature=c.weighting)
    if c.wrap is None:
        return Recorded(c, recording, **options)
    call: Any = call_net if c.wrap == "callable" else c.wrap
    net = BatchNet(c, recording) if c.wrap == "auto-whole" else Net(c, recording)
    return LossDictModule(net, call="auto" if c.wrap == "auto-whole" else call, **options)


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
    """Tells the recording which batch the loops run next (``forward`` cannot know)."""

    def __init__(self, recording: Recording) -> None:
        self.r = recording

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, i: int) -> None:
        self.r.where = ("train", trainer.current_epoch, i)
        self.r.global_step, self.r.training = trainer.global_step, True

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: Any, batch: Any, i: int, loader: int = 0
    ) -> None:
        self.r.where, self.r.training = ("val", loader, i), False
        self.r.global_step = trainer.global_step

    def on_test_batch_start(
        self, trainer: L.Trainer, pl_module: Any, batch: Any, i: int, loader: int = 0
    ) -> None:
        self.r.where, self.r.training = ("test", loader, i), False
        self.r.global_step = trainer.global_step


class StopAfter(Callback):
    """Sets ``trainer.should_stop`` after the given number of training batches (as Lightning's
    Timer does): the contract says the last window is written however training stops."""

    def __init__(self, batches: int) -> None:
        self.batches, self.seen = batches, 0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.seen += 1
        if self.seen == self.batches:
            trainer.should_stop = True


class Samples(Dataset):
    def __init__(self, n: int, first_id: int, seed: int, as_dict: bool) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g, dtype=torch.float64)
        self.y = torch.randint(0, 3, (n,), generator=g)
        self.ids = torch.arange(first_id, first_id + n)
        self.as_dict = as_dict

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Any:
        if self.as_dict:
            return {"x": self.x[i], "y": self.y[i], "ids": self.ids[i]}
        return self.x[i], self.y[i], self.ids[i]


def loader(c: Config, n: int, batch_size: int, first_id: int, seed: int) -> DataLoader:
    return DataLoader(Samples(n, first_id, seed, c.dict_batches), batch_size=batch_size)


def val_loaders(c: Config) -> list[DataLoader]:
    return [
        loader(c, n, b, 100 * (i + 1), c.seed + i + 1)
        for i, (n, b) in enumerate(zip(c.val_sizes, c.val_batch_sizes))
    ]


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------


def read_csv(path: Path) -> list[Row]:
    """Every row in file order (``[]`` when no file)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [
            Row(
                int(row["step"]),
                int(row["epoch"]),
                {k: float(v) for k, v in row.items() if k not in ("step", "epoch") and v != ""},
            )
            for row in csv.DictReader(f)
        ]


def close(expected: float, got: float) -> bool:
    return math.isclose(expected, got, rel_tol=REL, abs_tol=ABS)


def compare_values(label: str, want: dict[str, float], got: dict[str, float]) -> list[str]:
    problems = []
    if set(want) != set(got):
        problems.append(
            f"{label}: missing {sorted(set(want) - set(got))}, "
            f"unexpected {sorted(set(got) - set(want))}"
        )
    for k in sorted(set(want) & set(got)):
        if not close(want[k], float(got[k])):
            problems.append(f"{label} {k}: expected {want[k]!r}, got {got[k]!r}")
    return problems


def compare_rows(label: str, expected: Expected, logged: list[Row]) -> list[str]:
    """Every difference between the rows a logger received and the ones the reference expects:
    their number and order, each row's ``step`` and ``epoch``, its names and values."""
    problems: list[str] = []
    want = expected.rows
    for i, (w, g) in enumerate(zip(want, logged)):
        if (w.step, w.epoch) != (g.step, g.epoch):
            problems.append(
                f"{label} row {i} ({sorted(w.values)[:3]}...): step/epoch {g.step}/{g.epoch}, "
                f"expected {w.step}/{w.epoch}"
            )
        problems += compare_values(f"{label} row {i} (step {g.step})", dict(w.values), g.values)
    if len(want) != len(logged):
        problems.append(
            f"{label}: {len(logged)} rows written, expected {len(want)}; first rows beyond: "
            f"expected {want[len(logged) :][:2]}, got {logged[len(want) :][:2]}"
        )
    return problems


def compare_callback_metrics(label: str, want: dict[str, float], trainer: L.Trainer) -> list[str]:
    ours = {
        k: v
        for k, v in trainer.callback_metrics.items()
        if k.split("/", 1)[0] in ("train", "val", "weight")
    }
    problems = [
        f"{label}: callback_metrics[{k!r}] is {v.dtype}, expected torch.float64"
        for k, v in ours.items()
        if v.dtype != torch.float64
    ]
    return problems + compare_values(f"{label} callback_metrics", want, ours)


# --------------------------------------------------------------------------------------------
# One experiment
# --------------------------------------------------------------------------------------------


def trainer_for(c: Config, r: Recording, root: Path, name: str, **kwargs: Any) -> L.Trainer:
    options: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(root, name=name, version=0),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=c.limit_val_batches,
        limit_test_batches=c.limit_val_batches,
        callbacks=[Recorder(r)],
    )
    options.update(kwargs)
    return L.Trainer(**options)


def metrics_csv(root: Path, name: str) -> Path:
    return root / name / "version_0" / "metrics.csv"


def route_steps(c: Config, steps: Sequence[Step]) -> dict[str, tuple[int, int]]:
    """Each route's (optimizer, scheduler) steps in one fit: at every optimizer step of the fit
    (the last batch of an accumulation group or of an epoch) whose batch had something to learn
    (a batch that returned None steps nothing), every route, or with turns the route whose turn
    ``global_step`` is (``frequency`` consecutive steps each, in the order given, API.md §8); a
    scheduler steps with its own route's optimizer."""
    assert c.routes is not None
    out = {"main": 0, "loss": 0}
    cycle = sum(c.routes)
    for s in steps:
        b = s.where[2]
        stepping = (b + 1) % c.accumulate_grad_batches == 0 or b == c.batches_per_epoch - 1
        if s.where[0] != "train" or not stepping or not s.values:
            continue
        for route, first in (("main", True), ("loss", False)):
            if cycle == 0 or (s.global_step % cycle < c.routes[0]) == first:
                out[route] += 1
    return {r: (n, n) for r, n in out.items()}


def merge_passes(steps: Sequence[Step]) -> list[Step]:
    """``route_mode="sequential"`` runs forward once per route (``main``, then the total's
    route ``loss``, which owns every other term): a batch's values are each term from its own
    route's pass and every metric from the first pass."""
    merged: list[Step] = []
    terms: set[str] = set()  # names that carried a gradient in training so far
    i = 0
    while i < len(steps):
        group = [steps[i]]
        while i + len(group) < len(steps) and steps[i + len(group)].where == steps[i].where:
            group.append(steps[i + len(group)])
        i += len(group)
        first, last = group[0], group[-1]
        if len(group) == 1:
            merged.append(first)
            continue
        terms |= first.requires_grad | last.requires_grad
        values = {k: v for k, v in first.values.items() if k not in terms or k == "main"}
        values.update({k: v for k, v in last.values.items() if k in terms and k != "main"})
        grad = (first.requires_grad & {"main"}) | (last.requires_grad - {"main"})
        merged.append(dataclasses.replace(first, values=values, requires_grad=frozenset(grad)))
    return merged


def run_experiment(c: Config, root: Path) -> list[str]:
    """Runs every call of ``c`` on one module; returns every difference found."""
    recording = Recording()
    model = make_module(c, recording)
    ref = c.reference()
    loaders = val_loaders(c)
    problems: list[str] = []

    def evaluate(stage: str, trainer: L.Trainer, label: str, step: int, epoch: int) -> Expected:
        recording.steps = []
        call = trainer.validate if stage == "val" else trainer.test
        returned = call(model, loaders, verbose=False)
        expected = ref.evaluate(stage, recording.steps, c.val_batches, step=step, epoch=epoch)
        assert expected.returned is not None
        if len(returned) != len(expected.returned):
            problems.append(f"{label}: {len(returned)} dicts returned")
        for i, (w, g) in enumerate(zip(expected.returned, returned)):
            problems.extend(compare_values(f"{label} returned {i}", w, g))
        return expected

    for i, stage in enumerate(c.before_fit):
        label = f"{stage} before fit"
        expected = evaluate(stage, trainer_for(c, recording, root, f"pre{i}"), label, 0, 0)
        problems.extend(compare_rows(label, expected, read_csv(metrics_csv(root, f"pre{i}"))))

    def fit(name: str) -> tuple[L.Trainer, Expected]:
        callbacks: list[Callback] = [Recorder(recording)]
        if c.stop_after_batches:
            callbacks.append(StopAfter(c.stop_after_batches))
        if c.early_stopping is not None:
            patience, at_epoch_end = c.early_stopping
            callbacks.append(
                EarlyStopping(
                    c.loop().early_stopping.monitor,  # type: ignore[union-attr]
                    patience=patience,
                    strict=False,
                    check_on_train_epoch_end=at_epoch_end,
                )
            )
        trainer = trainer_for(
            c,
            recording,
            root,
            name,
            max_epochs=c.max_epochs,
            max_steps=c.max_steps,
            limit_train_batches=c.limit_train_batches,
            accumulate_grad_batches=c.accumulate_grad_batches,
            log_every_n_steps=c.log_every_n_steps,
            val_check_interval=c.val_check_interval,
            check_val_every_n_epoch=c.check_val_every_n_epoch,
            num_sanity_val_steps=c.num_sanity_val_steps,
            callbacks=callbacks,
        )
        recording.steps = []
        train_loader = loader(c, c.n_train, c.train_batch_size, 0, c.seed)
        trainer.fit(model, train_loader, loaders)
        steps = merge_passes(recording.steps) if c.sequential else recording.steps
        expected = ref.fit(steps, c.loop())
        problems.extend(compare_callback_metrics(name, expected.callback, trainer))
        if isinstance(model, Recorded) and c.routes is not None:
            # (each fit configures fresh optimizers and schedulers)
            want, got = route_steps(c, steps), model.step_counts()
            if got != want:
                problems.append(f"{name}: (optimizer, scheduler) steps {got}, expected {want}")
        return trainer, expected

    fit_trainer, fit_expected = fit("fit")
    stepped, epochs = ref.stepped, ref.epochs_run

    for i, stage in enumerate(c.after_fit):
        label = f"{stage} after fit"
        if c.reuse_fit_trainer:  # same Trainer and logger: its rows follow fit's in one file
            fit_expected.extend(evaluate(stage, fit_trainer, label, stepped, epochs))
        else:
            trainer = trainer_for(c, recording, root, f"post{i}")
            expected = evaluate(stage, trainer, label, 0, 0)
            problems.extend(compare_rows(label, expected, read_csv(metrics_csv(root, f"post{i}"))))
    problems.extend(compare_rows("fit", fit_expected, read_csv(metrics_csv(root, "fit"))))
    if c.fit_twice:  # a second fit of the same module on a fresh Trainer: nothing carries over
        _, expected = fit("fit2")
        problems.extend(compare_rows("second fit", expected, read_csv(metrics_csv(root, "fit2"))))
    return problems


# --------------------------------------------------------------------------------------------
# The drawn configurations
# --------------------------------------------------------------------------------------------

WEIGHTS = ("1.0", "0.5", "2.5", "schedule")
WRAPS = ("auto", "auto-whole", "batch", "positional", "keyword", "callable")


@st.composite
def configs(draw: Callable[..., Any]) -> Config:
    """Small enough for CI (at most 10 batches an epoch, 3 epochs), varied enough to cross every
    boundary: uneven last batches, windows across epochs, accumulation ending on a partial group,
    validation mid-epoch and every other epoch, stops mid-window and mid-accumulation."""
    n_train = draw(st.integers(3, 10))
    train_batch_size = draw(st.integers(1, 4))
    full = math.ceil(n_train / train_batch_size)
    limit_train = draw(
        st.none()
        | st.integers(1, full)
        | st.sampled_from([0.5, 0.75]).filter(lambda f: int(full * f) >= 1)
    )
    per_epoch = (
        full
        if limit_train is None
        else min(full, limit_train)
        if isinstance(limit_train, int)
        else int(full * limit_train)
    )
    sequential = draw(st.integers(0, 3)) == 0  # (if routes are drawn: no accumulation then)
    accumulate = 1 if sequential else draw(st.integers(1, 3))
    max_epochs = draw(st.integers(1, 3))
    steps_per_epoch = math.ceil(per_epoch / accumulate)
    max_steps = draw(st.just(-1) | st.integers(1, steps_per_epoch * max_epochs))
    stop = draw(st.none() | st.integers(1, per_epoch * max_epochs))
    n_loaders = draw(st.integers(1, 2))
    val_sizes = tuple(draw(st.integers(2, 7)) for _ in range(n_loaders))
    val_batch_sizes = tuple(draw(st.integers(1, 3)) for _ in range(n_loaders))
    smallest = min(math.ceil(n / b) for n, b in zip(val_sizes, val_batch_sizes))
    limit_val = draw(
        st.none() | st.integers(1, 3) | st.just(0.5).filter(lambda f: int(smallest * f) >= 1)
    )
    form = draw(st.sampled_from(["scalar", "dict", "loss_dict", "total"]))
    nested = form == "dict" and draw(st.booleans())
    calls = st.lists(st.sampled_from(["validate", "test"]), max_size=2).map(tuple)
    before_fit = draw(calls)
    loss_keys = (
        draw(st.none() | st.sampled_from(["names", "globs", "callable"]))
        if form == "dict"
        else None
    )
    # {"loss": x, "acc": a} before any training would make acc a term beside a term named
    # "loss", whose name the total already has: the contract does not say what to log then.
    metrics_allowed = form != "scalar" and not (form == "loss_dict" and before_fit)
    metrics = draw(st.sets(st.sampled_from(["acc", "det"]))) if metrics_allowed else set()
    added = form == "dict" and draw(st.booleans())
    routed = form == "dict" and draw(st.booleans())
    routes = (
        (0, 0)
        if routed and sequential
        else draw(st.sampled_from([(0, 0), (1, 1), (2, 1), (1, 3)]))
        if routed
        else None
    )  # joint, or turns of these frequencies
    terms = {
        "scalar": ["loss"],
        "loss_dict": ["loss"],
        "total": ["loss"],
        "dict": ["main", "extra/aux" if nested else "aux"],
    }[form]
    terms += ["reg"] if added else []
    # a weight on "acc" applies only where acc is a term (validate/test before any training)
    weighted = terms + (["acc"] if "acc" in metrics and loss_keys is None else [])
    weights = []
    for t in weighted if form != "total" else []:
        w = draw(st.none() | st.sampled_from(WEIGHTS))
        if w is not None:
            glob = t != "acc" and form == "dict" and draw(st.booleans())
            weights.append((GLOBS[t] if glob else t, w))
    wrap = None if routes else draw(st.none() | st.sampled_from(WRAPS))
    weighting = (
        draw(st.none() | st.sampled_from([1.0, 2.0])) if form == "dict" and not routes else None
    )
    dict_batches = draw(st.booleans())
    if wrap == "positional":
        dict_batches = False
    if wrap == "keyword":
        dict_batches = True
    # (None beside add_metric alone would be a step with metrics and no term: an error)
    none_batches = not added and draw(st.booleans())
    interval = draw(st.just(1.0) | st.sampled_from([0.25, 0.5]) | st.integers(1, per_epoch))
    early = draw(st.none() | st.tuples(st.integers(0, 1), st.sampled_from([None, False, True])))
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
        val_sizes=val_sizes,
        val_batch_sizes=val_batch_sizes,
        limit_val_batches=limit_val,
        val_check_interval=interval,
        num_sanity_val_steps=draw(st.sampled_from([0, 2])),
        form=form,
        nested=nested,
        aux_every=draw(st.sampled_from([1, 2, 5])),
        metrics=tuple(sorted(metrics)),
        passthrough=form != "scalar" and draw(st.booleans()),
        weights=tuple(weights),
        before_fit=tuple("val" if s == "validate" else "test" for s in before_fit),
        after_fit=tuple("val" if s == "validate" else "test" for s in draw(calls)),
        reuse_fit_trainer=draw(st.booleans()),
        detach_aux=form == "dict" and draw(st.booleans()),
        fit_twice=draw(st.booleans()),
        # (None beside add_metric alone would be a step with metrics and no term: an error)
        none_batches=none_batches,
        wrap=wrap,
        dict_batches=dict_batches,
        added=added,
        loss_keys=loss_keys,
        check_val_every_n_epoch=draw(st.integers(1, 2)),
        early_stopping=early,
        weighting=weighting,
        routes=routes,
        metric=form in ("dict", "total") and not none_batches and draw(st.booleans()),
        sequential=routes is not None and sequential,
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

WRAPPED = Config(  # wrap mode, dict batches, add_loss/add_metric, glob loss_keys and weights,
    # validation twice an epoch every other epoch, EarlyStopping at validation end
    seed=1,
    n_train=8,
    train_batch_size=2,
    limit_train_batches=0.75,
    accumulate_grad_batches=1,
    log_every_n_steps=2,
    max_epochs=3,
    max_steps=-1,
    stop_after_batches=None,
    val_sizes=(4, 5),
    val_batch_sizes=(2, 2),
    limit_val_batches=0.5,
    val_check_interval=0.5,
    num_sanity_val_steps=2,
    form="dict",
    nested=True,
    aux_every=2,
    metrics=("acc",),
    passthrough=True,
    weights=(("ma*", "schedule"), ("re?", "2.5")),
    before_fit=("val",),
    after_fit=("test",),
    reuse_fit_trainer=True,
    wrap="keyword",
    dict_batches=True,
    added=True,
    loss_keys="globs",
    check_val_every_n_epoch=2,
    early_stopping=(0, None),
    metric=True,
)
ROUTED = Config(  # per-key optimizers taking turns, accumulation, a stop mid-accumulation
    seed=2,
    n_train=10,
    train_batch_size=1,
    limit_train_batches=None,
    accumulate_grad_batches=2,
    log_every_n_steps=3,
    max_epochs=2,
    max_steps=-1,
    stop_after_batches=13,
    val_sizes=(3,),
    val_batch_sizes=(2,),
    limit_val_batches=None,
    val_check_interval=4,
    num_sanity_val_steps=0,
    form="dict",
    nested=False,
    aux_every=2,
    metrics=("det",),
    passthrough=False,
    weights=(("aux", "0.5"),),
    before_fit=(),
    after_fit=("val",),
    reuse_fit_trainer=True,
    routes=(2, 1),
)
WEIGHTED = Config(  # DynamicWeightAverage over 3 epochs (its weights move in the third), an
    # accuracy and an added metric under the default sanity check, validate() before training
    seed=3,
    n_train=6,
    train_batch_size=2,
    limit_train_batches=None,
    accumulate_grad_batches=1,
    log_every_n_steps=2,
    max_epochs=3,
    max_steps=-1,
    stop_after_batches=None,
    val_sizes=(4,),
    val_batch_sizes=(3,),
    limit_val_batches=None,
    val_check_interval=1.0,
    num_sanity_val_steps=2,
    form="dict",
    nested=False,
    aux_every=1,
    metrics=("acc",),
    passthrough=False,
    weights=(("aux", "0.5"),),
    before_fit=("val",),
    after_fit=(),
    reuse_fit_trainer=False,
    added=True,
    weighting=2.0,
    early_stopping=(1, True),
)
TOTAL_KEY = Config(  # total_key: the model's own total, its parts and an accuracy as metrics;
    # a torchmetrics metric on the eval-mode predictions
    seed=0,
    n_train=7,
    train_batch_size=2,
    limit_train_batches=None,
    accumulate_grad_batches=1,
    log_every_n_steps=3,
    max_epochs=2,
    max_steps=5,
    stop_after_batches=None,
    val_sizes=(3,),
    val_batch_sizes=(1,),
    limit_val_batches=None,
    val_check_interval=1.0,
    num_sanity_val_steps=2,
    form="total",
    nested=False,
    aux_every=2,
    metrics=("acc",),
    passthrough=True,
    weights=(),
    before_fit=("test",),
    after_fit=("val",),
    reuse_fit_trainer=True,
    wrap="auto",
    metric=True,
)

SEQUENTIAL = Config(  # route_mode="sequential": forward once per route, each term from its pass
    seed=1,
    n_train=7,
    train_batch_size=2,
    limit_train_batches=None,
    accumulate_grad_batches=1,
    log_every_n_steps=3,
    max_epochs=2,
    max_steps=-1,
    stop_after_batches=6,
    val_sizes=(3,),
    val_batch_sizes=(2,),
    limit_val_batches=None,
    val_check_interval=2,
    num_sanity_val_steps=0,
    form="dict",
    nested=False,
    aux_every=2,
    metrics=("acc", "det"),
    passthrough=False,
    weights=(("aux", "schedule"),),
    before_fit=(),
    after_fit=("test",),
    reuse_fit_trainer=True,
    added=True,
    routes=(0, 0),
    sequential=True,
)


@pytest.mark.filterwarnings("ignore")  # Lightning's advice on tiny loaders is not the subject
@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    # no shrinking: a failure prints its whole configuration, and shrinking runs Trainers
    # for minutes
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(config=configs())
@example(config=RICH)
@example(config=SCALAR)
@example(config=HUGGINGFACE)
@example(config=NEVER_TRAINED)
@example(config=WRAPPED)
@example(config=ROUTED)
@example(config=WEIGHTED)
@example(config=TOTAL_KEY)
@example(config=SEQUENTIAL)
def test_every_logged_value_matches_the_reference(config: Config) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            problems = run_experiment(config, Path(tmp))
        except AssertionError as error:
            raise AssertionError(f"{error}\nin {config}") from error
    shown = "\n".join(problems[:25])
    more = f"\n... and {len(problems) - 25} more" if len(problems) > 25 else ""
    assert not problems, (
        f"{len(problems)} differences from the reference:\n{shown}{more}\nin {config}"
    )
