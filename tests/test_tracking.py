"""On-device accumulators and the registry protocol that lets ranks agree on slots."""

import math

import pytest
import torch

from lightning_losses.logging.accumulators import MeanAccumulator
from lightning_losses.logging.registry import KeyRegistry

CPU = torch.device("cpu")


def add(acc, names, values, weight=1.0):
    slots = torch.tensor(acc.registry.slots(names))
    acc.update(tuple(names), slots, torch.tensor(values, dtype=torch.float64), weight)
    return slots


def test_means_over_steps_where_each_key_was_present():
    acc = MeanAccumulator(KeyRegistry())
    add(acc, ["a", "b"], [1.0, 10.0])
    add(acc, ["a"], [3.0])
    add(acc, ["b", "c"], [20.0, 5.0])
    assert acc.compute(CPU, distributed=False).means == {"a": 2.0, "b": 15.0, "c": 5.0}


def test_weighted_means_and_reset_drops_absent_keys():
    acc = MeanAccumulator(KeyRegistry())
    add(acc, ["v"], [1.0], weight=3.0)
    add(acc, ["v"], [5.0], weight=1.0)
    assert acc.compute(CPU, distributed=False).means == {"v": 2.0}
    acc.reset()
    add(acc, ["w"], [4.0])
    assert acc.compute(CPU, distributed=False).means == {"w": 4.0}


def test_first_nonfinite_step_per_key():
    acc = MeanAccumulator(KeyRegistry())
    for step, values in enumerate([[1.0, 1.0], [1.0, math.inf], [math.nan, math.nan]]):
        slots = add(acc, ["a", "b"], values)
        acc.note_nonfinite(slots, torch.tensor(values, dtype=torch.float64), step)
    assert acc.compute(CPU, distributed=False).nonfinite == {"a": (2, 0), "b": (1, 0)}


def test_capacity_grows_without_losing_values():
    acc = MeanAccumulator(KeyRegistry())
    names = [f"k{i}" for i in range(40)]
    for i, name in enumerate(names):
        add(acc, [name], [float(i)])
    assert acc.compute(CPU, distributed=False).means == {n: float(i) for i, n in enumerate(names)}


def test_adopt_merges_pending_names_deterministically_and_moves_values():
    # Two "ranks" discovered keys in different orders; both adopt the same gathered lists.
    registry_0, registry_1 = KeyRegistry(), KeyRegistry()
    acc_0, acc_1 = MeanAccumulator(registry_0), MeanAccumulator(registry_1)
    add(acc_0, ["x", "y"], [1.0, 2.0])
    add(acc_1, ["z", "y"], [3.0, 4.0])
    gathered = [registry_0.pending, registry_1.pending]
    registry_0.adopt(gathered)
    registry_1.adopt(gathered)
    assert registry_0.names == registry_1.names == ["x", "y", "z"]
    assert registry_0.agreed == 3 and registry_0.pending == []
    assert acc_0.compute(CPU, distributed=False).means == {"x": 1.0, "y": 2.0}
    assert acc_1.compute(CPU, distributed=False).means == {"z": 3.0, "y": 4.0}


def test_long_accumulation_keeps_float64_precision():
    # 10^5 steps of a float32 value that float32 running sums get visibly wrong.
    acc = MeanAccumulator(KeyRegistry())
    slots = torch.tensor(acc.registry.slots(["a"]))
    value = torch.tensor([0.1], dtype=torch.float32).double()
    for _ in range(100_000):
        acc.update(("a",), slots, value)
    reference = float(value)  # the mean of identical values is the value
    assert acc.compute(CPU, distributed=False).means["a"] == pytest.approx(reference, rel=1e-12)


def test_120k_steps_of_windows_draining_into_an_epoch_match_a_float64_reference():
    # Values spanning 8 orders of magnitude, as a loss early and late in training does; the
    # window is written (and drained into the epoch) every 1000 steps, like a real run.
    g = torch.Generator().manual_seed(0)
    steps = 120_000
    values = (
        torch.rand(steps, 2, generator=g) * 10.0 ** torch.randint(-4, 4, (steps, 1), generator=g)
    ).float()
    registry = KeyRegistry()
    window, epoch = MeanAccumulator(registry), MeanAccumulator(registry)
    slots = torch.tensor(registry.slots(["a", "b"]))
    names = ("a", "b")
    window_means = []
    for step in range(steps):
        window.update(names, slots, values[step].double())
        if (step + 1) % 1000 == 0:
            window.drain_into(epoch)
            window_means.append(window.compute(CPU, distributed=False).means["a"])
            window.reset()
    column = values[:, 0].tolist()  # the float32 values, exactly, as Python floats
    assert epoch.compute(CPU, distributed=False).means["a"] == pytest.approx(
        math.fsum(column) / steps, rel=1e-13
    )
    assert window_means[-1] == pytest.approx(math.fsum(column[-1000:]) / 1000, rel=1e-13)
    # what a float32 running sum would have written instead: visibly off
    float32_sum = torch.zeros((), dtype=torch.float32)
    for chunk in values[:, 0].split(1000):
        float32_sum += chunk.sum()
    assert abs(float32_sum.item() / steps / (math.fsum(column) / steps) - 1) > 1e-8


def test_drain_feeds_another_accumulator_only_what_is_new():
    registry = KeyRegistry()
    window, epoch = MeanAccumulator(registry), MeanAccumulator(registry)
    add(window, ["a"], [1.0])
    add(window, ["a"], [3.0])
    window.drain_into(epoch)  # epoch end inside a window
    assert epoch.compute(CPU, distributed=False).means == {"a": 2.0}
    epoch.reset()
    add(window, ["a"], [10.0])
    window.drain_into(epoch)  # the window's write: only the step after the epoch end is new
    assert window.compute(CPU, distributed=False).means == {"a": 14.0 / 3}
    assert epoch.compute(CPU, distributed=False).means == {"a": 10.0}


def test_registry_and_accumulators_survive_pickling_and_still_move_together():
    import copy

    registry = KeyRegistry()
    acc = MeanAccumulator(registry)
    add(acc, ["x"], [2.0])
    clone = copy.deepcopy(acc)  # also what ddp_spawn's pickling does
    clone.registry.adopt([[("y", "term")], clone.registry.pending])
    assert clone.registry.names == ["y", "x"]
    assert clone.compute(CPU, distributed=False).means == {"x": 2.0}
    assert acc.compute(CPU, distributed=False).means == {"x": 2.0}
