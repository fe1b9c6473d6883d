"""Nothing cached or deferred changes what a user sees (API.md sections 1, 3 and 5, 0.4).

Each test is a case where a cache (a key set's fast plan) or a deferral (the non-finite check,
the progress bar's values, the epoch means) once changed what a user saw. Where a slow twin
exists, the test runs it beside: ``nonfinite="skip"`` takes the full path at every step and,
for finite values, changes nothing else.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import pytest
import torch
from conftest import MemoryLogger, make_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossDictModule
from lightning_losses.weighting import DynamicWeightAverage


def data(n: int = 48, batch_size: int = 4, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(n, 5, generator=g)), batch_size=batch_size)


class Scripted(LossDictModule):
    """Two heads on a trunk; ``script(step, a, b)`` returns what forward gives back at that
    training step (a and b carry gradients), so a test can change a key's kind mid-run."""

    def __init__(self, script: Any, **kwargs: Any) -> None:
        kwargs.setdefault("optimizer", lambda p: torch.optim.SGD(p, lr=0.1))
        super().__init__(**kwargs)
        torch.manual_seed(0)
        self.trunk, self.a, self.b = nn.Linear(5, 4), nn.Linear(4, 1), nn.Linear(4, 1)
        self.script = script
        self.calls = 0

    def forward(self, batch: Any) -> Any:
        (x,) = batch
        h = self.trunk(x).tanh()
        a, b = self.a(h).pow(2).mean(), self.b(h).abs().mean()
        if not self.training:
            return {"a": a, "b": b}
        out = self.script(self.calls, a, b)
        self.calls += 1
        return out


def fit(script: Any, steps: int = 10, every: int = 3, **kwargs: Any) -> tuple[Scripted, Any]:
    logger = MemoryLogger()
    model = Scripted(script, **kwargs)
    make_trainer(logger, max_steps=steps, log_every_n_steps=every).fit(model, data())
    return model, logger


def rows_without_skips(logger: MemoryLogger) -> list[tuple[int, dict[str, float]]]:
    return [
        (step, {k: v for k, v in row.items() if k != "train/skipped_steps"})
        for step, row in logger.rows
    ]


def assert_same_run(fast: tuple[Scripted, Any], slow: tuple[Scripted, Any]) -> None:
    """The default run equals its full-path twin: every logged cell and every parameter."""
    fast_rows, slow_rows = rows_without_skips(fast[1]), rows_without_skips(slow[1])
    assert [(step, sorted(row)) for step, row in fast_rows] == [
        (step, sorted(row)) for step, row in slow_rows
    ]
    for (step, row), (_, twin) in zip(fast_rows, slow_rows):
        assert row == pytest.approx(twin, rel=1e-6), step  # (float32 sums: 2 orders)
    for (name, p), q in zip(fast[0].named_parameters(), slow[0].parameters()):
        torch.testing.assert_close(p, q, msg=name)


# ---------- item 1: verdicts per step


