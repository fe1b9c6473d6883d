"""add_loss / add_metric from submodules: terms and metrics exactly as if forward returned them."""

from __future__ import annotations

import copy
import statistics
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import MemoryLogger, make_trainer
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader, TensorDataset

import lightning_losses as ll
from lightning_losses import LossDictModule
from lightning_losses.terms.added import _STEP

X = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
Y = torch.randn(32, generator=torch.Generator().manual_seed(1))


def data(batch_size: int = 8) -> DataLoader:
    return DataLoader(TensorDataset(X, Y), batch_size=batch_size)


class Block(nn.Module):
    """A layer that regularises its own activations and reports how many are dead."""

    def __init__(self, recompute: bool = False) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 4)
        self.recompute = recompute

    def inner(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer(x).relu()
        ll.add_loss("act_l1", 0.1 * h.abs().mean())
        ll.add_metric("dead_frac", (h <= 0).float().mean())
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.recompute:
            return checkpoint(self.inner, x, use_reentrant=False)
        return self.inner(x)


class Net(LossDictModule):
    """The same block applied twice, then a head: act_l1 is the sum of both applications."""

    def __init__(self, recompute: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("optimizer", lambda p: torch.optim.SGD(p, lr=0.1))
        super().__init__(**kwargs)
        torch.manual_seed(0)
        self.block, self.head = Block(recompute), nn.Linear(4, 1)
        self.records: list[dict[str, float]] = []

    def forward(self, batch: Any) -> Any:
        x, y = batch
        prediction = self.head(self.block(self.block(x))).squeeze(-1)
        return {"mse": F.mse_loss(prediction, y)}


def by_hand(net: Net, batch: Any) -> dict[str, torch.Tensor]:
    """What the regulariser and metric add, computed without add_loss."""
    x, y = batch
    h1 = net.block.layer(x).relu()
    h2 = net.block.layer(h1).relu()
    prediction = net.head(h2).squeeze(-1)
    return {
        "mse": F.mse_loss(prediction, y),
        "act_l1": 0.1 * h1.abs().mean() + 0.1 * h2.abs().mean(),
        "dead_frac": (h1 <= 0).float().mean() + (h2 <= 0).float().mean(),
    }


@pytest.mark.parametrize("recompute", [False, True], ids=["plain", "activation-checkpointing"])
def test_added_terms_are_logged_weighted_and_trained_exactly_once(recompute):
    model = Net(recompute=recompute, loss_weights={"act_l1": 2.0})
    reference = copy.deepcopy(model)
    batch = (X[:8], Y[:8])
    expected = by_hand(reference, batch)
    logger = MemoryLogger()
    make_trainer(logger, max_steps=1, log_every_n_steps=1).fit(model, data())
    (_, row), *_ = logger.rows
    assert row["train/mse"] == pytest.approx(float(expected["mse"]), rel=1e-6)
    assert row["train/act_l1"] == pytest.approx(float(expected["act_l1"]), rel=1e-6)
    assert row["train/dead_frac"] == pytest.approx(float(expected["dead_frac"]), rel=1e-6)
    total = expected["mse"] + 2.0 * expected["act_l1"]
    assert row["train/loss"] == pytest.approx(float(total), rel=1e-6)  # the metric is not summed
    assert row["weight/act_l1"] == 2.0
    total.backward()
    for (name, p0), p1 in zip(reference.named_parameters(), model.parameters()):
        torch.testing.assert_close(p1, p0 - 0.1 * p0.grad, msg=name)


def test_validation_sees_added_terms_and_metrics_like_returned_ones():
    model = Net()
    logger = MemoryLogger()
    make_trainer(logger, max_epochs=1, log_every_n_steps=50).fit(model, data(), data(16))
    model.eval()
    with torch.no_grad():
        per_batch = [by_hand(model, (X[i : i + 16], Y[i : i + 16])) for i in (0, 16)]
    (val,) = [row for _, row in logger.rows if "val/act_l1" in row]
    assert val["val/act_l1"] == pytest.approx(
        statistics.fmean(float(b["act_l1"]) for b in per_batch), rel=1e-6
    )
    assert val["val/loss"] == pytest.approx(
        statistics.fmean(float(b["mse"] + b["act_l1"]) for b in per_batch), rel=1e-6
    )
    assert val["val/dead_frac"] == pytest.approx(
        statistics.fmean(float(b["dead_frac"]) for b in per_batch), rel=1e-6
    )


def test_outside_a_step_both_calls_do_nothing_and_keep_nothing():
    model = Net()
    assert _STEP.get() is None
    model.block(X)  # plain inference, no Trainer
    model((X, Y))
    assert _STEP.get() is None
    ll.add_loss("free", torch.tensor(1.0))  # no step: ignored, no error
    assert _STEP.get() is None


def test_a_name_forward_also_returns_is_an_error_naming_it():
    class Clash(Net):
        def forward(self, batch: Any) -> Any:
            out = super().forward(batch)
            out["act_l1"] = out["mse"] * 0
            return out

    with pytest.raises(ValueError, match="forward returned 'act_l1' and add_loss/add_metric"):
        make_trainer(None, max_steps=1).fit(Clash(), data())


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: ll.add_loss("x", torch.ones(3)), "add_loss('x', value): value is a tensor"),
        (lambda: ll.add_loss("", torch.tensor(1.0)), "name is a value of type str"),
        (lambda: ll.add_metric("m", "high"), "add_metric('m', value): value is a value of type"),
    ],
)
def test_bad_values_name_the_call_and_what_was_expected(call, fragment):
    from lightning_losses.terms import added as context

    owner = object()
    context.open_step(owner, fresh=True)
    try:
        with pytest.raises(TypeError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            call()
    finally:
        context.close(owner)


def test_an_own_training_step_that_calls_total_loss_keeps_added_terms():
    class Own(Net):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return self.total_loss(self(batch))

        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            pass  # overridden without super(): forward opens the collection itself

    logger = MemoryLogger()
    model = Own()
    expected = by_hand(copy.deepcopy(model), (X[:8], Y[:8]))
    make_trainer(logger, max_steps=1, log_every_n_steps=1).fit(model, data())
    assert logger.rows[0][1]["train/act_l1"] == pytest.approx(float(expected["act_l1"]))


def test_a_nested_loss_dict_module_adds_to_the_outer_step():
    class Inner(LossDictModule):
        def __init__(self) -> None:
            super().__init__()
            self.block = Block()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.block(x)

    class Outer(LossDictModule):
        def __init__(self) -> None:
            super().__init__(optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
            self.inner, self.head = Inner(), nn.Linear(4, 1)

        def forward(self, batch: Any) -> Any:
            x, y = batch
            return {"mse": F.mse_loss(self.head(self.inner(x)).squeeze(-1), y)}

    logger = MemoryLogger()
    make_trainer(logger, max_steps=2, log_every_n_steps=1).fit(Outer(), data())
    assert all("train/act_l1" in row for _, row in logger.rows[:2])


def test_a_compiled_network_adds_the_same_values():
    eager = Net()
    compiled = copy.deepcopy(eager)
    # aot_eager traces through AOTAutograd like inductor does, without a C++ compiler
    compiled.block = torch.compile(compiled.block, backend="aot_eager")
    rows = []
    for model in (eager, compiled):
        logger = MemoryLogger()
        make_trainer(logger, max_steps=3, log_every_n_steps=1).fit(model, data())
        rows.append([row for _, row in logger.rows if "train/act_l1" in row])
    assert len(rows[0]) == 3
    for a, b in zip(*rows):
        assert a == pytest.approx(b, rel=1e-6)


def test_added_terms_take_their_own_route():
    class Routed(Net):
        def configure_optimizers(self) -> Any:
            return {
                "mse": torch.optim.SGD(self.head.parameters(), lr=0.1),
                "act_l1": torch.optim.SGD(self.block.parameters(), lr=0.1),
            }

    model = Routed()
    reference = copy.deepcopy(model)
    make_trainer(None, max_steps=1).fit(model, data())
    expected = by_hand(reference, (X[:8], Y[:8]))
    head_grads = torch.autograd.grad(expected["mse"], list(reference.head.parameters()))
    block_grads = torch.autograd.grad(expected["act_l1"], list(reference.block.parameters()))
    for p, p0, g in zip(model.head.parameters(), reference.head.parameters(), head_grads):
        torch.testing.assert_close(p, p0 - 0.1 * g)
    for p, p0, g in zip(model.block.parameters(), reference.block.parameters(), block_grads):
        torch.testing.assert_close(p, p0 - 0.1 * g)
