"""Mistakes in a training step said at the first step, with the fix (API.md section 6, 0.4):
a `training_step` that computes the total and returns nothing, a total that trains nothing."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from conftest import MultiTask, make_trainer, multitask_data
from lightning.pytorch.callbacks import Callback


class Batches(Callback):
    def __init__(self) -> None:
        self.ended = 0

    def on_train_batch_end(self, *args: Any) -> None:
        self.ended += 1


def test_a_training_step_that_computes_the_total_and_returns_nothing_is_an_error():
    class Forgot(MultiTask):
        def training_step(self, batch: Any, batch_idx: int) -> None:
            self.total_loss(self(batch))  # no return: Lightning would train nothing

    batches = Batches()
    with pytest.raises(RuntimeError, match=r"Forgot\.training_step .*return self\.total_loss"):
        make_trainer(max_epochs=1, callbacks=[batches]).fit(Forgot(), multitask_data())
    assert batches.ended == 1  # said at the first step


def test_a_training_step_that_returns_the_total_trains_as_the_provided_one():
    class Own(MultiTask):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return self.total_loss(self(batch))

    own, plain = Own(), MultiTask()
    make_trainer(max_steps=3).fit(own, multitask_data())
    make_trainer(max_steps=3).fit(plain, multitask_data())
    for p, q in zip(own.parameters(), plain.parameters()):
        assert torch.equal(p, q)


def test_a_skipped_batch_without_total_loss_is_no_mistake():
    class Skips(MultiTask):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return None if batch_idx == 1 else self.total_loss(self(batch))

    make_trainer(max_steps=3).fit(Skips(), multitask_data())


@pytest.mark.parametrize("how", ["not a parameter", "input only"])
def test_a_total_that_reaches_no_trainable_parameter_is_said_at_the_first_step(how):
    class Frozen(MultiTask):
        def __init__(self) -> None:
            super().__init__()
            self.requires_grad_(False)  # a frozen backbone...
            # ...and a learnable scale that is not an nn.Parameter: nothing trains
            self.scale = torch.ones(1, requires_grad=True)

        def forward(self, batch: Any) -> Any:
            x = batch[0]
            if how == "input only":
                x = x.clone().requires_grad_(True)
                return {"seg": self.trunk(x).pow(2).mean()}  # gradient into the input only
            return {"seg": (self.scale * self.trunk(x)).pow(2).mean()}

    module = Frozen()
    module.unused = torch.nn.Linear(1, 1)  # trainable, but the loss never uses it
    batches = Batches()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(max_steps=1, callbacks=[batches]).fit(module, multitask_data())
    said = [str(w.message) for w in caught if "reach no trainable parameter" in str(w.message)]
    assert len(said) == 1, said
    assert "'seg'" in said[0] and "Frozen" in said[0] and "requires_grad_(True)" in said[0]


def test_a_total_that_reaches_a_trainable_parameter_is_not_warned_about():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(max_steps=2).fit(MultiTask(), multitask_data())
    assert not [w for w in caught if "reach no trainable parameter" in str(w.message)]


def test_total_loss_in_a_users_validation_step_records_validation_values(memory_logger):
    class OwnValidation(MultiTask):
        def validation_step(self, batch: Any, batch_idx: int) -> Any:
            return self.total_loss(self(batch))  # no stage=: the trainer's stage decides

    module = OwnValidation()
    trainer = make_trainer(memory_logger, max_epochs=1, log_every_n_steps=50)
    trainer.fit(module, multitask_data(), multitask_data(n=16, seed=1))
    train_steps = [r["seg"] + r["depth"] for r in module.records]
    (epoch_mean,) = [v for _, v in memory_logger.series("train/loss_epoch")]
    assert epoch_mean == pytest.approx(sum(train_steps) / len(train_steps), rel=1e-6)
    assert "val/loss" in trainer.callback_metrics
    (result,) = trainer.validate(module, multitask_data(n=16, seed=1), verbose=False)
    assert set(result) == {"val/seg", "val/depth", "val/loss"}


def test_a_misspelt_progress_bar_name_is_said_after_the_first_epoch():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(max_epochs=1).fit(MultiTask(prog_bar=["loss", "sge"]), multitask_data())
    said = [str(w.message) for w in caught if "prog_bar entry" in str(w.message)]
    assert said == [
        "prog_bar entry 'sge' matched no value logged during the first training epoch "
        "(train/sge was never logged); check its spelling (did you mean 'seg'?)"
    ]


def test_total_loss_twice_in_one_training_step_is_an_error_with_the_fix():
    class TwoViews(MultiTask):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y_seg, y_depth = batch
            first = self.total_loss(self(batch))
            return first + self.total_loss(self((2 * x, y_seg, y_depth)))

    with pytest.raises(RuntimeError, match=r"twice in one step.*'view1'"):
        make_trainer(max_steps=2).fit(TwoViews(), multitask_data())


def test_two_views_as_one_mapping_log_each_view():
    class TwoViews(MultiTask):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y_seg, y_depth = batch
            return self.total_loss({"view1": self(batch), "view2": self((2 * x, y_seg, y_depth))})

    trainer = make_trainer(max_steps=2, log_every_n_steps=1)
    trainer.fit(TwoViews(), multitask_data())
    assert {"train/view1/seg", "train/view2/depth", "train/loss"} <= set(trainer.callback_metrics)


def test_a_weighting_with_parameters_assigned_during_a_fit_is_refused():
    from lightning_losses.weighting import UncertaintyWeighting

    class Late(MultiTask):
        def on_train_epoch_start(self) -> None:
            if self.current_epoch == 1:
                self.weighting = UncertaintyWeighting(["seg", "depth"])

    with pytest.raises(RuntimeError, match=r"assigned during a fit.*before trainer\.fit"):
        make_trainer(max_epochs=2).fit(Late(), multitask_data())


def test_a_misspelt_route_beside_a_loss_route_is_said_at_the_first_step():
    class Misspelt(MultiTask):
        def configure_optimizers(self) -> Any:
            return {
                "segg": torch.optim.SGD(self.seg.parameters(), lr=0.1),
                "loss": torch.optim.SGD([*self.trunk.parameters(), *self.depth.parameters()]),
            }

    batches = Batches()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(max_steps=1, callbacks=[batches]).fit(Misspelt(), multitask_data())
    said = [str(w.message) for w in caught if "route name 'segg'" in str(w.message)]
    assert len(said) == 1 and "did you mean 'seg'?" in said[0]


def test_routes_that_cannot_be_read_before_fit_are_named_in_the_warning():
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    class OneCycle(MultiTask):
        def forward(self, batch: Any) -> Any:
            out = super().forward(batch)
            return {**out, "acc": out["seg"].detach()}

        def configure_optimizers(self) -> Any:
            seg = torch.optim.SGD(self.seg.parameters(), lr=0.1)
            total = self.trainer.estimated_stepping_batches  # fails outside a fit
            schedule = torch.optim.lr_scheduler.OneCycleLR(seg, 0.1, total_steps=total)
            rest = [*self.trunk.parameters(), *self.depth.parameters()]
            return {
                "seg": {"optimizer": seg, "lr_scheduler": schedule},
                "depth": torch.optim.SGD(rest, lr=0.1),
            }

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer().validate(OneCycle(), multitask_data(n=16), verbose=False)
    said = [str(w.message) for w in caught if "no training step has told" in str(w.message)]
    assert len(said) == 1
    assert "could not run outside a fit" in said[0]
    assert MisconfigurationException.__name__ in said[0]