def grad_less_zero_first(step: int, a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    # the first batch has no label for b: a grad-less zero, a metric on that step only
    return {"a": a, "b": torch.zeros(()) if step == 0 else b}


def test_a_head_whose_first_batch_had_no_label_trains_on_later_batches():
    fast = fit(grad_less_zero_first)
    slow = fit(grad_less_zero_first, nonfinite="skip")
    assert_same_run(fast, slow)
    torch.manual_seed(0)
    untouched = nn.Linear(4, 1)  # b's head as built, before any step
    assert not torch.equal(fast[0].b.weight, untouched.weight)
    # the total of each written window is the sum of the terms' means after step 0
    for _, row in fast[1].rows[1:]:
        if "train/loss" not in row:
            continue  # (the epoch's row)
        assert row["train/loss"] == pytest.approx(row["train/a"] + row["train/b"], rel=1e-6)


# ---------- item 2: an integer is a metric


def integer_at_step_4(step: int, a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    return {"a": a, "b": torch.tensor(3) if step == 4 else b}


def test_an_integer_under_a_terms_name_is_a_metric_on_that_step():
    fast = fit(integer_at_step_4, steps=6, every=6)
    slow = fit(integer_at_step_4, steps=6, every=6, nonfinite="skip")
    assert_same_run(fast, slow)
    (_, row), *_ = fast[1].rows
    # b is a term on 5 steps and a metric (3) on one: train/loss sums the terms only
    assert row["train/loss"] < 3.0


# ---------- item 3: the no-grad warning


def detached_from_step_3(step: int, a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    return {"a": a, "b": b.detach() if step >= 3 else b}


def test_a_term_that_stops_carrying_a_gradient_is_warned_about():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(detached_from_step_3, steps=5)
    assert any("loss term 'b' does not require grad" in str(w.message) for w in caught)


# ---------- item 4: errors on any step


BAD_VALUES = {
    "float": lambda a: 0.5,
    "None": lambda a: None,
    "str": lambda a: "high",
    "list": lambda a: [a],
    "mapping": lambda a: {"x": 1},
    "shape (1,)": lambda a: a.reshape(1),
    "int tensor": lambda a: torch.tensor(2),
}


def first_error(bad: Any, at_step: int) -> BaseException:
    def script(step: int, a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
        return {"a": bad(a) if step == at_step else a}

    with pytest.raises((TypeError, ValueError)) as error:
        fit(script, steps=at_step + 2)
    return error.value


@pytest.mark.parametrize("kind", list(BAD_VALUES))
def test_a_bad_value_is_the_same_error_on_the_first_and_a_later_step(kind):
    first, later = first_error(BAD_VALUES[kind], 0), first_error(BAD_VALUES[kind], 5)
    assert type(later) is type(first)
    assert str(later) == str(first)
    assert "'a" in str(later)  # the key ('a', or 'a/x' in a nested mapping)


# ---------- item 5: checkpoints stay finite


def nan_at_step_7(step: int, a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    return {"a": a * float("nan") if step == 7 else a, "b": b}


def test_no_checkpoint_is_written_between_a_nonfinite_step_and_the_raise(tmp_path):
    checkpoints = ModelCheckpoint(tmp_path, every_n_train_steps=5, save_last=True, save_top_k=-1)
    model = Scripted(nan_at_step_7)
    trainer = make_trainer(
        max_steps=40, callbacks=[checkpoints], enable_checkpointing=True, log_every_n_steps=50
    )
    with pytest.raises(FloatingPointError, match=r"'a' at step 7"):
        trainer.fit(model, data(n=200))
    saved = sorted(tmp_path.glob("*.ckpt"))
    assert saved, "the checkpoint of step 5 was written"
    for path in saved:
        state = torch.load(path, weights_only=True)
        assert state["global_step"] <= 7, path.name
        for name, tensor in state["state_dict"].items():
            assert torch.isfinite(tensor).all(), f"{path.name}: {name}"


# ---------- item 6: the bar's values


class BarReader(Callback):
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        self.seen.append(dict(trainer.progress_bar_metrics))


def test_progress_bar_values_are_floats_that_never_change(memory_logger):
    reader = BarReader()
    model = Scripted(lambda step, a, b: {"a": a, "b": b})
    trainer = make_trainer(
        memory_logger, max_steps=7, log_every_n_steps=3, callbacks=[reader],
        enable_progress_bar=True,
    )  # fmt: skip
    trainer.fit(model, data())
    kept = [seen["train/loss"] for seen in reader.seen]
    assert all(type(v) is float for v in kept)
    json.dumps(trainer.progress_bar_metrics)
    assert min(kept) <= max(kept) and math.isfinite(sum(kept) + 1)
    # the first step shows its own value; a write shows the window's mean, as logged
    logged = dict(memory_logger.series("train/loss"))
    assert kept[2] == logged[2] and kept[5] == logged[5]
    assert kept[3] == kept[4] == kept[2]  # unchanged between writes
    assert kept == [seen["train/loss"] for seen in reader.seen]  # read again: the same


# ---------- item 7: callbacks see this epoch


class EpochReader(Callback):
    def __init__(self) -> None:
        self.train: list[dict[str, float]] = []
        self.val: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        metrics = trainer.callback_metrics
        self.train.append({k: float(metrics[k]) for k in ("train/loss", "train/a_epoch")})

    def on_validation_epoch_end(self, trainer: Any, module: Any) -> None:
        self.val.append({"val/loss": float(trainer.callback_metrics["val/loss"])})


def test_callbacks_read_this_epochs_means(memory_logger):
    reader = EpochReader()
    model = Scripted(lambda step, a, b: {"a": a, "b": b})
    trainer = make_trainer(memory_logger, max_epochs=2, callbacks=[reader])
    trainer.fit(model, data(n=16), data(n=8))
    epoch_means = [v for _, v in memory_logger.series("train/a_epoch")]
    val = [v for _, v in memory_logger.series("val/loss")]
    assert [e["train/a_epoch"] for e in reader.train] == pytest.approx(epoch_means, rel=1e-12)
    assert [e["train/loss"] for e in reader.train] == pytest.approx(
        [v for _, v in memory_logger.series("train/loss_epoch")], rel=1e-12
    )
    assert [e["val/loss"] for e in reader.val] == pytest.approx(val, rel=1e-12)


# ---------- item 8: resume at an epoch's end


def test_resuming_from_a_checkpoint_of_an_epochs_last_batch_keeps_epochs_apart(tmp_path):
    def run(logger: MemoryLogger, epochs: int, ckpt_path: Any = None, dirpath: Any = None):
        callbacks = [ModelCheckpoint(dirpath, every_n_train_steps=4, save_top_k=-1)]
        model = Scripted(lambda step, a, b: {"a": a, "b": b})
        trainer = make_trainer(
            logger, max_epochs=epochs, log_every_n_steps=3, callbacks=callbacks,
            enable_checkpointing=True,
        )  # fmt: skip
        trainer.fit(model, data(n=16), ckpt_path=ckpt_path)

    whole, first, resumed = MemoryLogger(), MemoryLogger(), MemoryLogger()
    run(whole, 2, dirpath=tmp_path / "whole")
    run(first, 1, dirpath=tmp_path / "first")
    (last_batch,) = (tmp_path / "first").glob("*step=4.ckpt")  # saved on the last batch
    run(resumed, 2, ckpt_path=last_batch, dirpath=tmp_path / "resumed")
    # every row the uninterrupted run wrote after the checkpoint (of step 3, epoch 0's last
    # batch): epoch 0's own epoch row (its end came after the checkpoint), then epoch 1's
    for name in ("train/a_epoch", "train/loss_epoch", "train/a"):
        expected = [(step, v) for step, v in whole.series(name) if step >= 3]
        got = resumed.series(name)
        assert [step for step, _ in got] == [step for step, _ in expected], name
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-9), name


# ---------- item 9: routes before fit


class Routed(LossDictModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(5, 1), nn.Linear(5, 1)

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        (x,) = batch
        a, b = self.a(x).pow(2).mean(), self.b(x).pow(2).mean()
        return {"a": a, "b": b, "acc": (self.a(x) > 0).float().mean()}

    def configure_optimizers(self) -> Any:
        return {
            "a": torch.optim.SGD(self.a.parameters(), lr=0.1),
            "b": torch.optim.SGD(self.b.parameters(), lr=0.1),
        }


def test_route_names_decide_in_validate_before_fit():
    model = Routed()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (result,) = make_trainer().validate(model, data(n=8, batch_size=8))
    assert not [w for w in caught if "no training step has told" in str(w.message)]
    (x,) = next(iter(data(n=8, batch_size=8)))
    with torch.no_grad():
        out = model((x,))
    assert result["val/loss"] == pytest.approx(float(out["a"] + out["b"]), rel=1e-6)
    assert result["val/acc"] == pytest.approx(float(out["acc"]), rel=1e-6)


# ---------- item 10: a weighting's list wins


class Three(LossDictModule):
    def forward(self, batch: Any) -> dict[str, Any]:
        (x,) = batch
        y = self.net(x)
        return {
            "a": y[:, 0].pow(2).mean(),
            "b": y[:, 1].pow(2).mean(),
            "h": {"c": y[:, 2].pow(2).mean()},
            "m": (y[:, 0] > 0).float().mean(),
        }


def test_a_weightings_term_list_wins_over_a_pattern_that_merely_matches():
    model = Three(
        loss_weights={"a": 2.0, "[ab]": 1.0, "?": lambda step: 1.0},
        weighting=DynamicWeightAverage(["a", "b", "h/c"]),
    )
    model.net = nn.Linear(5, 3)
    (result,) = make_trainer().validate(model, data(n=8, batch_size=8))
    assert "val/m" in result  # a metric, not a term handed to the weighting
    assert set(result) >= {"val/a", "val/b", "val/h/c", "val/loss"}


class Counting(LossDictModule):
    """Values known from the step alone (a frozen-free zero keeps them exact)."""

    def __init__(self) -> None:
        super().__init__(optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, batch: Any) -> Any:
        return {"s": self.w * 0 + float(self.trainer.global_step)}


def labelled_rows(logger: MemoryLogger) -> list[tuple[int, dict[str, float]]]:
    return [(step, dict(row)) for step, row in logger.rows]


def test_resuming_from_the_runs_final_checkpoint_writes_what_the_run_wrote_after_it(tmp_path):
    """The process died right after the checkpoint of its last batch: the resumed fit has no
    batch to run, and writes the epoch's row and the last window with that batch's labels."""
    data = DataLoader(torch.zeros(7, 1), batch_size=1)

    def run(logger: MemoryLogger, **fit: Any) -> None:
        checkpoints = ModelCheckpoint(tmp_path, every_n_train_steps=7)
        trainer = make_trainer(
            logger, max_epochs=1, log_every_n_steps=3, callbacks=[checkpoints],
            enable_checkpointing=True,
        )  # fmt: skip
        trainer.fit(Counting(), data, **fit)

    whole, resumed = MemoryLogger(), MemoryLogger()
    run(whole)
    (last,) = tmp_path.glob("*step=7.ckpt")
    run(resumed, ckpt_path=last)
    after = [(step, row) for step, row in labelled_rows(whole) if step >= 6]
    assert labelled_rows(resumed) == after
    assert [step for step, _ in after] == [6, 6]  # the epoch's row, then the last window


def test_a_stop_between_epochs_labels_the_last_window_with_the_epoch_that_ran(memory_logger):
    class StopAtEpochStart(Callback):
        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            if trainer.current_epoch == 1:
                trainer.should_stop = True

    trainer = make_trainer(
        memory_logger, max_epochs=3, log_every_n_steps=2, callbacks=[StopAtEpochStart()]
    )
    trainer.fit(Counting(), DataLoader(torch.zeros(7, 1), batch_size=1))
    (step, last), *_ = [(s, r) for s, r in memory_logger.rows[::-1] if "train/s" in r]
    assert (step, last["epoch"]) == (6, 0)  # no batch of epoch 1 ran


def test_callbacks_see_the_sanity_checks_values_as_with_self_log():
    seen: list[dict[str, float]] = []

    class Reader(Callback):
        def on_validation_epoch_end(self, trainer: Any, module: Any) -> None:
            if trainer.sanity_checking:
                seen.append({k: float(v) for k, v in trainer.callback_metrics.items()})

    untrained = Scripted(lambda step, a, b: {}).eval()  # the same weights, before any step
    (x,) = next(iter(data(n=4, batch_size=4)))
    with torch.no_grad():
        out = untrained((x,))
    trainer = make_trainer(max_steps=1, num_sanity_val_steps=1, callbacks=[Reader()])
    trainer.fit(Scripted(lambda step, a, b: {"a": a, "b": b}), data(), data(n=4, batch_size=4))
    expected = {"val/a": out["a"], "val/b": out["b"], "val/loss": out["a"] + out["b"]}
    assert seen == [pytest.approx({k: float(v) for k, v in expected.items()}, rel=1e-6)]


def test_a_scheduler_and_a_monitor_on_train_loss_have_it_from_the_first_step(tmp_path):
    class Plateau(Scripted):
        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0)
            schedule = {"scheduler": plateau, "monitor": "train/loss", "interval": "step"}
            return {"optimizer": optimizer, "lr_scheduler": schedule}

    best = ModelCheckpoint(tmp_path, monitor="train/loss", every_n_train_steps=1, save_top_k=1)
    trainer = make_trainer(
        max_steps=3, log_every_n_steps=50, callbacks=[best], enable_checkpointing=True
    )  # no write before the run ends: the first step's values are what they read
    trainer.fit(Plateau(lambda step, a, b: {"a": a, "b": b}), data())
    assert best.best_model_path  # saved, scored on the first step's train/loss
    assert type(trainer.callback_metrics["train/loss"]) is torch.Tensor
