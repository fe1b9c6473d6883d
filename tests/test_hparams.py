"""load_from_checkpoint without arguments, in subclass and wrap mode."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from conftest import make_trainer, multitask_data
from torch import nn

from lightning_losses import LossDictModule, Weighting, hparams


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


class Net(nn.Module):
    """A model to wrap: tied weights and a non-persistent buffer, which a state dict omits."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.embed = nn.Linear(6, hidden, bias=False)
        self.out = nn.Linear(hidden, 6, bias=False)
        self.out.weight = nn.Parameter(self.embed.weight.T.contiguous())
        self.tied = nn.Linear(hidden, hidden)
        self.tied_again = self.tied
        self.register_buffer("scale", torch.tensor(3.0), persistent=False)

    def forward(self, batch):
        x = batch[0]
        return {"recon": F.mse_loss(self.out(self.tied_again(self.embed(x))) * self.scale, x)}


class Fixed(Weighting):
    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(1))

    def forward(self, losses, names):
        return self.logits.exp().expand(len(names))


def _fit_and_save(module, tmp_path):
    trainer = make_trainer(None, max_steps=3)
    trainer.fit(module, multitask_data())
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_subclass_loads_with_its_own_and_the_base_arguments(tmp_path):
    module = Heads(hidden=5, loss_weights={"depth": 0.25}, nonfinite="skip")
    path = _fit_and_save(module, tmp_path)
    loaded = Heads.load_from_checkpoint(path)
    assert loaded.trunk.out_features == 5
    assert loaded.nonfinite == "skip"
    assert loaded._weights.resolve("depth") == 0.25
    for (name, p), q in zip(module.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(p, q), name


def test_wrapped_model_and_weighting_load_without_arguments(tmp_path):
    module = LossDictModule(
        Net(hidden=4),
        weighting=Fixed(),
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        loss_weights={"recon": 2.0},
    )
    path = _fit_and_save(module, tmp_path)
    loaded = LossDictModule.load_from_checkpoint(path)
    assert type(loaded.model) is Net and type(loaded.weighting) is Fixed
    assert loaded.model.tied is loaded.model.tied_again
    assert loaded.model.scale.item() == 3.0  # not in the state dict: kept from the skeleton
    for (name, p), q in zip(module.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(p, q.to(p.device)), name
    assert loaded.optimizer_factory.keywords == {"lr": 0.1}
    batch = next(iter(multitask_data()))
    assert torch.equal(loaded.model(batch)["recon"], module.model(batch)["recon"])


def test_checkpoint_holds_the_wrapped_weights_once(tmp_path):
    big = nn.Sequential(nn.Linear(6, 512), nn.Linear(512, 512), nn.Linear(512, 6))

    class Reconstruct(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = big

        def forward(self, batch):
            return F.mse_loss(self.net(batch[0]), batch[0])

    module = LossDictModule(Reconstruct(), optimizer=functools.partial(torch.optim.SGD, lr=0.01))
    with pytest.warns(UserWarning, match="hyperparameter 'model' .* cannot be pickled"):
        path = _fit_and_save(module, tmp_path)  # a local class: named, left out, still saved
    weights = sum(p.numel() * p.element_size() for p in big.parameters())
    assert path.stat().st_size < 1.3 * weights


def test_skeleton_is_small_and_a_user_meta_model_is_left_alone(tmp_path):
    module = LossDictModule(Net(hidden=256), optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    path = _fit_and_save(module, tmp_path)
    checkpoint = torch.load(path, weights_only=True)  # resuming needs nothing more
    assert "model" not in checkpoint["hyper_parameters"]
    stored = hparams.unpickle(checkpoint["lightning_losses"]["pickled_hyper_parameters"])
    assert all(p.is_meta for p in stored["model"].parameters())
    assert len(checkpoint["lightning_losses"]["pickled_hyper_parameters"]) < 10_000
    with torch.device("meta"):
        meta = Net()
    assert LossDictModule(meta).model.embed.weight.is_meta


def test_a_lambda_optimizer_is_dropped_and_the_default_used_on_load(tmp_path):
    path = _fit_and_save(Heads(optimizer=lambda p: torch.optim.SGD(p, lr=0.1)), tmp_path)
    assert Heads.load_from_checkpoint(path).optimizer_factory is None


def test_every_checkpoint_resumes_with_weights_only_and_rebuilds_code_only_on_request(tmp_path):
    module = LossDictModule(
        Net(), weighting=Fixed(), optimizer=functools.partial(torch.optim.SGD, lr=0.1)
    )
    first = make_trainer(None, max_epochs=1)
    first.fit(module, multitask_data())
    path = tmp_path / "epoch.ckpt"
    first.save_checkpoint(path)
    resumed = LossDictModule(
        Net(), weighting=Fixed(), optimizer=functools.partial(torch.optim.SGD, lr=0.1)
    )
    trainer = make_trainer(None, max_epochs=2)
    trainer.fit(resumed, multitask_data(), ckpt_path=path)  # torch's weights_only default
    assert trainer.global_step == 16
    with pytest.raises(RuntimeError, match="Unexpected key"):  # no skeleton was unpickled
        LossDictModule.load_from_checkpoint(path, weights_only=True)
    safe = LossDictModule.load_from_checkpoint(
        path, weights_only=True, model=Net(), weighting=Fixed()
    )
    assert safe.optimizer_factory is None  # the partial is code: not unpickled
    assert torch.equal(safe.model.embed.weight, module.model.embed.weight)
