"""Gradient diagnostics: exact values on the shared parameters, and a step left untouched."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import MemoryLogger, MultiTask, make_trainer, multitask_data

from lightning_losses.gradients.diagnostics import diagnostic_names, gradient_statistics


def test_norms_and_cosines_of_known_gradients():
    w = torch.zeros(3, requires_grad=True)
    a, b = torch.tensor([1.0, 2.0, 2.0]), torch.tensor([-2.0, 0.0, 1.0])
    unrelated = torch.ones((), requires_grad=True)
    values = gradient_statistics([w @ a, w @ b, unrelated * 2], [w])
    # norms 3, sqrt(5), 0; cos(a, b) = 0/(3*sqrt 5) = 0, anything with a zero gradient is 0
    assert values.tolist() == pytest.approx([3.0, math.sqrt(5.0), 0.0, 0.0, 0.0, 0.0])
    values = gradient_statistics([w @ a, -(w @ a) * 2], [w])
    assert values.tolist() == pytest.approx([3.0, 6.0, -1.0])


def test_names_cover_every_term_and_every_pair_once():
    assert diagnostic_names(("seg", "depth", "rpn/cls")) == (
        "grad_norm/seg",
        "grad_norm/depth",
        "grad_norm/rpn/cls",
        "grad_cos/seg_vs_depth",
        "grad_cos/seg_vs_rpn/cls",
        "grad_cos/depth_vs_rpn/cls",
    )


def _trunk_statistics(model: MultiTask, batch) -> list[float]:
    losses = model.losses(batch)
    trunk = list(model.trunk.parameters())
    grads = [torch.autograd.grad(losses[k], trunk, retain_graph=True) for k in ("seg", "depth")]
    flat = [torch.cat([g.reshape(-1) for g in gs]).double() for gs in grads]
    cos = torch.dot(flat[0], flat[1]) / (flat[0].norm() * flat[1].norm())
    return [flat[0].norm().item(), flat[1].norm().item(), cos.item()]


def test_logged_values_equal_a_hand_computation_on_the_trunk_and_training_is_unchanged():
    data = multitask_data()
    batches = list(data)
    logger = MemoryLogger()
    diagnosed = MultiTask(grad_diagnostics_every_n_steps=4)
    reference = MultiTask()
    expected = _trunk_statistics(MultiTask(), batches[0])  # step 0, initial weights

    make_trainer(logger, max_steps=8, log_every_n_steps=4).fit(diagnosed, data)
    make_trainer(None, max_steps=8, log_every_n_steps=4).fit(reference, data)

    names = ["grad_norm/seg", "grad_norm/depth", "grad_cos/seg_vs_depth"]
    # steps 0 and 4 are diagnosed; the writes after steps 3 and 7 carry one each
    first = [dict(logger.series(n))[3] for n in names]
    assert first == pytest.approx(expected, rel=1e-6)
    assert [step for step, _ in logger.series("grad_norm/seg")] == [3, 7]
    # the heads are reached by one term each: only the trunk is shared
    for p, q in zip(diagnosed.parameters(), reference.parameters()):
        assert torch.equal(p, q)
    assert "train/grad_norm/seg_epoch" not in {k for _, m in logger.rows for k in m}


def test_named_shared_parameters_and_bad_options():
    data = multitask_data()
    logger = MemoryLogger()
    model = MultiTask(grad_diagnostics_every_n_steps=1, shared_parameters=["trunk.weight"])
    make_trainer(logger, max_steps=1, log_every_n_steps=1).fit(model, data)
    x, y_seg, y_depth = next(iter(data))
    fresh = MultiTask()
    losses = fresh.losses((x, y_seg, y_depth))
    [g] = torch.autograd.grad(losses["seg"], [fresh.trunk.weight])
    assert logger.series("grad_norm/seg")[0][1] == pytest.approx(g.norm().item(), rel=1e-6)

    with pytest.raises(ValueError, match=r"shared_parameters=.*'head'.*matched no trainable"):
        make_trainer(None, max_steps=1).fit(
            MultiTask(grad_diagnostics_every_n_steps=1, shared_parameters="head"), data
        )
    with pytest.raises(ValueError, match="grad_diagnostics_every_n_steps=0"):
        MultiTask(grad_diagnostics_every_n_steps=0)
    with pytest.raises(TypeError, match=r"grad_diagnostics_every_n_steps is .*str"):
        MultiTask(grad_diagnostics_every_n_steps="10")
