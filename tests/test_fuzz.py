"""Whatever ``forward`` returns, a run either trains or fails with a TypeError, ValueError or
FloatingPointError that names the offending key: never another exception, never a hang."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import make_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossDictModule
from lightning_losses.terms.parse import flatten

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ODD_KEYS = st.one_of(
    st.sampled_from(["", "/", "a/", "/a", "a//b", "a/b", "with space", "ünïcødé", "x" * 300]),
    st.text(min_size=0, max_size=12),
)
NUMBERS = st.sampled_from([0.0, 1.5, -2.0, math.nan, math.inf, -math.inf, 1e30])


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64]))
    shape = draw(st.sampled_from([(), (), (), (1,), (3,), (2, 2)]))
    value = draw(NUMBERS)
    tensor = torch.full(shape, value if dtype.is_floating_point else 3, dtype=dtype)
    return ("tensor", tensor, draw(st.booleans()))  # (kind, value, connect to a parameter)


LEAVES = st.one_of(
    tensors(),
    NUMBERS.map(lambda v: ("number", v, False)),
    st.integers(-5, 5).map(lambda v: ("number", v, False)),
    st.sampled_from([None, "a string", [1, 2], object()]).map(lambda v: ("other", v, False)),
)
OUTPUTS = st.recursive(
    LEAVES, lambda children: st.dictionaries(ODD_KEYS, children, max_size=4), max_leaves=8
)


class Returns(LossDictModule):
    """Returns the drawn structure, with floating tensors joined to a parameter when drawn so."""

    def __init__(self, drawn, nonfinite: str) -> None:
        super().__init__(nonfinite=nonfinite)
        self.w = nn.Parameter(torch.zeros(()))
        self.drawn = drawn

    def build(self, node):
        if isinstance(node, dict):
            return {key: self.build(child) for key, child in node.items()}
        kind, value, connect = node
        if kind == "tensor" and connect and value.dtype.is_floating_point:
            return value + (self.w * 0).to(value.dtype)
        return value

    def forward(self, batch):
        return self.build(self.drawn)


def keys_of(node, prefix=""):
    """Every key and joined name in the drawn structure (what an error may name)."""
    names = set()
    if isinstance(node, dict):
        for key, child in node.items():
            name = f"{prefix}/{key}" if prefix else key
            names |= {key, name} | keys_of(child, name)
    return names


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(drawn=OUTPUTS, nonfinite=st.sampled_from(["raise", "skip", "off"]))
def test_any_return_trains_or_fails_naming_the_key(drawn, nonfinite):
    module = Returns(drawn, nonfinite)
    data = DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2)
    trainer = make_trainer(None, max_steps=2, log_every_n_steps=1, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            trainer.fit(module, data)
        except (TypeError, ValueError, FloatingPointError) as error:
            message = str(error)
            names = keys_of(drawn) if isinstance(drawn, dict) else set()
            if isinstance(drawn, dict) and drawn:
                assert any(repr(n) in message for n in names), message
            else:  # a bare leaf: the message says what forward returned
                assert "forward returned" in message or "loss" in message, message
            return
    # it trained: both batches ran (a batch with nothing to learn still counts as a step)
    assert trainer.global_step == 2


def test_odd_key_names_reach_csv_and_tensorboard_unchanged(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    names = ["with space", "ünïcødé", "comma,inside", "x" * 300, "nested/deeper/term"]

    class Odd(LossDictModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, batch):
            return {name: self.w * (i + 1) for i, name in enumerate(names)}

    csv, tb = CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")
    data = DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=1)
    make_trainer([csv, tb], max_steps=2, log_every_n_steps=1).fit(Odd(), data)
    import csv as csv_module

    with (tmp_path / "csv" / "version_0" / "metrics.csv").open(newline="") as handle:
        header = next(csv_module.reader(handle))
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"))
    events.Reload()
    expected = {f"train/{n}" for n in names}
    assert expected <= set(header)
    assert expected <= set(events.Tags()["scalars"])
    assert flatten({"a": {"b c": 1}}) == {"a/b c": 1}
