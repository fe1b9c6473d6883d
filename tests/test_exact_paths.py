"""Paths that logged wrong numbers in 0.1, each checked against values computed by hand.

One scalar or a lone ``loss`` key, accuracies beside losses, validate()/test() before fit, state
across fits, a callback stopping training, several loaders, detection batches, float64 values,
name collisions, growth, manual optimization, resuming with other routes.
"""

from __future__ import annotations

import csv
import glob
import statistics
import warnings
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import MemoryLogger, MultiTask, make_trainer, multitask_data
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossDictModule

X = torch.randn(24, 4, generator=torch.Generator().manual_seed(0))
Y = torch.randn(24, generator=torch.Generator().manual_seed(1))


def loader(batch_size: int = 8) -> DataLoader:
    return DataLoader(TensorDataset(X, Y), batch_size=batch_size)


def trainer(tmp_path, **kwargs: Any) -> L.Trainer:
    kwargs.setdefault("max_epochs", 1)
    kwargs.setdefault("log_every_n_steps", 1)
    return L.Trainer(
        logger=CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def rows(tmp_path) -> list[dict[str, float]]:
    """Every CSV row, with the cells it filled."""
    (path,) = sorted(glob.glob(str(tmp_path / "lightning_logs" / "*" / "metrics.csv")))[-1:]
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


def column(tmp_path, name: str) -> list[float]:
    return [row[name] for row in rows(tmp_path) if name in row]


class Regression(LossDictModule):
    """A linear regression; ``mode`` picks the return shape. Records what it returned."""

    def __init__(self, mode: str = "dict", **kwargs: Any) -> None:
        super().__init__(optimizer=lambda p: torch.optim.SGD(p, lr=0.05), **kwargs)
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 1)
        self.mode = mode
        self.train_values: list[dict[str, float]] = []
        self.eval_values: list[tuple[dict[str, float], int]] = []

    def forward(self, batch: Any) -> Any:
        x, y = batch
        prediction = self.layer(x).squeeze(-1)
        mse = F.mse_loss(prediction, y)
        if self.mode == "scalar":
            out: Any = mse
        elif self.mode == "loss_key":  # a HuggingFace-style output: loss plus logits
            out = {"loss": mse, "logits": prediction}
        else:
            out = {"mse": mse, "acc": ((prediction > 0) == (y > 0)).float().mean()}
        if self.mode == "dict":
            values = {"mse": float(mse.detach()), "acc": float(out["acc"])}
        else:
            values = {"loss": float(mse.detach())}
        if self.training:
            self.train_values.append(values)
        else:
            self.eval_values.append((values, len(y)))
        return out


@pytest.mark.parametrize("mode", ["scalar", "loss_key"])
def test_one_scalar_logs_exactly_its_value_everywhere(tmp_path, mode):
    model = Regression(mode)
    fit = trainer(tmp_path, max_epochs=1, log_every_n_steps=1)
    fit.fit(model, loader(), loader())
    per_step = [v["loss"] for v in model.train_values]
    assert column(tmp_path, "train/loss") == pytest.approx(per_step, rel=1e-12)
    assert column(tmp_path, "train/loss_epoch") == pytest.approx([statistics.fmean(per_step)])
    val = [v["loss"] for v, _ in model.eval_values]
    assert column(tmp_path, "val/loss") == pytest.approx([statistics.fmean(val)], rel=1e-12)
    assert float(fit.callback_metrics["val/loss"]) == pytest.approx(statistics.fmean(val))
    (returned,) = fit.validate(model, loader(), verbose=False)
    assert returned["val/loss"] == pytest.approx(
        statistics.fmean(v["loss"] for v, _ in model.eval_values[-3:]), rel=1e-12
    )


def test_a_weighted_lone_loss_logs_the_weighted_total_and_its_weight(tmp_path):
    model = Regression("scalar", loss_weights={"loss": 2.0})
    trainer(tmp_path, max_steps=2).fit(model, loader())
    per_step = [v["loss"] for v in model.train_values]
    assert column(tmp_path, "train/loss") == pytest.approx([2 * v for v in per_step], rel=1e-12)
    assert column(tmp_path, "weight/loss") == [2.0, 2.0]


