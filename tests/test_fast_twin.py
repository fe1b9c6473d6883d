"""The fast step against its slow twin, on the same drawn inputs (API.md section 1, 0.4).

Hypothesis draws what ``forward`` returns at each step from a few keys, after a fast plan
exists: a key's value changes kind (a loss, a grad-less zero, a detached loss, an integer tensor,
a Python float, a vector or ``(1,)`` tensor that carries a gradient, ``None``), keys come and go,
their order changes, a whole batch returns ``None``. The same script runs twice: with the
defaults (the fast step wherever a plan's facts hold) and with ``nonfinite="skip"``, which takes
the full path at every step and, for finite values, changes nothing else. Every logged cell,
every parameter, every warning of ours and any error (its type, message and step) must be the
same. The model is float64, so a difference of order shows.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from conftest import MemoryLogger, make_trainer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossDictModule, LossDictWarning
from lightning_losses.weighting import UncertaintyWeighting

KEYS = ("a", "b", "c")
KINDS = ("term", "term", "term", "zero", "detached", "int", "float", "vector", "one", "none")


#: What combines the terms: the fast step's total is formed differently for each.
OPTIONS = {
    "plain": {},
    "weights": {"loss_weights": {"b": 0.5, "c": 2.0}},
    "uncertainty": {"weighting": "uw"},
    "routes": {"routes": True},
}


class Scripted(LossDictModule):
    def __init__(self, script: list[Any], routes: bool = False, **kwargs: Any) -> None:
        if kwargs.get("weighting") == "uw":
            kwargs["weighting"] = UncertaintyWeighting(list(KEYS), init_log_variance=0.3)
        super().__init__(optimizer=lambda p: torch.optim.SGD(p, lr=0.05), **kwargs)
        torch.manual_seed(0)
        self.trunk = nn.Linear(4, 6).double()
        self.heads = nn.ModuleDict({k: nn.Linear(6, 1).double() for k in KEYS})
        self.script = script
        self.calls = 0
        self.routes = routes
        if self.weighting is not None:
            self.weighting.double()

    def configure_optimizers(self) -> Any:
        if not self.routes:
            return super().configure_optimizers()
        heads = {k: torch.optim.SGD(self.heads[k].parameters(), lr=0.05) for k in KEYS}
        params = [*self.trunk.parameters()]
        return {**heads, "loss": torch.optim.SGD(params, lr=0.05, momentum=0.5)}

    def forward(self, batch: Any) -> Any:
        (x,) = batch
        step = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        if step is None:
            return None
        h = self.trunk(x).tanh()
        out: dict[str, Any] = {}
        for key, kind in step:
            y = self.heads[key](h).squeeze(-1)
            loss = y.pow(2).mean()
            out[key] = {
                "term": loss,
                "zero": torch.zeros((), dtype=torch.float64),
                "detached": loss.detach(),
                "int": torch.tensor(3),
                "float": 0.5,
                "vector": y,
                "one": loss.reshape(1),
                "none": None,
            }[kind]
        return out


def run(script: list[Any], every: int, **kwargs: Any) -> dict[str, Any]:
    logger = MemoryLogger()
    model = Scripted(script, **kwargs)
    x = torch.randn(
        4 * len(script), 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            make_trainer(logger, max_steps=len(script), log_every_n_steps=every).fit(
                model, DataLoader(TensorDataset(x), batch_size=4)
            )
        except (TypeError, ValueError) as e:
            error = (type(e), str(e), model.calls)
    # (nonfinite="skip" also writes its count, the only difference it makes for finite values)
    rows = [
        (step, {k: v for k, v in row.items() if k != "train/skipped_steps"})
        for step, row in logger.rows
        if set(row) - {"train/skipped_steps", "epoch"}
    ]
    ours = sorted({str(w.message) for w in caught if issubclass(w.category, LossDictWarning)})
    return {"rows": rows, "params": list(model.parameters()), "error": error, "warnings": ours}


steps = st.one_of(
    st.none(),
    st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(KINDS)), min_size=1, max_size=3).map(
        lambda pairs: tuple(dict(pairs).items())
    ),  # unique keys, in the drawn order
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(
    first=st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True),
    later=st.lists(steps, min_size=3, max_size=7),
    every=st.integers(1, 4),
    options=st.sampled_from(sorted(OPTIONS)),
)
def test_the_fast_step_logs_and_trains_what_the_full_path_does(first, later, every, options):
    # two identical steps of plain terms first: a fast plan exists when the changes begin
    plain = tuple((key, "term") for key in first)
    script = [plain, plain, *later]
    chosen = OPTIONS[options]
    fast, full = run(script, every, **chosen), run(script, every, nonfinite="skip", **chosen)
    assert fast["error"] == full["error"]
    assert fast["warnings"] == full["warnings"]
    assert [(s, sorted(r)) for s, r in fast["rows"]] == [(s, sorted(r)) for s, r in full["rows"]]
    for (step, row), (_, twin) in zip(fast["rows"], full["rows"]):
        assert row == pytest.approx(twin, rel=1e-12, abs=1e-15), step
    for p, q in zip(fast["params"], full["params"]):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-15)
