"""LossDictModule behaviour with a real Trainer: modes, None batches, non-finite losses, errors."""

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import MemoryLogger, MultiTask, make_trainer, multitask_data
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossDictModule, Weighting


def batches(items):
    """A loader yielding exactly these batches (a plain list would be read as several loaders)."""
    return DataLoader(items, batch_size=None)


def params_of(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def assert_same_params(a, b):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


class Regression(nn.Module):
    """A plain model that returns its losses: wrap mode."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, 1)

    def forward(self, batch):
        x, y = batch
        pred = self.net(x).squeeze(-1)
        return {"mse": F.mse_loss(pred, y), "l1": F.l1_loss(pred, y), "pred": pred}


def regression_data(n=32, batch_size=8):
    g = torch.Generator().manual_seed(1)
    return DataLoader(
        TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, generator=g)),
        batch_size=batch_size,
    )


def test_wrap_mode_with_optimizer_factory_steps_exactly_on_the_weighted_total():
    model = Regression()
    initial = copy.deepcopy(model)
    module = LossDictModule(
        model, loss_weights={"l1": 0.5}, optimizer=lambda p: torch.optim.SGD(p, lr=0.05)
    )
    data = regression_data()
    make_trainer(max_steps=1).fit(module, data)
    out = initial(next(iter(data)))
    (out["mse"] + 0.5 * out["l1"]).backward()
    for (name, p0), p1 in zip(initial.named_parameters(), model.parameters()):
        torch.testing.assert_close(p1, p0 - 0.05 * p0.grad, msg=name)


def test_default_optimizer_is_adam_with_lr_1e_3():
    module = LossDictModule(Regression())
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == 1e-3


def test_lr_scheduler_factory_is_returned_with_the_optimizer():
    module = LossDictModule(
        Regression(), lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1)
    )
    config = module.configure_optimizers()
    assert config["lr_scheduler"].optimizer is config["optimizer"]


def test_subclass_without_forward_or_model_says_what_to_do():
    with pytest.raises(NotImplementedError, match="define forward"):
        LossDictModule().training_step(None, 0)


def test_pass_through_outputs_reach_the_step_output():
    module = LossDictModule(Regression())
    out = module.training_step(next(iter(regression_data())), 0)
    assert set(out) == {"loss", "pred"} and out["pred"].shape == (8,)


def test_user_training_step_can_call_super_and_total_loss():
    class Custom(MultiTask):
        def training_step(self, batch, batch_idx):
            _x, _y_seg, _y_depth = batch
            return self.total_loss({**self.losses(batch), "scale": 2.0}, stage="train", batch=batch)

    logger = MemoryLogger()
    make_trainer(logger, max_steps=2, log_every_n_steps=1).fit(Custom(), multitask_data())
    assert [v for _, v in logger.series("train/scale")] == [2.0, 2.0]


def test_none_from_forward_updates_nothing(memory_logger):
    class NoneOnSecond(MultiTask):
        calls = 0

        def forward(self, batch):
            self.calls += 1
            return None if self.calls == 2 else super().forward(batch)

    module, reference = NoneOnSecond(), MultiTask()
    data = list(multitask_data())
    make_trainer(None, max_steps=2).fit(reference, batches([data[0], data[2]]))
    make_trainer(memory_logger, max_steps=3, log_every_n_steps=1).fit(module, batches(data[:3]))
    assert_same_params(params_of(reference), params_of(module))
    assert [s for s, _ in memory_logger.series("train/seg")] == [0, 2]  # the None step: no write


def test_nonfinite_raise_names_every_bad_term_and_the_step():
    class GoesNaN(MultiTask):
        def forward(self, batch):
            out = super().forward(batch)
            if len(self.records) == 3:
                out["seg"] = out["seg"] * math.nan
                out["depth"] = out["depth"] * math.inf
            return out

    with pytest.raises(FloatingPointError) as info:
        make_trainer(None, max_steps=8, log_every_n_steps=1).fit(GoesNaN(), multitask_data())
    message = str(info.value)
    assert "'seg', 'depth'" in message and "at step 2" in message and "nonfinite='skip'" in message


def test_nonfinite_raise_is_checked_at_epoch_end_without_step_writes():
    class LastBatchNaN(MultiTask):
        def forward(self, batch):
            out = super().forward(batch)
            if len(self.records) == 8:
                out["depth"] = out["depth"] * math.nan
            return out

    with pytest.raises(FloatingPointError, match=r"term 'depth' at step 7"):
        make_trainer(None, max_epochs=1, log_every_n_steps=0).fit(LastBatchNaN(), multitask_data())


def test_nonfinite_skip_updates_nothing_and_counts_skipped_steps(memory_logger):
    class NaNOnSecond(MultiTask):
        def forward(self, batch):
            out = super().forward(batch)
            if len(self.records) == 2:
                out["seg"] = out["seg"] * math.nan
            return out

    module = NaNOnSecond(nonfinite="skip")
    reference = MultiTask()
    data = list(multitask_data())
    # reference: the same run without the second batch, which the skip must erase entirely
    make_trainer(None, max_steps=2).fit(reference, batches([data[0], data[2]]))
    make_trainer(memory_logger, max_steps=3, log_every_n_steps=1).fit(module, batches(data[:3]))
    assert module.skipped_steps == 1
    assert_same_params(params_of(reference), params_of(module))
    assert [v for _, v in memory_logger.series("train/skipped_steps")] == [0.0, 1.0, 1.0]
    assert [s for s, _ in memory_logger.series("train/seg")] == [0, 2]  # the NaN step wrote nothing


def test_nonfinite_off_lets_nan_through():
    class AlwaysNaN(MultiTask):
        def forward(self, batch):
            return {"seg": super().forward(batch)["seg"] * math.nan}

    module = AlwaysNaN(nonfinite="off")
    make_trainer(None, max_steps=2).fit(module, multitask_data())
    assert torch.isnan(module.seg.weight).all()


def test_bad_return_inside_training_names_the_key():
    class Broken(MultiTask):
        def forward(self, batch):
            return {"seg": torch.ones(3, requires_grad=True)}

    with pytest.raises(
        ValueError, match=r"no loss term in training \(found 'seg': a tensor of shape"
    ):
        make_trainer(None, max_steps=1).fit(Broken(), multitask_data())


def test_term_without_grad_warns_once_naming_it():
    class Detached(MultiTask):
        def forward(self, batch):
            out = super().forward(batch)
            out["depth"] = out["depth"].detach()
            return out

    # selected by name, it stays a term and cannot train anything: one warning says so
    module = Detached(loss_keys=["seg", "depth"])
    with pytest.warns(UserWarning, match="loss term 'depth' does not require grad") as record:
        make_trainer(None, max_steps=3).fit(module, multitask_data())
    assert sum("'depth' does not require grad" in str(w.message) for w in record) == 1


def test_weights_and_keys_that_matched_nothing_warn_after_the_first_epoch():
    module = MultiTask(loss_weights={"sgm": 2.0, "de*": 0.5})
    with pytest.warns(UserWarning, match="loss_weights entry 'sgm' matched no loss term"):
        make_trainer(None, max_epochs=1).fit(module, multitask_data())


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"nonfinite": "ignore"}, ValueError, "nonfinite='ignore'; expected one of 'raise'"),
        ({"optimizer": "adam"}, TypeError, "optimizer is a value of type str"),
        ({"weighting": 3}, TypeError, "weighting is a value of type int"),
        ({"loss_weigths": {}}, TypeError, "loss_weigths"),
    ],
)
def test_bad_options_name_the_option(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        LossDictModule(Regression(), **kwargs)


def test_wrapping_something_that_is_not_a_module_is_refused():
    with pytest.raises(TypeError, match="model is a value of type function"):
        LossDictModule(lambda batch: batch)


def test_optimizer_factory_must_return_an_optimizer():
    module = LossDictModule(Regression(), optimizer=lambda params: list(params))
    with pytest.raises(TypeError, match="optimizer\\(params\\) returned a value of type list"):
        module.configure_optimizers()


class Halves(Weighting):
    """A learnable weighting: weights = softmax(logits) * K, plus a penalty on the logits."""

    def __init__(self, n):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n))

    def forward(self, losses, names):
        return torch.softmax(self.logits, 0) * len(names)

    def penalty(self, losses, names):
        return self.logits.pow(2).sum()


def test_weighting_module_is_trained_logged_and_checkpointed(memory_logger, tmp_path):
    module = MultiTask(weighting=Halves(2), loss_weights={"depth": 3.0})
    trainer = make_trainer(memory_logger, max_steps=2, log_every_n_steps=1)
    trainer.fit(module, multitask_data())
    logged = memory_logger.rows[0][1]
    # step 0: logits are zero, so the strategy's weights are 1 and only the static 3.0 shows
    assert logged["weight/seg"] == pytest.approx(1.0) and logged["weight/depth"] == pytest.approx(
        3.0
    )
    assert logged["train/loss"] == pytest.approx(logged["train/seg"] + 3.0 * logged["train/depth"])
    assert not torch.equal(module.weighting.logits.detach(), torch.zeros(2))  # it trained
    trainer.save_checkpoint(tmp_path / "w.ckpt")
    state = torch.load(tmp_path / "w.ckpt", weights_only=False)["state_dict"]
    torch.testing.assert_close(state["weighting.logits"], module.weighting.logits.detach())


def test_predict_returns_the_eval_mode_forwards_output_and_logs_nothing() -> None:
    """``trainer.predict`` on a module whose model predicts in eval mode (a detector) returns its
    predictions per batch, untouched; a module that always returns losses gets its losses."""

    class Detector(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(6, 3)

        def forward(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> Any:
            scores = self.layer(x)
            if self.training:
                return {"cls": F.cross_entropy(scores, y)}
            return {"boxes": scores.argmax(-1), "scores": scores.softmax(-1)}

    logger = MemoryLogger()
    module = LossDictModule(Detector(), eval_losses=None)
    trainer = make_trainer(logger)
    data = multitask_data(n=16)
    predictions = trainer.predict(module, data)
    assert len(predictions) == 2 and set(predictions[0]) == {"boxes", "scores"}
    x = next(iter(data))[0]
    expected = module.model.eval()(x, None, None)
    torch.testing.assert_close(predictions[0]["scores"], expected["scores"])
    assert logger.rows == []