def test_a_pass_through_named_loss_never_replaces_the_total():
    class PassThrough(LossDictModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 1)

        def forward(self, batch: Any) -> Any:
            x, y = batch
            mse = F.mse_loss(self.layer(x).squeeze(-1), y)
            return {"mse": mse, "loss": mse.detach().reshape(1) * 100}

    module = PassThrough()
    out = module.training_step((X[:8], Y[:8]))
    assert isinstance(out, torch.Tensor) and out.requires_grad and out.dim() == 0
    x, y = X[:8], Y[:8]
    assert float(out) == pytest.approx(float(F.mse_loss(module.layer(x).squeeze(-1), y)))


def test_an_accuracy_beside_the_losses_is_a_metric_in_every_stage(tmp_path):
    model = Regression("dict")
    fit = trainer(tmp_path, max_epochs=1)
    fit.fit(model, loader(), loader())
    mse = [v["mse"] for v in model.train_values]
    assert column(tmp_path, "train/loss") == pytest.approx(mse, rel=1e-12)  # acc not summed
    assert column(tmp_path, "train/acc") == [v["acc"] for v in model.train_values]
    val = model.eval_values
    assert column(tmp_path, "val/loss") == pytest.approx(
        [sum(v["mse"] * n for v, n in val) / sum(n for _, n in val)], rel=1e-12
    )


@pytest.mark.parametrize("first", ["validate", "test"])
def test_evaluating_before_fit_leaves_the_next_fit_working_and_exact(tmp_path, first):
    model = Regression("scalar")
    getattr(trainer(tmp_path / "eval"), first)(model, loader(), verbose=False)
    fit = trainer(tmp_path / "fit", max_epochs=1)
    fit.fit(model, loader())
    assert column(tmp_path / "fit", "train/loss") == pytest.approx(
        [v["loss"] for v in model.train_values], rel=1e-12
    )


def test_before_any_training_evaluation_sums_every_value_and_warns(tmp_path):
    model = Regression("dict")
    with pytest.warns(UserWarning, match="no training step has told loss terms from metrics"):
        (result,) = trainer(tmp_path).validate(model, loader(), verbose=False)
    expected = sum((v["mse"] + v["acc"]) * n for v, n in model.eval_values) / 24
    # the total is the float32 sum the model computed, exact to float32
    assert result["val/loss"] == pytest.approx(expected, rel=1e-6)


def test_the_classification_travels_in_checkpoints(tmp_path):
    model = Regression("dict")
    fit = trainer(tmp_path, max_steps=2)
    fit.fit(model, loader())
    fit.save_checkpoint(tmp_path / "m.ckpt")
    loaded = Regression("dict")
    checkpoint = torch.load(tmp_path / "m.ckpt", weights_only=True)
    loaded.on_load_checkpoint(checkpoint)
    loaded.load_state_dict(checkpoint["state_dict"])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="no training step has told")
        (result,) = trainer(tmp_path / "v").validate(loaded, loader(), verbose=False)
    expected = sum(v["mse"] * n for v, n in loaded.eval_values) / 24
    assert result["val/loss"] == pytest.approx(expected, rel=1e-12)


class StopAfter(Callback):
    def __init__(self, batches: int) -> None:
        self.batches = batches

    def on_train_batch_end(self, trainer, *args: Any) -> None:
        if trainer.global_step >= self.batches:
            trainer.should_stop = True


def test_a_callback_stopping_training_still_writes_the_last_window(tmp_path):
    model = Regression("scalar")
    trainer(tmp_path, max_epochs=3, log_every_n_steps=2, callbacks=[StopAfter(5)]).fit(
        model, loader(4)
    )
    per_step = [v["loss"] for v in model.train_values]
    assert len(per_step) == 5
    expected = [statistics.fmean(per_step[0:2]), statistics.fmean(per_step[2:4]), per_step[4]]
    assert column(tmp_path, "train/loss") == pytest.approx(expected, rel=1e-12)


