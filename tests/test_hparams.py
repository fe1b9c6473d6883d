"""Constructor arguments in checkpoints and hparams.yaml: plain values, rebuilt without code."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_trainer, multitask_data
from lightning.pytorch.core.mixins import HyperparametersMixin
from lightning.pytorch.core.saving import load_hparams_from_yaml
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn

from lightning_losses import LossDictModule, Weighting
from lightning_losses.checkpoints import hparams
from lightning_losses.weighting import UncertaintyWeighting


class Heads(LossDictModule):
    def __init__(self, hidden: int = 8, **options) -> None:
        super().__init__(**options)
        self.trunk, self.seg = nn.Linear(6, hidden), nn.Linear(hidden, 3)
        self.depth = nn.Linear(hidden, 1)

    def forward(self, batch):
        x, y_seg, y_depth = batch
        h = self.trunk(x).relu()
        return {
            "seg": F.cross_entropy(self.seg(h), y_seg),
            "depth": F.mse_loss(self.depth(h).squeeze(-1), y_depth),
        }


class Defaults(Heads):
    """Fills in our arguments itself, like examples/multitask.py: ``None`` means its own default."""

    def __init__(self, loss_keys=None, loss_weights=None, **options) -> None:
        super().__init__(
            loss_keys=loss_keys or ["seg", "depth"],
            loss_weights={"depth": 0.5} if loss_weights is None else loss_weights,
            **options,
        )


class OwnWeighting(Heads):
    """Builds a weighting and an optimizer of its own: nothing to record, rebuilt on load."""

    def __init__(self, **options) -> None:
        super().__init__(
            weighting=UncertaintyWeighting(["seg", "depth"]),
            optimizer=lambda params: torch.optim.SGD(params, lr=0.05),
            **options,
        )


class Net(HyperparametersMixin, nn.Module):
    """A model to wrap that records its arguments (Lightning's mixin); tied weights and a
    non-persistent buffer, which a state dict omits."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Linear(6, hidden, bias=False)
        self.out = nn.Linear(hidden, 6, bias=False)
        self.out.weight = nn.Parameter(self.embed.weight.T.contiguous())
        self.tied = nn.Linear(hidden, hidden)
        self.tied_again = self.tied
        self.register_buffer("scale", torch.tensor(3.0), persistent=False)

    def forward(self, batch):
        x = batch[0]
        return {"recon": F.mse_loss(self.out(self.tied_again(self.embed(x))) * self.scale, x)}


class Plain(nn.Module):
    """A model to wrap that does not record its arguments."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.layer = nn.Linear(6, hidden)

    def forward(self, batch):
        return self.layer(batch[0]).pow(2).mean()


class Fixed(Weighting):
    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(1))

    def forward(self, losses, names):
        return self.logits.exp().expand(len(names))


def warmup(step: int) -> float:
    return min(1.0, step / 10)


def _fit_and_save(module, tmp_path, logger=None, name="last.ckpt"):
    trainer = make_trainer(logger, max_steps=3)
    trainer.fit(module, multitask_data())
    path = Path(tmp_path) / name
    trainer.save_checkpoint(path)
    return path


def _assert_same_state(module, loaded):
    for (name, p), q in zip(module.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(p, q.to(p.device)), name


def _no_bytes(value):
    if isinstance(value, dict):
        return all(_no_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_no_bytes(v) for v in value)
    return not isinstance(value, (bytes, bytearray))


def test_subclass_loads_with_its_own_and_the_base_arguments(tmp_path):
    module = Heads(
        hidden=5,
        loss_weights={"depth": 0.25},
        nonfinite="skip",
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2),
    )
    path = _fit_and_save(module, tmp_path)
    loaded = Heads.load_from_checkpoint(path)
    assert loaded.trunk.out_features == 5
    assert loaded.nonfinite == "skip"
    assert loaded.loss_weights.get("depth", 1.0) == 0.25
    assert loaded.optimizer_factory.func is torch.optim.SGD
    assert loaded.optimizer_factory.keywords == {"lr": 0.1}
    assert loaded.lr_scheduler_factory.func is torch.optim.lr_scheduler.StepLR
    assert loaded.lr_scheduler_factory.keywords == {"step_size": 2}
    _assert_same_state(module, loaded)


def test_a_subclass_that_builds_its_own_arguments_gets_them_once_on_load(tmp_path):
    module = OwnWeighting(hidden=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = _fit_and_save(module, tmp_path)
    assert not [w for w in caught if "cannot record" in str(w.message)]  # nothing to pass
    stored = torch.load(path, weights_only=True)["hyper_parameters"]
    assert "weighting" not in stored and "optimizer" not in stored
    loaded = OwnWeighting.load_from_checkpoint(path)  # not "got multiple values for weighting"
    assert type(loaded.weighting) is UncertaintyWeighting
    assert isinstance(loaded.configure_optimizers(), torch.optim.SGD)
    _assert_same_state(module, loaded)


def test_wrapped_model_and_weighting_are_rebuilt_from_class_paths(tmp_path):
    module = LossDictModule(
        Net(hidden=4),
        weighting=Fixed(),
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        loss_weights={"recon": 2.0},
    )
    path = _fit_and_save(module, tmp_path)
    stored = torch.load(path, weights_only=True)["hyper_parameters"]
    assert stored["model"] == {"class_path": "test_hparams.Net", "init_args": {"hidden": 4}}
    assert stored["weighting"] == {"class_path": "test_hparams.Fixed", "init_args": {}}
    assert stored["optimizer"] == {"class_path": "torch.optim.sgd.SGD", "init_args": {"lr": 0.1}}
    loaded = LossDictModule.load_from_checkpoint(path, weights_only=True)
    assert type(loaded.model) is Net and type(loaded.weighting) is Fixed
    assert loaded.model.embed.out_features == 4
    assert loaded.model.tied is loaded.model.tied_again
    assert loaded.model.scale.item() == 3.0  # not in the state dict: from the constructor
    _assert_same_state(module, loaded)
    assert loaded.optimizer_factory.keywords == {"lr": 0.1}
    batch = next(iter(multitask_data()))
    assert torch.equal(loaded.model(batch)["recon"], module.model(batch)["recon"])


def test_a_model_whose_arguments_are_unknown_is_named_at_saving_and_asked_for_at_loading(
    tmp_path,
):
    module = LossDictModule(Plain(hidden=5), optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    with pytest.warns(
        UserWarning, match=r"cannot record model \(test_hparams\.Plain.*model=\.\.\."
    ):
        path = _fit_and_save(module, tmp_path)
    with pytest.raises(ValueError, match=r"how to build model .*load_from_checkpoint\(path, model"):
        LossDictModule.load_from_checkpoint(path)
    loaded = LossDictModule.load_from_checkpoint(path, model=Plain(hidden=5))
    _assert_same_state(module, loaded)


def test_checkpoint_holds_the_wrapped_weights_once_and_no_code(tmp_path):
    big = nn.Sequential(nn.Linear(6, 512), nn.Linear(512, 512), nn.Linear(512, 6))

    class Reconstruct(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = big

        def forward(self, batch):
            return F.mse_loss(self.net(batch[0]), batch[0])

    module = LossDictModule(Reconstruct(), optimizer=functools.partial(torch.optim.SGD, lr=0.01))
    with pytest.warns(UserWarning, match="cannot record model .*Reconstruct is defined inside a"):
        path = _fit_and_save(module, tmp_path)  # a local class: named, left out, still saved
    weights = sum(p.numel() * p.element_size() for p in big.parameters())
    assert path.stat().st_size < 1.1 * weights
    checkpoint = torch.load(path, weights_only=True)
    assert _no_bytes(checkpoint)  # nothing pickled apart, for anyone to unpickle
    assert hparams.LEGACY_PICKLED not in checkpoint["lightning_losses"]
    assert hparams.is_not_saved(checkpoint["hyper_parameters"]["model"])


def test_a_user_meta_model_is_left_alone():
    with torch.device("meta"):
        meta = Net()
    assert LossDictModule(meta).model.embed.weight.is_meta


def test_a_lambda_optimizer_is_named_when_saved_and_when_loaded_without_it(tmp_path):
    module = Heads(optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    with pytest.warns(
        UserWarning, match=r"cannot record optimizer \(.*<lambda>, a lambda.*optimizer=\.\.\."
    ):
        path = _fit_and_save(module, tmp_path)
    with pytest.warns(UserWarning, match=r"does not record optimizer .*uses the default optimizer"):
        assert Heads.load_from_checkpoint(path).optimizer_factory is None
    given = functools.partial(torch.optim.SGD, lr=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # passed again: nothing to say
        assert Heads.load_from_checkpoint(path, optimizer=given).optimizer_factory is given


@pytest.mark.parametrize("mode", ["subclass", "wrap"])
def test_a_schedule_is_never_silently_dropped(tmp_path, mode):
    weights = {"seg": 2.0, "depth": lambda step: 0.5, "recon": warmup}
    if mode == "subclass":
        module, cls, rebuild = Heads(loss_weights=weights), Heads, {}
    else:
        module, cls, rebuild = LossDictModule(Net(), loss_weights=weights), LossDictModule, {}
    with pytest.warns(UserWarning) as saving:
        path = _fit_and_save(module, tmp_path)
    said = "\n".join(str(w.message) for w in saving)
    # a lambda and a module-level function alike: code is never stored
    assert "cannot record loss_weights['depth']" in said
    assert "cannot record loss_weights['recon']" in said and "test_hparams.warmup" in said
    assert "loss_weights={...}" in said
    with pytest.warns(UserWarning) as loading:
        loaded = cls.load_from_checkpoint(path, **rebuild)
    said = "\n".join(str(w.message) for w in loading)
    assert "does not record loss_weights['depth']" in said and "weighs 'depth' 1" in said
    assert "does not record loss_weights['recon']" in said
    assert loaded.loss_weights.get("seg", 1.0) == 2.0  # the constants are kept
    assert loaded.loss_weights.get("depth", 1.0) == 1.0
    again = cls.load_from_checkpoint(path, loss_weights=weights)
    assert again.loss_weights["depth"](7) == 0.5 and again.loss_weights["recon"] is warmup


def test_a_lambda_scheduler_is_named_and_a_partial_one_restored(tmp_path):
    module = Heads(lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 2))
    with pytest.warns(UserWarning, match="cannot record lr_scheduler"):
        path = _fit_and_save(module, tmp_path)
    with pytest.warns(UserWarning, match="does not record lr_scheduler"):
        assert Heads.load_from_checkpoint(path).lr_scheduler_factory is None


def test_every_checkpoint_resumes_with_weights_only(tmp_path):
    module = LossDictModule(
        Net(), weighting=Fixed(), optimizer=functools.partial(torch.optim.SGD, lr=0.1)
    )
    first = make_trainer(None, max_epochs=1)
    first.fit(module, multitask_data())
    path = tmp_path / "epoch.ckpt"
    first.save_checkpoint(path)
    torch.load(path, weights_only=True)
    resumed = LossDictModule(
        Net(), weighting=Fixed(), optimizer=functools.partial(torch.optim.SGD, lr=0.1)
    )
    trainer = make_trainer(None, max_epochs=2)
    trainer.fit(resumed, multitask_data(), ckpt_path=path, weights_only=True)
    assert trainer.global_step == 16
    safe = LossDictModule.load_from_checkpoint(path, weights_only=True)
    assert safe.optimizer_factory.keywords == {"lr": 0.1}
    assert torch.equal(safe.model.embed.weight, module.model.embed.weight)


@pytest.mark.parametrize("logger_class", [CSVLogger, TensorBoardLogger])
def test_hparams_yaml_is_plain_truthful_and_reloads(tmp_path, logger_class):
    module = Defaults(
        hidden=4,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        prog_bar=("loss", "seg"),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger = logger_class(tmp_path, name="run")
        path = _fit_and_save(module, tmp_path, logger=logger)
    assert not [w for w in caught if "cannot be pickled" in str(w.message)]
    yaml_path = Path(logger.log_dir) / "hparams.yaml"
    text = yaml_path.read_text()
    assert "!!python" not in text
    stored = load_hparams_from_yaml(yaml_path)
    # what LossDictModule.__init__ received, not the subclass's None placeholders
    assert stored["loss_keys"] == ["seg", "depth"]
    assert stored["loss_weights"] == {"depth": 0.5}
    assert stored["hidden"] == 4 and stored["prog_bar"] == ["loss", "seg"]
    assert stored["optimizer"] == {"class_path": "torch.optim.sgd.SGD", "init_args": {"lr": 0.1}}
    loaded = Defaults.load_from_checkpoint(path, hparams_file=yaml_path)
    assert loaded._core.select("seg") and loaded.loss_weights.get("depth", 1.0) == 0.5
    assert loaded.optimizer_factory.keywords == {"lr": 0.1}
    _assert_same_state(module, loaded)


def test_wrap_mode_hparams_yaml_says_what_was_left_out(tmp_path):
    module = LossDictModule(Plain(), loss_weights={"loss": lambda s: 1.0})
    logger = CSVLogger(tmp_path, name="run")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit_and_save(module, tmp_path, logger=logger)
    assert not [w for w in caught if "cannot be pickled" in str(w.message)]
    stored = load_hparams_from_yaml(Path(logger.log_dir) / "hparams.yaml")
    assert "test_hparams.Plain" in stored["model"]["not_saved"]
    assert "lambda" in stored["loss_weights"]["loss"]["not_saved"]


def test_skeletons_of_older_checkpoints_still_materialize():
    module = Net(hidden=4)
    with torch.device("meta"):
        copy = Net(hidden=4)
    copy.__dict__["_lightning_losses_skeleton"] = True
    assert hparams.is_skeleton(copy)
    built = LossDictModule(copy).model
    assert not built.embed.weight.is_meta and built.out.weight.shape == module.out.weight.shape
    assert built.tied is built.tied_again
