"""Mistakes are said at the first training step, with the fix, at the user's own code (API.md §6).

Each test records the warnings issued up to the end of the first training batch (a callback
takes the list there), so that a message that only comes at the end of the first epoch fails it.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import MultiTask, make_trainer, multitask_data
from torch import nn

from lightning_losses import LossDictModule
from lightning_losses._warnings import LossDictWarning, user_code
from lightning_losses.terms.patterns import closest
from lightning_losses.weighting import UncertaintyWeighting

HERE = __file__


class FirstBatch(L.Callback):
    """Keeps what ``caught`` holds at the end of the first training batch."""

    def __init__(self, caught: list[warnings.WarningMessage]) -> None:
        self.caught = caught
        self.seen: list[warnings.WarningMessage] | None = None

    def on_train_batch_end(self, *args: Any) -> None:
        if self.seen is None:
            self.seen = list(self.caught)


def first_batch_warnings(module: L.LightningModule, **trainer: Any) -> list[Any]:
    """The warnings of ours issued by the end of the first training batch of a 1-epoch fit."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seen = FirstBatch(caught)
        make_trainer(None, callbacks=[seen], **trainer).fit(module, multitask_data())
    assert seen.seen is not None
    return [w for w in seen.seen if issubclass(w.category, LossDictWarning)]


def line_of(function: Any) -> int:
    return inspect.unwrap(function).__code__.co_firstlineno


class Tasks(LossDictModule):
    """Two heads on a trunk, its own ``__init__``, ``forward`` and ``configure_optimizers``."""

    def __init__(self, routes: dict[str, str] | None = None, **kwargs: Any) -> None:
        """``routes``: route name -> the layers (names, space-separated) its optimizer holds."""
        super().__init__(**kwargs)
        torch.manual_seed(0)
        self.trunk, self.seg, self.reg = nn.Linear(6, 8), nn.Linear(8, 3), nn.Linear(8, 1)
        self.routes = routes

    def forward(self, batch: Any) -> Any:
        x, y, z = batch
        h = self.trunk(x).relu()
        return {"seg": F.cross_entropy(self.seg(h), y), "reg": self.regression(h, z)}

    def regression(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.reg(h).squeeze(-1), z)

    def configure_optimizers(self) -> Any:
        if self.routes is None:
            return torch.optim.SGD(self.parameters(), lr=0.1)
        return {
            route: torch.optim.SGD(
                [p for layer in layers.split() for p in getattr(self, layer).parameters()], lr=0.1
            )
            for route, layers in self.routes.items()
        }


# ------------------------------------------------------------------------------------------
# the suggestion itself
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "names", "meant"),
    [
        ("regg", ["seg", "reg"], "reg"),
        ("depht", ["seg", "depth"], "depth"),
        ("Seg", ["seg", "depth"], "seg"),
        ("auz/*", ["aux/cls", "seg"], "aux/cls"),  # a pattern: its fixed start
        ("*_los", ["box_loss", "seg"], "box_loss"),  # ... or its fixed end
        ("recon", ["kl", "reconstruction"], None),  # an abbreviation is no typo
        ("aux/*", ["seg", "depth"], None),
        ("*seg*", ["seg"], None),  # nothing fixed to compare
    ],
)
def test_closest_finds_the_name_a_typo_meant(entry, names, meant):
    assert closest(entry, names) == meant


# ------------------------------------------------------------------------------------------
# loss_weights
# ------------------------------------------------------------------------------------------


def test_a_misspelt_weight_is_named_with_the_term_at_the_first_step_and_at_the_user_code():
    [warning] = first_batch_warnings(Tasks(loss_weights={"regg": 0.5}))
    message = str(warning.message)
    assert message.startswith(
        "loss_weights entry 'regg' matches no loss term of this step (terms: 'seg', 'reg'); "
        "did you mean 'reg'? Until it is renamed, 'reg' weighs 1."
    )
    # at the __init__ that passes loss_weights, not at a line of the library
    assert (warning.filename, warning.lineno) == (HERE, line_of(Tasks.__init__))


def test_a_misspelt_weight_pattern_is_named_at_the_first_step():
    class Aux(Tasks):
        def forward(self, batch: Any) -> Any:
            out = super().forward(batch)
            return {"aux/seg": out["seg"], "aux/reg": out["reg"]}

    [warning] = first_batch_warnings(Aux(loss_weights={"auz/*": 0.5}))
    assert "loss_weights pattern 'auz/*' matches no loss term" in str(warning.message)
    assert "did you mean a pattern for 'aux/reg'?" in str(warning.message)


def test_a_weight_for_an_optional_term_is_no_typo_of_a_weighted_one():
    # "reg" is close to "seg", but "seg" has its own entry: "reg" is a term still to come
    assert first_batch_warnings(MultiTask(loss_weights={"seg": 1.0, "reg": 2.0})) == []
    # and each entry that matches says nothing at all
    assert first_batch_warnings(Tasks(loss_weights={"seg": 1.0, "re*": 2.0})) == []


def test_a_misspelt_weight_is_said_once_and_still_named_after_the_first_epoch():
    with pytest.warns(UserWarning) as record:
        make_trainer(None, max_epochs=2).fit(Tasks(loss_weights={"regg": 0.5}), multitask_data())
    said = [str(w.message) for w in record if "'regg'" in str(w.message)]
    assert len(said) == 2
    assert "did you mean 'reg'?" in said[0]
    assert said[1].startswith("loss_weights entry 'regg' matched no loss term during the first")


# ------------------------------------------------------------------------------------------
# optimizer routes and loss_keys
# ------------------------------------------------------------------------------------------


