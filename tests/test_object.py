"""The module as an ordinary object (API.md section 10, 0.4): it holds no run once a call ends,
its option attributes take effect or refuse, and hooks or optimizers from anywhere count."""

from __future__ import annotations

import copy
import functools
import io
import pickle
from typing import Any

import pytest
import torch
from conftest import MemoryLogger, MultiTask, make_trainer, multitask_data
from lightning.pytorch import Trainer
from torch import nn
from torch.optim import Optimizer

from lightning_losses import LossDictModule
from lightning_losses.weighting import UncertaintyWeighting


class _Finder(pickle.Pickler):
    """Pickles an object, noting every Trainer and optimizer reached on the way."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO())
        self.found: list[str] = []

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, (Trainer, Optimizer)):
            self.found.append(type(obj).__name__)
            return id(obj)
        return None


def reached_runs(module: Any) -> list[str]:
    finder = _Finder()
    finder.dump(module)
    return finder.found


class Net(MultiTask):
    """MultiTask with a picklable optimizer (the conftest one is a lambda)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.optimizer_factory = functools.partial(torch.optim.SGD, lr=0.1)


class Failing(Net):
    def forward(self, batch: Any) -> Any:
        if len(self.records) == 3:
            raise RuntimeError("boom")
        return super().forward(batch)


def routed(m: Any) -> dict[str, Any]:
    return {
        "seg": torch.optim.SGD(m.seg.parameters(), lr=0.1),
        "depth": torch.optim.SGD(m.depth.parameters(), lr=0.1),
        "loss": torch.optim.SGD(m.trunk.parameters(), lr=0.1),
    }


class Routed(Net):
    def configure_optimizers(self) -> Any:
        return routed(self)


@pytest.mark.parametrize("cls", [Net, Routed], ids=["one optimizer", "routes"])
def test_a_fitted_module_holds_no_trainer_and_no_optimizer(cls, tmp_path):
    module = cls()
    before = len(pickle.dumps(module))
    trainer = make_trainer(MemoryLogger(), max_epochs=1, log_every_n_steps=3)
    trainer.fit(module, multitask_data(), multitask_data(n=16))
    trainer.validate(module, multitask_data(n=16), verbose=False)
    assert reached_runs(module) == []
    # no staging rows, windows or plans of the last call either: the names training
    # classified are all that is added (7.0 KB -> 7.8 KB here; 191 KB before 0.4)
    assert len(pickle.dumps(module)) < before + 1500
    twin = copy.deepcopy(module)
    assert reached_runs(twin) == []
    # and the copy is a module that fits on its own
    make_trainer(max_steps=2).fit(twin, multitask_data())


def test_a_failed_fit_leaves_no_run_behind():
    module = Failing()
    with pytest.raises(RuntimeError, match="boom"):
        make_trainer(max_epochs=1).fit(module, multitask_data())
    assert reached_runs(module) == []


def test_loss_weights_assigned_after_construction_take_effect(memory_logger):
    module = MultiTask()
    module.loss_weights = {"depth": 0.0}
    depth = copy.deepcopy(module.depth)
    make_trainer(memory_logger, max_steps=4, log_every_n_steps=2).fit(module, multitask_data())
    assert torch.equal(module.depth.weight, depth.weight)  # weight 0: no gradient reaches it
    assert [v for _, v in memory_logger.series("weight/depth")] == [0.0, 0.0]
    for _, row in memory_logger.rows:
        if "train/loss" in row:  # (not the epoch's row)
            assert row["train/loss"] == pytest.approx(row["train/seg"], rel=1e-9)
    assert module.loss_weights == {"depth": 0.0}


def test_loss_weights_changed_in_place_are_refused_with_the_way_to_change_them():
    module = MultiTask(loss_weights={"depth": 0.5})
    with pytest.raises(TypeError, match=r"module\.loss_weights = \{\*\*module\.loss_weights"):
        module.loss_weights["depth"] = 0.0
    with pytest.raises(TypeError, match="cannot be changed in place"):
        module.loss_weights.update(depth=0.0)
    assert module.loss_weights == {"depth": 0.5}
    assert copy.deepcopy(module).loss_weights == {"depth": 0.5}


def test_loss_weights_assigned_in_a_subclass_init_take_effect(memory_logger):
    class Weighted(MultiTask):
        def __init__(self) -> None:
            super().__init__()
            self.loss_weights = {"seg": 2.0}

    make_trainer(memory_logger, max_steps=2, log_every_n_steps=2).fit(Weighted(), multitask_data())
    (_, row), *_ = memory_logger.rows
    assert row["weight/seg"] == 2.0
    assert row["train/loss"] == pytest.approx(2 * row["train/seg"] + row["train/depth"], rel=1e-6)


