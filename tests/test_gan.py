"""Alternating optimizers in automatic optimization (API section 8), against plain PyTorch loops
over the same batches: bit-identical parameters."""

from __future__ import annotations

import pytest
import torch
from conftest import MemoryLogger, make_trainer
from gan import (
    CRITIC,
    WGANGP,
    SequentialGAN,
    adam,
    batches,
    gan_player_losses,
    parameters_equal,
    plain_alternating,
    wgan_player_losses,
)
from gan import networks as gan_networks
from torch.utils.data import DataLoader

from lightning_losses import LossDictModule


def loader(data) -> DataLoader:
    return DataLoader(data, batch_size=None)


def n_critic_schedule(n_critic: int):
    return lambda k: ["d"] if k % (n_critic + 1) < n_critic else ["g"]


def test_wgan_gp_with_n_critic_equals_the_plain_loop():
    data = batches(14)
    module = WGANGP(n_critic=5)
    logger = MemoryLogger()
    trainer = make_trainer(logger=logger, log_every_n_steps=1)
    trainer.fit(module, loader(data))

    generator, critic, values = plain_alternating(
        n_critic_schedule(5), [[b] for b in data], wgan_player_losses()
    )
    assert parameters_equal(module, generator, critic)
    assert trainer.global_step == 14  # batches, not optimizer steps
    # forward saw whose turn it was, and computed only that
    turns = [set(a) for a in module.seen_active]
    assert (
        turns
        == [{"critic+gp"}] * 5
        + [{"generator"}]
        + [{"critic+gp"}] * 5
        + [{"generator"}]
        + [{"critic+gp"}] * 2
    )
    # each loss is logged at the steps that computed it, and only there
    critic_steps = [s for s, _ in logger.series("train/critic")]
    generator_steps = [s for s, _ in logger.series("train/generator")]
    assert generator_steps == [5, 11]
    assert critic_steps == [s for s in range(14) if s not in (5, 11)]
    generator_values = [v for _, v in logger.series("train/generator")]
    assert generator_values == pytest.approx([values[5]["g"], values[11]["g"]], rel=1e-6)
    # the progress bar shows the routes' losses, not their meaningless sum
    assert {"train/critic", "train/gp", "train/generator"} >= set(trainer.progress_bar_metrics)
    assert "train/loss" not in trainer.progress_bar_metrics


def test_sequential_d_then_g_equals_the_plain_loop_and_logs_each_loss_from_its_pass():
    data = batches(6)
    module = SequentialGAN()
    logger = MemoryLogger()
    trainer = make_trainer(logger=logger, log_every_n_steps=1)
    trainer.fit(module, loader(data))

    generator, critic, values = plain_alternating(
        lambda k: ["d", "g"], [[b] for b in data], gan_player_losses()
    )
    assert parameters_equal(module, generator, critic)
    assert trainer.global_step == 6
    assert [set(a) for a, _ in module.passes] == [{"d"}, {"g"}] * 6
    # g is logged from the generator's pass (against the updated discriminator), d from its own
    assert [v for _, v in logger.series("train/g")] == pytest.approx(
        [v["g"] for v in values], rel=1e-6
    )
    assert [v for _, v in logger.series("train/d")] == pytest.approx(
        [v["d"] for v in values], rel=1e-6
    )
    # the g of the discriminator's pass (before its update) is not what was logged
    assert [p["g"] for a, p in module.passes if a == {"d"}] != pytest.approx(
        [v["g"] for v in values], rel=1e-6
    )
    assert [s for s, _ in logger.series("train/d")] == list(range(6))


def test_a_route_clips_its_own_gradients_and_the_others_use_the_trainers_setting():
    data = batches(8)
    module = WGANGP(n_critic=1, critic_route={"gradient_clip_val": 0.05})
    make_trainer(gradient_clip_val=0.3).fit(module, loader(data))
    generator, critic, _ = plain_alternating(
        n_critic_schedule(1), [[b] for b in data], wgan_player_losses(), clip={"d": 0.05, "g": 0.3}
    )
    assert parameters_equal(module, generator, critic)
    # and the clipping mattered
    unclipped, _, _ = plain_alternating(
        n_critic_schedule(1), [[b] for b in data], wgan_player_losses()
    )
    assert not all(
        torch.equal(a, b) for a, b in zip(generator.parameters(), unclipped.parameters())
    )


def test_turns_span_whole_accumulated_steps():
    data = batches(12)
    module = WGANGP(n_critic=2)
    trainer = make_trainer(accumulate_grad_batches=2)
    trainer.fit(module, loader(data))
    steps = [data[i : i + 2] for i in range(0, 12, 2)]
    generator, critic, _ = plain_alternating(
        n_critic_schedule(2), steps, wgan_player_losses(), accumulate=2
    )
    assert trainer.global_step == 6
    for a, b in [
        *zip(module.generator.parameters(), generator.parameters()),
        *zip(module.critic.parameters(), critic.parameters()),
    ]:
        # Lightning scales each micro-batch's loss by 1/2 before backward, as the reference does
        assert torch.equal(a, b)
    assert [set(a) for a in module.seen_active][:6] == [{"critic+gp"}] * 4 + [{"generator"}] * 2


