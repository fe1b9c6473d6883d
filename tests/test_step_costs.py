"""The per-step floor (API.md section 3): what a non-writing training step adds to a plain
LightningModule twin doing the same model and optimizer work, counted deterministically by
benchmarks/step_costs.py (aten ops through a dispatch mode, Python and C calls through a
profile hook)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import step_costs

CONFIGURATIONS = list(step_costs.configurations(1))


@pytest.fixture(scope="module")
def added() -> dict[int, dict[str, step_costs.Counts]]:
    return {k: step_costs.added_costs(k) for k in (1, 128)}


@pytest.mark.parametrize("name", CONFIGURATIONS)
@pytest.mark.parametrize("k", [1, 128])
def test_a_non_writing_step_adds_at_most_three_ops_and_twenty_calls(
    added: dict[int, dict[str, step_costs.Counts]], name: str, k: int
) -> None:
    counts = added[k][name]
    assert counts.ops <= (10 if "routes" in name else 3), counts
    if name != "2 routes":  # against one SGD: a second torch optimizer's own step and
        # zero_grad cost about 60 Python calls that no router can avoid; against a hand-made
        # pair of optimizers ("2 routes vs 2 optimizers") the routes add at most 20
        assert counts.calls <= 20, counts


@pytest.mark.parametrize("name", CONFIGURATIONS)
def test_c_level_calls_are_flat_in_the_number_of_terms(
    added: dict[int, dict[str, step_costs.Counts]], name: str
) -> None:
    assert added[128][name].c_calls <= added[1][name].c_calls + 2, (
        added[1][name],
        added[128][name],
    )
