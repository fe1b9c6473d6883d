"""Models that predict in eval mode (detectors): ``val/`` losses from a training-mode forward that
changes nothing training sees, and torchmetrics on the predictions, against plain references."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import MemoryLogger, make_trainer
from detection import BoxAP, Scenes, TinyRCNN, collate, reference_ap
from torch import nn
from torch.utils.data import DataLoader

from lightning_losses import LossDictModule
from lightning_losses.evaluation.predictions import training_mode_losses

TERMS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")


def loader(dataset, batch_size: int = 4) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, collate_fn=collate)


def detector(seed: int = 0, **options) -> LossDictModule:
    torch.manual_seed(seed)
    options.setdefault("eval_losses", "train_forward")
    options.setdefault("metrics", {"ap": BoxAP()})
    return LossDictModule(
        TinyRCNN(), optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), **options
    )


def held_losses(model: TinyRCNN, images, targets) -> dict[str, float]:
    """The reference: a copy in training mode with BatchNorm and Dropout in eval mode."""
    model = copy.deepcopy(model)
    model.train()
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm2d, nn.Dropout)):
            module.eval()
    with torch.no_grad():
        return {k: float(v) for k, v in model(images, targets).items()}


def test_val_losses_and_ap_equal_plain_references(tmp_path):
    from lightning.pytorch.callbacks import Callback

    states: list[torch.Tensor] = []

    class KeepRandomState(Callback):
        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dl_idx=0):
            states.append(torch.get_rng_state())

    val = Scenes(12, 1)
    module = detector()
    trainer = make_trainer(max_epochs=2, num_sanity_val_steps=2, callbacks=[KeepRandomState()])
    trainer.fit(module, loader(Scenes(24, 0)), loader(val))
    fitted = dict(trainer.callback_metrics)
    states.clear()
    (returned,) = trainer.validate(module, loader(val), verbose=False)

    # the last validation of fit and validate() ran on the same weights: same AP, and AP equals
    # an independent computation over the whole set (sanity-check batches left nothing behind)
    expected_ap = reference_ap(module.model, val)
    assert float(fitted["val/map_50"]) == pytest.approx(expected_ap, rel=1e-6)
    assert returned["val/map_50"] == pytest.approx(expected_ap, rel=1e-6)
    # losses: batch-size-weighted means of the held-mode losses, replayed with the random state
    # each batch saw (the proposal sampler draws from it)
    sums = dict.fromkeys(TERMS, 0.0)
    count = 0
    for state, (images, targets) in zip(states, loader(val)):
        torch.set_rng_state(state)
        for name, value in held_losses(module.model, images, targets).items():
            sums[name] += value * len(images)
        count += len(images)
    expected = {f"val/{k}": v / count for k, v in sums.items()}
    expected["val/loss"] = sum(expected.values())
    assert len(states) == 3
    assert {k: returned[k] for k in expected} == pytest.approx(expected, rel=1e-6)


def fitted_state(module: LossDictModule, epochs: int = 2) -> dict[str, torch.Tensor]:
    trainer = make_trainer(max_epochs=epochs, num_sanity_val_steps=2)
    trainer.fit(module, loader(Scenes(16, 0)), loader(Scenes(8, 1)))
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_validation_losses_leave_training_exactly_as_without_them():
    # Same seed, same batches; one run also computes val losses through a training-mode forward.
    # BatchNorm statistics, dropout masks and the proposal sampler's random draws of training
    # must be exactly those of a run whose validation only predicts.
    with_losses = fitted_state(detector(eval_losses="train_forward"))
    predictions_only = fitted_state(detector(eval_losses=None))
    assert with_losses.keys() == predictions_only.keys()
    for name in with_losses:
        assert torch.equal(with_losses[name], predictions_only[name]), name

    # and the comparison can fail: a naive training-mode validation changes training
    class Naive(LossDictModule):
        def evaluate(self, batch, stage="val", dataloader_idx=0):
            self.train()
            try:
                return self.total_loss(self(batch), stage, batch, dataloader_idx)
            finally:
                self.eval()

    torch.manual_seed(0)
    naive = Naive(TinyRCNN(), optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    changed = fitted_state(naive)
    assert not torch.equal(
        changed["model.backbone.1.running_mean"], predictions_only["model.backbone.1.running_mean"]
    )


def test_training_mode_losses_restores_every_module_and_the_random_state():
    model = TinyRCNN()
    model.eval()
    model.objectness.train()  # a user's odd choice is kept, module by module
    before = {name: m.training for name, m in model.named_modules()}
    state = torch.get_rng_state()
    with training_mode_losses(model):
        inside = {name: m.training for name, m in model.named_modules()}
        torch.rand(3)
    assert inside[""] and inside["classifier"] and inside["backbone.0"]
    assert not inside["backbone.1"] and not inside["backbone.3"]  # BatchNorm, Dropout
    assert {name: m.training for name, m in model.named_modules()} == before
    assert torch.equal(torch.get_rng_state(), state)


def test_a_model_that_predicts_in_eval_mode_is_told_which_option_to_pass():
    module = detector(eval_losses="forward", metrics=None)
    with pytest.raises(
        TypeError,
        match=r"val: forward returned a list of 4 in eval mode.*"
        r"eval_losses='train_forward'",
    ):
        make_trainer().validate(module, loader(Scenes(4, 1)), verbose=False)


def test_metrics_only_logs_no_losses():
    module = detector(eval_losses=None)
    val = Scenes(8, 1)
    (returned,) = make_trainer().validate(module, loader(val), verbose=False)
    assert set(returned) == {"val/map_50", "val/recall_50"}
    assert returned["val/map_50"] == pytest.approx(reference_ap(module.model, val), rel=1e-6)


def test_each_loader_and_test_stage_has_its_own_metric_state():
    module = detector()
    sets = [Scenes(8, 1), Scenes(8, 2)]
    logger = MemoryLogger()
    trainer = make_trainer(logger=logger, max_epochs=6)
    trainer.fit(module, loader(Scenes(32, 0)), [loader(s) for s in sets])
    results = trainer.test(module, [loader(s) for s in sets], verbose=False)
    for index, (dataset, result) in enumerate(zip(sets, results)):
        expected = reference_ap(module.model, dataset)
        assert result[f"test/map_50/dataloader_idx_{index}"] == pytest.approx(expected, rel=1e-6)
        assert f"test/loss/dataloader_idx_{index}" in result
    assert results[0]["test/map_50/dataloader_idx_0"] != results[1]["test/map_50/dataloader_idx_1"]
    val_rows = [m for _, m in logger.rows if "val/map_50/dataloader_idx_1" in m]
    assert len(val_rows) == 6
    assert all(math.isfinite(row["val/map_50/dataloader_idx_0"]) for row in val_rows)


def test_monitoring_a_metric_with_model_checkpoint(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    logger = MemoryLogger()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/map_50", mode="max")
    trainer = make_trainer(
        logger=logger, max_epochs=3, callbacks=[checkpoint], enable_checkpointing=True
    )
    trainer.fit(detector(), loader(Scenes(8, 0)), loader(Scenes(8, 1)))
    logged = [value for _, value in logger.series("val/map_50")]
    assert len(logged) == 3
    assert float(checkpoint.best_model_score) == pytest.approx(max(logged))


def test_a_metric_named_like_a_loss_is_an_error():
    class ClashingAP(BoxAP):
        def compute(self):
            return {"loss_classifier": torch.tensor(0.0)}

    module = detector(metrics=[ClashingAP()])
    with pytest.raises(ValueError, match=r"metrics log 'val/loss_classifier', which forward"):
        make_trainer().validate(module, loader(Scenes(4, 1)), verbose=False)


def test_bad_metric_options_name_what_was_found():
    with pytest.raises(TypeError, match=r"metrics\['ap'\] is a value of type int"):
        detector(metrics={"ap": 3})
    with pytest.raises(ValueError, match=r"eval_losses='train'; expected 'forward'"):
        detector(eval_losses="train")
    with pytest.raises(TypeError, match="metric_inputs is a value of type int"):
        detector(metric_inputs=1)


def test_metric_inputs_default_and_override():
    # (x, y) batches: the default gives metric.update(predictions, y)
    from torchmetrics.classification import MulticlassAccuracy

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(4, 3)

        def forward(self, x, y):
            logits = self.net(x)
            if self.training:
                return torch.nn.functional.cross_entropy(logits, y)
            return logits

    torch.manual_seed(0)
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    data = DataLoader(list(zip(x, y)), batch_size=5)
    module = LossDictModule(
        Classifier(), eval_losses=None, metrics={"acc": MulticlassAccuracy(3, average="micro")}
    )
    (returned,) = make_trainer().validate(module, data, verbose=False)
    with torch.no_grad():
        expected = MulticlassAccuracy(3, average="micro")(module.model.net(x), y)
    assert returned["val/acc"] == pytest.approx(float(expected))

    swapped = LossDictModule(
        Classifier(),
        eval_losses=None,
        metrics={"acc": MulticlassAccuracy(3, average="micro")},
        metric_inputs=lambda predictions, batch: (predictions.argmax(-1), batch[1]),
    )
    (returned,) = make_trainer().validate(swapped, data, verbose=False)
    with torch.no_grad():
        expected = (swapped.model.net(x).argmax(-1) == y).float().mean()
    assert returned["val/acc"] == pytest.approx(float(expected))


def test_a_checkpoint_of_a_module_with_metrics_loads_without_them_and_says_so(tmp_path):
    module = detector()
    trainer = make_trainer(default_root_dir=tmp_path, enable_checkpointing=True)
    with pytest.warns(UserWarning, match=r"cannot record metrics .* logs no metrics"):
        trainer.fit(module, loader(Scenes(8, 0)), loader(Scenes(8, 1)))
    path = trainer.checkpoint_callback.best_model_path
    with pytest.warns(UserWarning, match=r"does not record metrics .* has metrics=None"):
        loaded = LossDictModule.load_from_checkpoint(path, model=TinyRCNN())
    assert loaded.eval_metrics is None and loaded.eval_losses == "train_forward"
    again = LossDictModule.load_from_checkpoint(path, model=TinyRCNN(), metrics={"ap": BoxAP()})
    (returned,) = make_trainer().validate(again, loader(Scenes(8, 1)), verbose=False)
    assert returned["val/map_50"] == pytest.approx(reference_ap(again.model, Scenes(8, 1)))
    for name, value in module.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name


class FunctionalDropout(nn.Module):
    """Dropout the HuggingFace way: F.dropout(training=self.training) and SDPA's dropout_p,
    no nn.Dropout module; losses in training mode only."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, 4)

    def forward(self, x, y):
        h = torch.nn.functional.dropout(self.net(x), p=0.5, training=self.training)
        q = h.unsqueeze(1)
        h = torch.nn.functional.scaled_dot_product_attention(
            q, q, q, dropout_p=0.5 if self.training else 0.0
        ).squeeze(1)
        if self.training:
            return {"mse": torch.nn.functional.mse_loss(h, y)}
        return h