def test_resuming_mid_cycle_continues_exactly(tmp_path):
    batch = batches(1)[0]
    data = [batch] * 9  # the same batch every step: where the loader resumes does not matter

    class Scheduled(WGANGP):
        def route_map(self):
            routes = super().route_map()
            step_lr = torch.optim.lr_scheduler.StepLR(
                routes["generator"]["optimizer"], step_size=1, gamma=0.5
            )
            routes["generator"]["lr_scheduler"] = {"scheduler": step_lr, "interval": "step"}
            return routes

    # (a loader that cannot resume mid-epoch restarts as the next epoch: allow a few)
    straight = Scheduled(n_critic=2)
    make_trainer(max_steps=8, max_epochs=3).fit(straight, loader(data))

    first = Scheduled(n_critic=2)
    trainer = make_trainer(max_steps=4, max_epochs=3)
    trainer.fit(first, loader(data))
    path = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(path)
    resumed = Scheduled(n_critic=2)
    make_trainer(max_steps=8, max_epochs=3).fit(resumed, loader(data), ckpt_path=path)
    assert [set(a) for a in resumed.seen_active] == [
        {"critic+gp"},
        {"generator"},
        {"critic+gp"},
        {"critic+gp"},
    ]  # steps 4..7: the cycle (critic, critic, generator) continues where it stopped

    for a, b in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(a, b)
    # the generator stepped at steps 2 and 5 (n_critic=2): its scheduler twice, the critic none
    assert straight.trainer.optimizers[0].optimizers[("generator",)].param_groups[0]["lr"] == (
        pytest.approx(1e-2 * 0.25)
    )
    assert resumed.trainer.optimizers[0].optimizers[("generator",)].param_groups[0]["lr"] == (
        pytest.approx(1e-2 * 0.25)
    )


def test_sequential_bf16_mixed_matches_the_plain_loop_under_autocast():
    data = batches(4)
    module = SequentialGAN()
    make_trainer(precision="bf16-mixed").fit(module, loader(data))

    losses = gan_player_losses()

    def under_autocast(player):
        def loss(g, c, b):
            # as Lightning's bf16-mixed does: no cache of casted weights
            with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
                return losses[player](g, c, b)

        return loss

    generator, critic, _ = plain_alternating(
        lambda k: ["d", "g"], [[b] for b in data], {p: under_autocast(p) for p in ("d", "g")}
    )
    assert parameters_equal(module, generator, critic)


def test_validation_computes_every_route():
    seen = []

    class Recording(WGANGP):
        def forward(self, batch):
            if not self.trainer.training:
                seen.append(self.active_routes)
            return super().forward(batch)

    module = Recording(n_critic=5)
    # before any fit the routes are unknown: every name is in active_routes
    (result,) = make_trainer().validate(module, loader(batches(2)), verbose=False)
    assert len(seen) == 2
    assert all(name in s for s in seen for name in ("critic+gp", "generator", "x"))
    assert {"val/critic", "val/generator", "val/loss"} <= set(result)
    # validating inside fit: the routes by name
    seen.clear()
    make_trainer(max_steps=1).fit(module, loader(batches(1)), loader(batches(2)))
    assert seen == [frozenset({"critic+gp", "generator"})] * 2


def test_active_routes_without_routes_is_the_total():
    class One(LossDictModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
            self.seen = []

        def forward(self, batch):
            self.seen.append(self.active_routes)
            return self.layer(batch[0]).mean()

    module = One()
    make_trainer(max_steps=1).fit(module, loader(batches(1)))
    assert module.seen == [frozenset({"loss"})]


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        (
            lambda g, c: {
                "d": {"optimizer": adam(c.parameters()), "frequency": 2},
                "g": adam(g.parameters()),
            },
            r"routes \['g'\] have no 'frequency' while \['d'\] have one",
        ),
        (
            lambda g, c: {
                "d": {"optimizer": adam(c.parameters()), "frequency": 0},
                "g": {"optimizer": adam(g.parameters()), "frequency": 1},
            },
            r"route 'd' has frequency 0; expected a positive int",
        ),
        (
            lambda g, c: {
                "d": {"optimizer": adam(c.parameters()), "n_critic": 5},
                "g": adam(g.parameters()),
            },
            r"route 'd' has unknown keys \['n_critic'\]",
        ),
        (
            lambda g, c: {
                "d": {"optimizer": adam(c.parameters()), "gradient_clip_algorithm": "l2"},
                "g": adam(g.parameters()),
            },
            r"gradient_clip_algorithm 'l2'; expected 'norm' or 'value'",
        ),
    ],
)
def test_bad_route_options_name_the_route(routes, message):
    with pytest.raises(ValueError, match=message):
        make_trainer(max_steps=1).fit(SequentialGAN(routes=routes), loader(batches(1)))


