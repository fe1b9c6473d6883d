"""Weighting strategies and gradient aggregation against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import MultiTask, make_trainer, multitask_data
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_losses.gradients.aggregation import jacobian
from lightning_losses.weighting import DynamicWeightAverage, GradNorm, UncertaintyWeighting

torchjd = pytest.importorskip("torchjd")
from torchjd.aggregation import PCGrad, UPGrad  # noqa: E402

LR = 0.1


def batches():
    return list(multitask_data())


def model_parameters(module):
    return [p for n, p in module.named_parameters() if not n.startswith("weighting.")]


def sgd(params, grads):
    with torch.no_grad():
        for p, g in zip(params, grads):
            p -= LR * g


# ---------------------------------------------------------------- uncertainty weighting


def test_uncertainty_weighting_steps_on_the_closed_form_gradient(memory_logger):
    module = MultiTask(weighting=UncertaintyWeighting(["seg", "depth"], init_log_variance=0.3))
    make_trainer(memory_logger, max_steps=2, log_every_n_steps=1).fit(module, multitask_data())

    ref = MultiTask()
    s = torch.tensor([0.3, 0.3])
    params = list(ref.parameters())
    for step, batch in enumerate(batches()[:2]):
        losses = ref.losses(batch)
        stacked = torch.stack([losses["seg"], losses["depth"]])
        weights = 0.5 * torch.exp(-s)
        assert memory_logger.series("weight/seg")[step][1] == pytest.approx(weights[0].item())
        assert memory_logger.series("train/loss")[step][1] == pytest.approx(
            (weights @ stacked + 0.5 * s.sum()).item(), rel=1e-6
        )
        grads = torch.autograd.grad(weights @ stacked, params)
        # d/ds_k [0.5 e^-s_k L_k + 0.5 s_k] = -0.5 e^-s_k L_k + 0.5
        s = s - LR * (-0.5 * torch.exp(-s) * stacked.detach() + 0.5)
        sgd(params, grads)
    assert module.weighting.log_variance.detach() == pytest.approx(s, abs=1e-6)
    for p, q in zip(model_parameters(module), params, strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_strategies_refuse_terms_they_were_not_given():
    module = MultiTask(weighting=UncertaintyWeighting(["seg"]))
    with pytest.raises(ValueError, match=r"'depth', not in its terms \['seg'\]"):
        make_trainer(None, max_steps=1).fit(module, multitask_data())
    with pytest.raises(TypeError, match=r"terms is .*str"):
        UncertaintyWeighting("seg")
    with pytest.raises(ValueError, match="distinct"):
        DynamicWeightAverage(["seg", "seg"])
    with pytest.raises(ValueError, match="temperature=0"):
        DynamicWeightAverage(["seg"], temperature=0)


# ---------------------------------------------------------------- dynamic weight average


def test_dwa_weights_follow_the_logged_epoch_means(memory_logger):
    module = MultiTask(weighting=DynamicWeightAverage(["seg", "depth"], temperature=2.0))
    # 8 batches an epoch, windows of 4: every window lies inside one epoch
    make_trainer(memory_logger, max_epochs=4, log_every_n_steps=4).fit(module, multitask_data())
    epoch_means = {
        term: [v for _, v in memory_logger.series(f"train/{term}_epoch")]
        for term in ("seg", "depth")
    }
    for epoch in range(4):
        if epoch < 2:
            expected = {"seg": 1.0, "depth": 1.0}
        else:
            r = {t: epoch_means[t][epoch - 1] / epoch_means[t][epoch - 2] for t in epoch_means}
            z = sum(math.exp(v / 2.0) for v in r.values())
            expected = {t: 2 * math.exp(v / 2.0) / z for t, v in r.items()}
        for term, weight in expected.items():
            logged = [v for s, v in memory_logger.series(f"weight/{term}") if s // 8 == epoch]
            assert logged == pytest.approx([weight] * 2, rel=1e-6), (epoch, term)


# ---------------------------------------------------------------- GradNorm


def test_gradnorm_updates_its_weights_by_the_papers_rule():
    alpha = 1.5
    module = MultiTask(weighting=GradNorm(["seg", "depth"], shared="trunk", alpha=alpha))
    make_trainer(None, max_steps=3).fit(module, multitask_data())

    ref = MultiTask()
    params = list(ref.parameters())
    shared = list(ref.trunk.parameters())
    w = torch.ones(2)
    initial = None
    for batch in batches()[:3]:
        w = 2 * w / w.sum()  # renormalised to sum to K before use
        losses = ref.losses(batch)
        stacked = torch.stack([losses["seg"], losses["depth"]])
        norms = torch.stack(
            [
                torch.cat(
                    [g.flatten() for g in torch.autograd.grad(loss, shared, retain_graph=True)]
                ).norm()
                for loss in stacked
            ]
        )
        initial = stacked.detach() if initial is None else initial
        rates = stacked.detach() / initial
        target = (w * norms).mean() * (rates / rates.mean()) ** alpha
        w_grad = torch.sign(w * norms - target) * norms  # d/dw_k |w_k g_k - target_k|
        grads = torch.autograd.grad(w @ stacked, params)
        sgd(params, grads)
        w = w - LR * w_grad
    assert module.weighting.weights.detach() == pytest.approx(w, abs=1e-6)
    for p, q in zip(params, model_parameters(module), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_gradnorm_names_a_shared_layer_that_does_not_exist():
    module = MultiTask(weighting=GradNorm(["seg", "depth"], shared="backbone"))
    with pytest.raises(ValueError, match=r"GradNorm\(shared=...\)=\['backbone'\] matched no"):
        make_trainer(None, max_steps=1).fit(module, multitask_data())


# ---------------------------------------------------------------- aggregation


def test_aggregators_on_two_conflicting_gradients_equal_the_hand_projection():
    w = torch.zeros(2, requires_grad=True)
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # g1 . g2 = -1: conflicting
    matrix = jacobian([w @ g1, w @ g2], [w])
    assert torch.equal(matrix, torch.stack([g1, g2]))
    # each row projected onto the normal plane of the other, where they conflict
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2  # [0.5, 0.5]
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1  # [0, 1]
    assert PCGrad()(matrix) == pytest.approx(p1 + p2)  # PCGrad: the sum
    # UPGrad: the mean of each row's projection onto the dual cone {v : J v >= 0}; here the
    # same half-plane projections, both inside the cone
    assert UPGrad()(matrix) == pytest.approx((p1 + p2) / 2, abs=5e-4)


def hand_pcgrad(matrix):
    g1, g2 = matrix
    if g1 @ g2 >= 0:
        return g1 + g2
    return (g1 - (g1 @ g2) / (g2 @ g2) * g2) + (g2 - (g2 @ g1) / (g1 @ g1) * g1)


def test_aggregated_gradient_on_the_trunk_and_the_plain_gradient_on_the_heads():
    module = MultiTask(aggregator=PCGrad(), loss_weights={"depth": 0.5})
    make_trainer(None, max_steps=3).fit(module, multitask_data())

    ref = MultiTask()
    trunk, heads = list(ref.trunk.parameters()), [*ref.seg.parameters(), *ref.depth.parameters()]
    for batch in batches()[:3]:
        losses = ref.losses(batch)
        weighted = [losses["seg"], 0.5 * losses["depth"]]
        matrix = jacobian(weighted, trunk)
        combined = hand_pcgrad(matrix)
        trunk_grads = [
            combined[: trunk[0].numel()].view_as(trunk[0]),
            combined[trunk[0].numel() :].view_as(trunk[1]),
        ]
        head_grads = torch.autograd.grad(sum(weighted), heads)
        sgd(trunk + heads, trunk_grads + list(head_grads))
    expected = [ref.trunk, ref.seg, ref.depth]
    for mine, theirs in zip([module.trunk, module.seg, module.depth], expected):
        for p, q in zip(mine.parameters(), theirs.parameters()):
            assert torch.allclose(p, q, atol=1e-6)


def test_aggregator_refuses_what_it_cannot_combine_with():
    with pytest.raises(ValueError, match=r"weighting=UncertaintyWeighting.* both decide"):
        MultiTask(aggregator=UPGrad(), weighting=UncertaintyWeighting(["seg", "depth"]))

    class Routed(MultiTask):
        def configure_optimizers(self):
            return {
                "seg": torch.optim.SGD([*self.trunk.parameters(), *self.seg.parameters()], lr=LR),
                "depth": torch.optim.SGD(self.depth.parameters(), lr=LR),
            }

    with pytest.raises(ValueError, match="aggregator= cannot be combined with per-key optim"):
        make_trainer(None, max_steps=1).fit(Routed(aggregator=UPGrad()), multitask_data())
    with pytest.raises(ValueError, match=r"returned \(\) for a Jacobian of shape \(2, 56\)"):
        bad = MultiTask(aggregator=lambda matrix: matrix.sum())
        make_trainer(None, max_steps=1).fit(bad, multitask_data())


# ---------------------------------------------------------------- resume


@pytest.mark.parametrize(
    "make",
    [
        lambda: UncertaintyWeighting(["seg", "depth"]),
        lambda: DynamicWeightAverage(["seg", "depth"]),
        lambda: GradNorm(["seg", "depth"], shared="trunk"),
    ],
    ids=["uw", "dwa", "gradnorm"],
)
def test_resume_restores_the_weighting_state_exactly(make, tmp_path):
    data = multitask_data()
    straight = MultiTask(weighting=make())
    make_trainer(None, max_epochs=4).fit(straight, data)

    first = MultiTask(weighting=make())
    every_epoch = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    make_trainer(None, max_epochs=2, enable_checkpointing=True, callbacks=[every_epoch]).fit(
        first, data
    )
    resumed = MultiTask(weighting=make())
    make_trainer(None, max_epochs=4).fit(resumed, data, ckpt_path=tmp_path / "last.ckpt")
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