def test_loss_weights_changed_between_steps_take_effect_at_the_next_step(memory_logger):
    from lightning.pytorch.callbacks import Callback

    class Halve(Callback):
        def on_train_batch_end(self, trainer: Any, module: Any, *args: Any) -> None:
            if trainer.global_step == 2:
                module.loss_weights = {"depth": 0.5}

    module = MultiTask()
    trainer = make_trainer(memory_logger, max_steps=4, log_every_n_steps=2, callbacks=[Halve()])
    trainer.fit(module, multitask_data())
    records = module.records
    totals = [r["seg"] + (0.5 if i >= 2 else 1.0) * r["depth"] for i, r in enumerate(records)]
    assert [v for _, v in memory_logger.series("train/loss")] == pytest.approx(
        [sum(totals[0:2]) / 2, sum(totals[2:4]) / 2], rel=1e-6
    )


def test_nonfinite_assigned_after_construction_takes_effect():
    class Nan(MultiTask):
        def forward(self, batch: Any) -> Any:
            out = super().forward(batch)
            return {**out, "seg": out["seg"] * float("nan")} if len(self.records) == 2 else out

    module = Nan()
    module.nonfinite = "off"
    make_trainer(max_steps=3, log_every_n_steps=1).fit(module, multitask_data())  # no raise
    module = Nan()
    module.nonfinite = "raise"
    with pytest.raises(FloatingPointError):
        make_trainer(max_steps=3, log_every_n_steps=1).fit(module, multitask_data())
    with pytest.raises(ValueError, match="nonfinite='never'"):
        module.nonfinite = "never"


def test_an_option_fixed_at_construction_refuses_assignment_and_says_how():
    module = MultiTask()
    with pytest.raises(AttributeError, match=r"loss_keys cannot change.*loss_keys=\.\.\."):
        module.loss_keys = ["seg"]


def test_a_weighting_assigned_after_construction_takes_effect(memory_logger):
    module = MultiTask()
    module.weighting = UncertaintyWeighting(["seg", "depth"])
    assert isinstance(module.weighting, UncertaintyWeighting)
    assert "weighting.log_variance" in dict(module.named_parameters())
    make_trainer(memory_logger, max_steps=2, log_every_n_steps=2).fit(module, multitask_data())
    (_, row), *_ = memory_logger.rows
    assert {"weight/seg", "weight/depth"} <= set(row)
    module.weighting = None
    assert module.weighting is None
    assert "weighting.log_variance" not in dict(module.named_parameters())


def test_a_route_map_from_a_mixins_configure_optimizers_is_translated():
    class Routes:
        def configure_optimizers(self: Any) -> Any:
            return routed(self)

    class Mixed(Routes, MultiTask):  # type: ignore[misc]
        pass

    module = Mixed()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainer = make_trainer(max_steps=2)
    trainer.fit(module, multitask_data())
    assert type(trainer.optimizers[0]).__name__ == "RoutedOptimizer"
    for name, p in module.named_parameters():
        assert not torch.equal(p, before[name]), name


def _epoch_rows(module: LossDictModule) -> list[tuple[int, list[str]]]:
    logger = MemoryLogger()
    make_trainer(logger, max_epochs=2, log_every_n_steps=3).fit(module, multitask_data())
    return [(step, sorted(row)) for step, row in logger.rows]


class Adding(MultiTask):
    """Adds a loss from inside forward: the batch-start hook's part (the collection) matters."""

    def forward(self, batch: Any) -> Any:
        import lightning_losses as ll

        out = super().forward(batch)
        ll.add_loss("l2", 1e-3 * self.trunk.weight.square().sum())
        return out


def test_a_hook_assigned_on_an_instance_keeps_the_librarys_part():
    plain = _epoch_rows(Adding())
    module = Adding()
    seen: list[int] = []
    module.on_train_batch_start = lambda batch, batch_idx: seen.append(batch_idx)
    assert _epoch_rows(module) == plain
    assert seen == list(range(8)) * 2


def test_a_hook_assigned_on_the_class_after_it_was_made_keeps_the_librarys_part():
    plain = _epoch_rows(Adding())

    class Late(Adding):
        pass

    seen: list[int] = []
    Late.on_train_batch_start = lambda self, batch, batch_idx: seen.append(batch_idx)
    assert _epoch_rows(Late()) == plain
    assert seen == list(range(8)) * 2


def test_a_module_wrapping_a_model_pickles_and_copies_like_one():
    module = LossDictModule(nn.Linear(3, 1))
    assert isinstance(copy.deepcopy(module).model, nn.Linear)
    assert isinstance(pickle.loads(pickle.dumps(module)).model, nn.Linear)


def test_configure_optimizers_assigned_on_an_instance_is_used_as_lightning_cli_does():
    from types import MethodType

    module = MultiTask()
    before = module.seg.weight.detach().clone()
    # what LightningCLI does with a top-level `optimizer:` in its config
    module.configure_optimizers = MethodType(
        lambda self: torch.optim.SGD(self.parameters(), lr=0.5), module
    )
    trainer = make_trainer(max_steps=1)
    trainer.fit(module, multitask_data())
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.5
    assert not torch.equal(module.seg.weight, before)
    module.configure_optimizers = MethodType(routed, module)  # a route map, on the instance
    trainer = make_trainer(max_steps=1)
    trainer.fit(module, multitask_data())
    assert type(trainer.optimizers[0]).__name__ == "RoutedOptimizer"
