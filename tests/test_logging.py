"""What reaches the loggers: names, exact window means, epoch means, val/test means, monitors."""

import copy
import statistics

import pytest
import torch
import torch.nn.functional as F
from conftest import MemoryLogger, MultiTask, make_trainer, multitask_data
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossDictModule


def windows(values, every):
    """Consecutive groups of ``every`` steps, as the trainer writes them; the trailing partial
    group is written when training stops."""
    return [values[i : i + every] for i in range(0, len(values), every)]


def test_step_values_are_window_means_over_steps_across_epochs(memory_logger):
    model = MultiTask(loss_weights={"depth": 0.5})
    # 8 batches an epoch, 2 epochs, a write every 3 steps: windows cross the epoch boundary.
    make_trainer(memory_logger, max_epochs=2, log_every_n_steps=3).fit(model, multitask_data())
    seg = [r["seg"] for r in model.records]
    depth = [r["depth"] for r in model.records]
    total = [s + 0.5 * d for s, d in zip(seg, depth)]
    # the last, partial window when training stops, at its last batch's step (as Lightning's own)
    expected_steps = [2, 5, 8, 11, 14, 15]
    for name, per_step in (("train/seg", seg), ("train/depth", depth), ("train/loss", total)):
        logged = memory_logger.series(name)
        assert [step for step, _ in logged] == expected_steps
        assert [value for _, value in logged] == pytest.approx(
            [statistics.fmean(w) for w in windows(per_step, 3)], rel=1e-6
        )
    assert [v for _, v in memory_logger.series("weight/depth")] == [0.5] * 6
    assert memory_logger.series("weight/seg") == []  # constant 1 is not logged


def test_epoch_means_cover_every_step_of_the_epoch(memory_logger):
    model = MultiTask()
    make_trainer(memory_logger, max_epochs=2, log_every_n_steps=50).fit(model, multitask_data())
    seg = [r["seg"] for r in model.records]
    logged = memory_logger.series("train/seg_epoch")
    assert [v for _, v in logged] == pytest.approx(
        [statistics.fmean(seg[:8]), statistics.fmean(seg[8:])], rel=1e-6
    )
    # 16 steps never reach a 50-step write: one write of all of them when training stops,
    # labelled with the last batch's step and epoch
    assert memory_logger.series("train/seg") == [(15, pytest.approx(statistics.fmean(seg)))]
    assert memory_logger.rows[-1][1]["epoch"] == 1


def test_first_logged_values_equal_losses_computed_by_hand_from_initial_weights(memory_logger):
    model = MultiTask(loss_weights={"depth": 0.25})
    initial = copy.deepcopy(model)
    data = multitask_data()
    x, y_seg, y_depth = next(iter(data))
    h = initial.trunk(x).relu()
    seg = F.cross_entropy(initial.seg(h), y_seg)
    depth = F.mse_loss(initial.depth(h).squeeze(-1), y_depth)
    make_trainer(memory_logger, max_steps=1, log_every_n_steps=1).fit(model, data)
    step, first = memory_logger.rows[0]
    assert step == 0
    assert first["train/seg"] == pytest.approx(seg.item(), abs=1e-6)
    assert first["train/depth"] == pytest.approx(depth.item(), abs=1e-6)
    assert first["train/loss"] == pytest.approx((seg + 0.25 * depth).item(), abs=1e-6)
    # and the update is SGD on exactly the weighted total
    (seg + 0.25 * depth).backward()
    for (name, p0), p1 in zip(initial.named_parameters(), model.parameters()):
        torch.testing.assert_close(p1, p0 - 0.1 * p0.grad, msg=name)


def test_schedules_logged_as_window_means_of_their_values(memory_logger):
    model = MultiTask(loss_weights={"depth": lambda step: float(step)})
    make_trainer(memory_logger, max_steps=6, log_every_n_steps=3).fit(model, multitask_data())
    assert [v for _, v in memory_logger.series("weight/depth")] == [1.0, 4.0]
    seg = [r["seg"] for r in model.records]
    depth = [r["depth"] for r in model.records]
    total = [s + step * d for step, (s, d) in enumerate(zip(seg, depth))]
    assert [v for _, v in memory_logger.series("train/loss")] == pytest.approx(
        [statistics.fmean(w) for w in windows(total, 3)], rel=1e-6
    )


class OptionalTasks(LossDictModule):
    """``aux`` only on even steps and never in steps 3..5; ``acc`` is a metric entry."""

    def __init__(self):
        super().__init__(loss_keys=["main", "aux"])
        self.w = torch.nn.Parameter(torch.ones(()))
        self.step_index = 0

    def forward(self, batch):
        (_x,) = batch
        i = self.step_index
        self.step_index += 1
        zero = self.w * 0  # a graph with zero gradient: values stay exactly as written
        out = {"main": zero + i, "acc": torch.tensor(float(i) / 10)}
        if i % 2 == 0 and not 3 <= i <= 5:
            out["aux"] = zero + 100 * i
        return out