def test_sequential_needs_routes_and_no_accumulation():
    class One(SequentialGAN):
        def configure_optimizers(self):
            return adam(self.parameters())

    with pytest.raises(ValueError, match=r"route_mode='sequential' steps per-key optimizers"):
        make_trainer(max_steps=1).fit(One(), loader(batches(1)))
    with pytest.raises(ValueError, match=r"with accumulate_grad_batches=2 a route would have"):
        make_trainer(max_steps=1, accumulate_grad_batches=2).fit(
            SequentialGAN(), loader(batches(2))
        )
    with pytest.raises(ValueError, match=r"route_mode='alternate'; expected 'joint'"):
        SequentialGAN(route_mode="alternate")


def test_a_weighting_cannot_take_turns():
    from lightning_losses.weighting import UncertaintyWeighting

    frozen = UncertaintyWeighting(["critic", "gp", "generator"]).requires_grad_(False)
    module = WGANGP(weighting=frozen)
    with pytest.raises(ValueError, match=r"weighting= combines every term .* take turns"):
        make_trainer(max_steps=1).fit(module, loader(batches(1)))


def test_lightnings_ema_callback_averages_the_alternating_parameters():
    # EMAWeightAveraging (Lightning's own) updates after every optimizer step and hands the
    # module its averages at the end of fit; the reference applies the same EMA to the plain
    # loop's parameters after each of its steps.
    from lightning.pytorch.callbacks import EMAWeightAveraging

    data = batches(6)
    module = WGANGP(n_critic=2)
    make_trainer(callbacks=[EMAWeightAveraging(decay=0.5)]).fit(module, loader(data))

    snapshots = []
    for steps in range(1, 7):
        generator, critic, _ = plain_alternating(
            n_critic_schedule(2), [[b] for b in data[:steps]], wgan_player_losses()
        )
        snapshots.append([p.detach() for p in (*generator.parameters(), *critic.parameters())])
    average = snapshots[0]
    for snapshot in snapshots[1:]:
        average = [0.5 * a + 0.5 * p for a, p in zip(average, snapshot)]
    ours = [*module.generator.parameters(), *module.critic.parameters()]
    for a, b in zip(ours, average):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    # and it is not the last step's parameters
    assert not all(torch.equal(a, b) for a, b in zip(ours, snapshots[-1]))


def test_a_route_without_a_term_in_a_batch_does_not_step():
    # forward leaves the generator's loss out on odd batches: Adam must not move the generator
    # on zero gradients there (momentum would), exactly as a loop that skips it
    class Sometimes(SequentialGAN):
        def forward(self, batch):
            out = super().forward(batch)
            if self.training and self.trainer.global_step % 2 == 1:
                del out["g"]
            return out

    data = batches(6)
    module = Sometimes()
    make_trainer().fit(module, loader(data))
    generator, critic, _ = plain_alternating(
        lambda k: ["d", "g"] if k % 2 == 0 else ["d"], [[b] for b in data], gan_player_losses()
    )
    assert parameters_equal(module, generator, critic)
    composite = module.trainer.optimizers[0]
    assert composite.steps_taken == {("d",): 6, ("g",): 3}


def test_a_route_that_sets_only_its_clipping_algorithm_uses_the_trainers_value():
    import copy

    data = batches(6)
    module = WGANGP(n_critic=1, critic_route={"gradient_clip_algorithm": "value"})
    make_trainer(gradient_clip_val=0.01).fit(module, loader(data))

    generator, critic = (copy.deepcopy(n) for n in gan_networks())
    optimizers = {"d": adam(critic.parameters()), "g": adam(generator.parameters())}
    losses = wgan_player_losses()
    for k, batch in enumerate(data):
        player = "d" if k % 2 == 0 else "g"
        optimizers[player].zero_grad()
        losses[player](generator, critic, batch).backward()
        owned = critic if player == "d" else generator
        if player == "d":
            torch.nn.utils.clip_grad_value_(owned.parameters(), 0.01)
        else:
            torch.nn.utils.clip_grad_norm_(owned.parameters(), 0.01)
        optimizers[player].step()
    assert parameters_equal(module, generator, critic)


def test_every_route_may_have_its_own_scheduler():
    class TwoSchedulers(WGANGP):
        def route_map(self):
            routes = super().route_map()
            for route, gamma in ((CRITIC, 0.9), ("generator", 0.5)):
                optimizer = routes[route]["optimizer"]
                step_lr = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=gamma)
                routes[route]["lr_scheduler"] = {"scheduler": step_lr, "interval": "step"}
            return routes

    module = TwoSchedulers(n_critic=2)
    make_trainer().fit(module, loader(batches(9)))
    inner = module.trainer.optimizers[0].optimizers
    assert inner[CRITIC].param_groups[0]["lr"] == pytest.approx(1e-2 * 0.9**6)
    assert inner[("generator",)].param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**3)


def test_a_term_in_no_route_is_named_in_a_warning():
    class WithRegulariser(SequentialGAN):
        def forward(self, batch):
            out = super().forward(batch)
            out["reg"] = sum(p.pow(2).sum() for p in self.generator.parameters())
            return out

    with pytest.warns(UserWarning, match=r"loss term 'reg' belongs to no optimizer route"):
        make_trainer(max_steps=2).fit(WithRegulariser(), loader(batches(2)))