def test_a_misspelt_route_is_named_with_the_term_at_the_first_step_and_configure_optimizers():
    module = Tasks(routes={"seg": "seg trunk", "regg": "reg"})
    [warning] = first_batch_warnings(module)
    message = str(warning.message)
    assert message.startswith("loss term 'reg' belongs to no optimizer route")
    assert message.endswith(
        "The name 'regg' in the routes matches no term of this step: did you mean 'reg'?"
    )
    assert (warning.filename, warning.lineno) == (HERE, line_of(Tasks.configure_optimizers))


def test_a_term_in_no_route_far_from_every_route_name_gets_no_suggestion():
    [warning] = first_batch_warnings(Tasks(routes={"seg": "seg trunk", "depth": "reg"}))
    assert "did you mean" not in str(warning.message)


def test_a_misspelt_loss_key_is_named_with_the_key_at_the_first_step():
    [warning] = first_batch_warnings(Tasks(loss_keys=["seg", "regg"]))
    assert str(warning.message).startswith(
        "loss_keys entry 'regg' matches no returned key; did you mean 'reg'? Until it is "
        "renamed, 'reg' is not a loss term"
    )
    assert (warning.filename, warning.lineno) == (HERE, line_of(Tasks.__init__))


def test_a_weighting_term_list_with_a_typo_suggests_the_listed_name():
    module = Tasks(weighting=UncertaintyWeighting(["seg", "regg"]))
    with pytest.raises(ValueError, match=r"is .reg. the listed .regg. misspelt\?"):
        make_trainer(None, max_steps=1).fit(module, multitask_data())


# ------------------------------------------------------------------------------------------
# unreduced losses
# ------------------------------------------------------------------------------------------


class Unreduced(Tasks):
    def regression(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.reg(h).squeeze(-1), z, reduction="none")


@pytest.mark.parametrize(
    "kwargs",
    [{"loss_weights": {"reg": 0.5}}, {"routes": {"seg": "seg", "reg": "reg", "loss": "trunk"}}],
    ids=["weight", "route"],
)
def test_an_unreduced_loss_named_by_a_weight_or_a_route_is_an_error_at_the_first_step(kwargs):
    with pytest.raises(TypeError) as raised:
        make_trainer(None, max_steps=1).fit(Unreduced(**kwargs), multitask_data())
    assert str(raised.value).startswith(
        "loss term 'reg' is a tensor of shape (8,) and dtype torch.float32 that carries a "
        "gradient; expected a 0-dim floating tensor."
    )
    assert "reduce it in forward (a forgotten .mean()?" in str(raised.value)


def test_an_unreduced_loss_nothing_names_gets_one_warning_at_forward_and_nothing_else():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(None, max_epochs=2).fit(Unreduced(), multitask_data())
    ours = [w for w in caught if issubclass(w.category, LossDictWarning)]
    [warning] = [w for w in caught if "'reg'" in str(w.message)]
    assert ours == [warning]
    assert "forgotten .mean()" in str(warning.message)
    assert (warning.filename, warning.lineno) == (HERE, line_of(Tasks.forward))


def test_a_loss_of_shape_one_beside_terms_is_not_dropped_silently():
    class ShapeOne(Tasks):
        def regression(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            return F.mse_loss(self.reg(h).squeeze(-1), z).view(1)

    [warning] = first_batch_warnings(ShapeOne())
    assert "forward returned 'reg', a tensor of shape (1,)" in str(warning.message)
    assert "needs .squeeze()" in str(warning.message)


# ------------------------------------------------------------------------------------------
# where warnings point
# ------------------------------------------------------------------------------------------


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seg, self.reg = nn.Linear(6, 3), nn.Linear(6, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> Any:
        return {
            "seg": F.cross_entropy(self.seg(x), y),
            "reg": F.mse_loss(self.reg(x).squeeze(-1), z, reduction="none"),
        }


def test_a_wrapped_models_warning_points_at_its_forward():
    [warning] = first_batch_warnings(LossDictModule(Model()))
    assert (warning.filename, warning.lineno) == (HERE, line_of(Model.forward))
    assert user_code(LossDictModule(Model()), "configure_optimizers") == (
        HERE,
        line_of(Model.forward),
    )


def test_a_model_without_user_code_is_named_in_the_message():
    # a model from an installed package: no line of the user's to show, so its class is named
    module = LossDictModule(nn.Linear(6, 1))
    assert user_code(module) is None
    from lightning_losses import _warnings

    with pytest.warns(LossDictWarning, match=r"^LossDictModule: something") as record:
        _warnings.warn("something", owner=module)
    assert record[0].filename == HERE  # the first line outside the library: this call


def test_only_rank_zero_warns(monkeypatch):
    from lightning.pytorch.utilities import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert first_batch_warnings(Tasks(loss_weights={"regg": 0.5})) == []


def test_a_weighted_loss_returned_as_a_number_is_named_at_the_first_step():
    class Item(Tasks):
        def regression(self, h: torch.Tensor, z: torch.Tensor) -> Any:
            return super().regression(h, z).item()  # the gradient is gone

    said = [str(w.message) for w in first_batch_warnings(Item(loss_weights={"reg": 0.5}))]
    assert said[0].startswith(
        "forward returned 'reg' as a value of type float, which is logged as a metric, but the "
        "configuration names 'reg' as a loss term"
    )
    assert ".item() and float() drop its gradient" in said[0]


def test_a_weight_for_a_name_returned_as_a_metric_is_no_typo():
    from lightning_losses.weighting.static import LossWeights

    weights = LossWeights({"reg": 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        weights.plan(("seg",), returned=("reg",))  # 'reg' is there, as a metric
    with pytest.warns(LossDictWarning, match="did you mean 'seg'"):
        LossWeights({"reg": 0.5}).plan(("seg",))