def test_optional_keys_are_means_over_presence_and_absent_windows_write_nothing(memory_logger):
    data = DataLoader(TensorDataset(torch.zeros(9, 1)), batch_size=1)
    model = OptionalTasks()
    make_trainer(memory_logger, max_steps=9, log_every_n_steps=3).fit(model, data)
    # steps 0..2: aux at 0 and 2; steps 3..5: absent; steps 6..8: aux at 6 and 8
    assert memory_logger.series("train/aux") == [(2, 100.0), (8, 700.0)]
    assert memory_logger.series("train/main") == [(2, 1.0), (5, 4.0), (8, 7.0)]
    assert [v for _, v in memory_logger.series("train/acc")] == pytest.approx([0.1, 0.4, 0.7])
    # the total of a step is main + aux where present
    assert [v for _, v in memory_logger.series("train/loss")] == pytest.approx(
        [(0 + 1 + 202) / 3, 4.0, (606 + 7 + 808) / 3]
    )


def test_val_and_test_means_are_weighted_by_batch_size(memory_logger):
    class Identity(LossDictModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, batch):
            (x,) = batch
            return {"l1": self.w * x.float().mean(), "l2": self.w * 2 * x.float().mean()}

    values = torch.arange(10.0).unsqueeze(-1)  # batches of 4, 4, 2: uneven last batch
    data = DataLoader(TensorDataset(values), batch_size=4)
    trainer = make_trainer(memory_logger, max_epochs=1)
    model = Identity()
    [val] = trainer.validate(model, data, verbose=False)
    [test] = trainer.test(model, data, verbose=False)
    assert val["val/l1"] == pytest.approx(4.5) and val["val/l2"] == pytest.approx(9.0)
    assert val["val/loss"] == pytest.approx(13.5)
    assert test == {
        "test/l1": pytest.approx(4.5),
        "test/l2": pytest.approx(9.0),
        "test/loss": pytest.approx(13.5),
    }
    assert memory_logger.series("val/l1")[0][1] == pytest.approx(4.5)


def test_monitors_see_train_and_val_names(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/loss", save_top_k=1)
    per_step = ModelCheckpoint(
        dirpath=tmp_path / "steps", monitor="train/loss", every_n_train_steps=4, save_top_k=1
    )
    stopping = EarlyStopping(monitor="val/seg", patience=0, mode="max", check_finite=True)
    trainer = make_trainer(
        None,
        max_epochs=5,
        log_every_n_steps=2,
        enable_checkpointing=True,
        callbacks=[checkpoint, per_step, stopping],
    )
    data = multitask_data()
    trainer.fit(MultiTask(), data, data)
    assert checkpoint.best_model_score is not None
    assert per_step.best_model_score is not None
    # seg decreases every epoch, so "max" mode stops after patience 0: proof it was monitored
    assert stopping.stopped_epoch == 1
    assert {"train/loss", "val/loss", "val/seg", "val/depth", "train/seg_epoch"} <= set(
        trainer.callback_metrics
    )


def test_csv_and_tensorboard_together_receive_the_same_names(tmp_path):
    csv, tb = CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")
    data = multitask_data()
    make_trainer([csv, tb], max_epochs=1, log_every_n_steps=2).fit(MultiTask(), data, data)
    header = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb" / "version_0"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"train/seg", "train/depth", "train/loss", "train/seg_epoch", "val/seg", "val/loss"}
    assert expected <= set(header.split(",")) and expected <= tags
    tb_seg = [e.value for e in events.Scalars("train/seg")]
    csv_rows = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[1:]
    column = header.split(",").index("train/seg")
    csv_seg = [float(r.split(",")[column]) for r in csv_rows if r.split(",")[column]]
    assert csv_seg == pytest.approx(tb_seg)


def test_progress_bar_shows_the_named_values_updated_only_at_writes():
    class Watch(Callback):
        def __init__(self) -> None:
            self.seen: list[dict[str, float]] = []

        def on_train_batch_end(self, trainer, *args) -> None:
            self.seen.append(dict(trainer.progress_bar_metrics))

    watch, logger = Watch(), MemoryLogger()
    trainer = make_trainer(logger, max_steps=7, log_every_n_steps=3, callbacks=[watch])
    trainer.fit(MultiTask(prog_bar=["loss", "seg"]), multitask_data())
    assert set(watch.seen[-1]) == {"train/loss", "train/seg"}
    # nothing before the first write (step 2), then the written means until the next write
    written = dict(logger.series("train/seg"))
    assert [s.get("train/seg") for s in watch.seen] == [
        None,
        None,
        *[written[2]] * 3,
        *[written[5]] * 2,
    ]
    assert watch.seen[-1]["train/loss"] == dict(logger.series("train/loss"))[5]