def test_nothing_leaks_from_an_interrupted_fit_into_the_next(tmp_path):
    class Boom(Callback):
        def on_train_batch_end(self, trainer, *args: Any) -> None:
            if trainer.global_step == 3:
                raise RuntimeError("boom")

    model = Regression("scalar")
    with pytest.raises(RuntimeError, match="boom"):
        trainer(tmp_path / "a", max_epochs=1, log_every_n_steps=50, callbacks=[Boom()]).fit(
            model, loader(4)
        )
    model.train_values.clear()
    trainer(tmp_path / "b", max_epochs=1, log_every_n_steps=50).fit(model, loader(4))
    per_step = [v["loss"] for v in model.train_values]
    assert column(tmp_path / "b", "train/loss") == pytest.approx([statistics.fmean(per_step)])
    assert column(tmp_path / "b", "train/loss_epoch") == pytest.approx([statistics.fmean(per_step)])


def test_a_second_fit_starts_from_empty_windows(tmp_path):
    model = Regression("scalar")
    trainer(tmp_path / "a", max_steps=3, log_every_n_steps=2).fit(model, loader(4))
    model.train_values.clear()
    trainer(tmp_path / "b", max_steps=2, log_every_n_steps=50).fit(model, loader(4))
    per_step = [v["loss"] for v in model.train_values]
    assert column(tmp_path / "b", "train/loss") == pytest.approx([statistics.fmean(per_step)])


def test_two_validation_loaders_are_kept_apart(tmp_path):
    model = Regression("scalar")
    small = DataLoader(TensorDataset(X[:8] * 3, Y[:8]), batch_size=4)
    results = trainer(tmp_path).validate(model, [loader(), small], verbose=False)
    first = [v["loss"] for v, _ in model.eval_values[:3]]
    second = [v["loss"] for v, _ in model.eval_values[3:]]
    assert results == [
        {"val/loss/dataloader_idx_0": pytest.approx(statistics.fmean(first), rel=1e-12)},
        {"val/loss/dataloader_idx_1": pytest.approx(statistics.fmean(second), rel=1e-12)},
    ]


def test_detection_batches_are_weighted_by_their_number_of_images(tmp_path):
    class Detector(LossDictModule):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, batch: Any) -> Any:
            images, targets = batch
            return {"box": self.scale * sum(t["boxes"].sum() for t in targets) / len(images)}

    def image_batch(n: int, value: float) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        return [torch.zeros(3, 8, 8)] * n, [{"boxes": torch.full((1, 4), value)}] * n

    batches = [image_batch(1, 1.0), image_batch(3, 2.0)]
    data = DataLoader(batches, batch_size=None)
    (result,) = trainer(tmp_path).validate(Detector(), data, verbose=False)
    assert result["val/box"] == pytest.approx((1 * 4.0 + 3 * 8.0) / 4, rel=1e-12)


def test_epoch_and_eval_values_reach_the_loggers_in_float64(tmp_path):
    model = Regression("scalar")
    fit = trainer(tmp_path, max_epochs=1, log_every_n_steps=50)
    fit.fit(model, loader(), loader())
    per_step = [v["loss"] for v in model.train_values]
    (epoch,) = column(tmp_path, "train/loss_epoch")
    assert (
        epoch == statistics.fmean(per_step) or abs(epoch / statistics.fmean(per_step) - 1) < 1e-13
    )
    (val,) = column(tmp_path, "val/loss")
    expected = statistics.fmean(v["loss"] for v, _ in model.eval_values)
    assert abs(val / expected - 1) < 1e-13  # float32 rounding was 3e-8


@pytest.mark.parametrize(
    ("names", "fragment"),
    [
        (("a", "a_epoch"), "entries named 'a' and 'a_epoch'"),
        (("skipped_steps",), "'skipped_steps'; train/skipped_steps is where the count"),
    ],
)
def test_names_the_library_derives_cannot_be_shadowed(names, fragment):
    class Named(LossDictModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, batch: Any) -> Any:
            return {name: self.w * 1.0 for name in names}

    with pytest.raises(ValueError, match=fragment):
        Named().training_step(None)