def test_train_forward_turns_functional_dropout_off():
    x, y = torch.randn(8, 4), torch.randn(8, 4)
    data = DataLoader(list(zip(x, y)), batch_size=4)
    module = LossDictModule(FunctionalDropout(), eval_losses="train_forward")
    first = make_trainer().validate(module, data, verbose=False)[0]["val/mse"]
    second = make_trainer().validate(module, data, verbose=False)[0]["val/mse"]
    with torch.no_grad():
        q = module.model.net(x).unsqueeze(1)
        expected = torch.nn.functional.mse_loss(
            torch.nn.functional.scaled_dot_product_attention(q, q, q).squeeze(1), y
        )
    assert first == second == pytest.approx(float(expected), rel=1e-6)
    # and the functions are themselves again afterwards
    assert torch.nn.functional.dropout(torch.ones(1000), p=0.5).eq(0).any()


def test_a_model_that_predicts_a_tensor_in_eval_mode_is_told_which_option_to_pass():
    x, y = torch.randn(8, 4), torch.randn(8, 4)
    module = LossDictModule(FunctionalDropout())
    with pytest.raises(
        TypeError,
        match=r"val: forward returned Tensor\[4, 4\] float32 in eval "
        r"mode, not losses.*eval_losses='train_forward'",
    ):
        make_trainer().validate(module, DataLoader(list(zip(x, y)), batch_size=4), verbose=False)


def test_a_metric_that_cannot_take_its_inputs_gets_a_note_naming_metric_inputs():
    from torchmetrics.classification import MulticlassAccuracy

    module = detector(metrics={"acc": MulticlassAccuracy(3)})
    with pytest.raises(Exception) as error:
        make_trainer().validate(module, loader(Scenes(4, 1)), verbose=False)
    (note,) = [n for n in getattr(error.value, "__notes__", []) if "lightning_losses" in n]
    assert "metrics.update was called with (a list of 4, a tuple of 4)" in note
    assert "default metric_inputs" in note and "pass metric_inputs=" in note