def test_a_new_key_per_step_adds_no_global_warning_filter(tmp_path):
    class Growing(LossDictModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))
            self.calls = 0

        def forward(self, batch: Any) -> Any:
            self.calls += 1
            return {f"k{self.calls}": self.w * 1.0}

    before = len(warnings.filters)
    trainer(tmp_path, max_epochs=2, log_every_n_steps=50).fit(Growing(), loader(1))
    assert len(warnings.filters) <= before + 2  # pytest's own, never one per name


def test_plans_are_bounded_whatever_the_number_of_key_sets():
    class Optional(LossDictModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))
            self.step_index = 0

        def forward(self, batch: Any) -> Any:
            self.step_index += 1
            bits = [i for i in range(12) if self.step_index >> i & 1]
            return {f"task{i}": self.w * (i + 1) for i in bits}

    module = Optional()
    for _ in range(1000):
        module.training_step(None)
    assert len(module._core.recorder.log.session.plans) <= 256


def test_the_provided_training_step_refuses_manual_optimization():
    model = MultiTask()
    model.automatic_optimization = False
    with pytest.raises(RuntimeError, match="automatic_optimization is False"):
        make_trainer(None, max_steps=1).fit(model, multitask_data())


def test_resuming_with_other_routes_names_them(tmp_path):
    class Routed(MultiTask):
        def __init__(self, routes: bool) -> None:
            super().__init__()
            self.routes = routes

        def configure_optimizers(self) -> Any:
            if not self.routes:
                return torch.optim.SGD(self.parameters(), lr=0.1)
            return {
                "seg": torch.optim.SGD(self.seg.parameters(), lr=0.1),
                "depth": torch.optim.SGD(self.depth.parameters(), lr=0.1),
                "loss": torch.optim.SGD(self.trunk.parameters(), lr=0.1),
            }

    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    fit = make_trainer(None, max_steps=2, callbacks=[checkpoints], enable_checkpointing=True)
    fit.fit(Routed(routes=True), multitask_data())
    with pytest.raises(ValueError, match=r"trained with routes \['seg', 'depth', 'loss'\]"):
        make_trainer(None, max_steps=4).fit(
            Routed(routes=False), multitask_data(), ckpt_path=checkpoints.last_model_path
        )


def test_resuming_with_other_weights_keeps_the_saved_steps_weighted_as_they_were(tmp_path):
    # 8 batches an epoch, a write every 3 steps: the window open at the epoch-end checkpoint
    # holds steps 6 and 7, weighted 0.5; after resuming, step 8 is weighted by a schedule.
    first = MultiTask(loss_weights={"depth": 0.5})
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    make_trainer(
        None, max_epochs=1, log_every_n_steps=3, callbacks=[checkpoints], enable_checkpointing=True
    ).fit(first, multitask_data())
    logger = MemoryLogger()
    resumed = MultiTask(loss_weights={"depth": lambda step: 2.0})
    make_trainer(logger, max_epochs=2, max_steps=9, log_every_n_steps=3).fit(
        resumed, multitask_data(), ckpt_path=checkpoints.last_model_path
    )
    totals = [r["seg"] + 0.5 * r["depth"] for r in first.records[6:8]]
    totals += [r["seg"] + 2.0 * r["depth"] for r in resumed.records[:1]]
    (row,) = [row for _, row in logger.rows if "train/loss" in row]
    assert row["train/loss"] == pytest.approx(statistics.fmean(totals), rel=1e-6)


def test_a_lone_loss_beside_a_metric_survives_the_sanity_check(tmp_path):
    class HuggingFaceLike(LossDictModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(4, 3)

        def forward(self, batch: Any) -> Any:
            x, y = batch
            logits = self.net(x)
            labels = (y > 0).long()
            accuracy = (logits.argmax(-1) == labels).float().mean()
            return {"loss": F.cross_entropy(logits, labels), "acc": accuracy}

    fit = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, num_sanity_val_steps=2)
    fit.fit(HuggingFaceLike(), loader(), loader())
    assert {"val/loss", "val/acc", "train/loss", "train/acc"} <= fit.callback_metrics.keys()
