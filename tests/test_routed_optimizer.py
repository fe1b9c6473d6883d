"""The RoutedOptimizer behaves like any torch optimizer to what reads optimizers: Lightning's
callbacks (BackboneFinetuning, LearningRateMonitor), hooks and distributed checkpointing.

Each contract test runs the same calls on a plain optimizer and on a route map, and compares."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import MemoryLogger, MultiTask, make_trainer, multitask_data
from lightning.pytorch.callbacks import (
    BackboneFinetuning,
    LearningRateMonitor,
    StochasticWeightAveraging,
)
from test_routing import Routed, disjoint
from torch import nn

from lightning_losses.routing import parse_route_map


def routed(module: MultiTask, **routes: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return parse_route_map(routes, module)["optimizer"]


def plain_and_routed(lr: float = 0.1):
    """Two identical models: one with a plain SGD over seg and trunk, one with routes
    {"seg": SGD(seg), "loss": SGD(trunk)}; depth is frozen in both."""
    plain_model, routed_model = MultiTask(), MultiTask()
    for m in (plain_model, routed_model):
        m.depth.requires_grad_(False)
    plain = torch.optim.SGD([*plain_model.seg.parameters(), *plain_model.trunk.parameters()], lr)
    composite = routed(
        routed_model,
        seg=torch.optim.SGD(routed_model.seg.parameters(), lr),
        loss=torch.optim.SGD(routed_model.trunk.parameters(), lr),
    )
    return (plain_model, plain), (routed_model, composite)


def set_grads(model: nn.Module) -> None:
    for i, p in enumerate(model.parameters()):
        p.grad = torch.full_like(p, 0.1 * (i + 1))


def test_add_param_group_is_kept_and_trained_like_a_plain_optimizers():
    for model, opt in plain_and_routed():
        groups = opt.param_groups
        model.depth.requires_grad_(True)
        opt.add_param_group({"params": model.depth.parameters(), "lr": 0.5})
        assert opt.param_groups is groups  # one list, the new group at its end
        assert opt.param_groups[-1]["lr"] == 0.5
        assert list(opt.param_groups[-1]["params"]) == list(model.depth.parameters())
        before = model.depth.weight.detach().clone()
        set_grads(model)
        opt.step()
        torch.testing.assert_close(
            model.depth.weight.detach(), before - 0.5 * model.depth.weight.grad
        )
    # without a "route" key the group joined the "loss" route (the weighted total)
    assert len(opt.optimizers[("loss",)].param_groups) == 2


def test_add_param_group_follows_its_route_key_and_otherwise_names_the_routes():
    model = MultiTask()
    model.trunk.requires_grad_(False)
    opt = routed(
        model,
        seg=torch.optim.SGD(model.seg.parameters(), 0.1),
        depth=torch.optim.SGD(model.depth.parameters(), 0.1),
    )
    with pytest.raises(ValueError, match=r"'trunk.weight'.* no 'route' key .*\['seg', 'depth'\]"):
        opt.add_param_group({"params": model.trunk.parameters()})
    with pytest.raises(ValueError, match=r"route 'head'; expected one of \['seg', 'depth'\]"):
        opt.add_param_group({"params": model.trunk.parameters(), "route": "head"})
    with pytest.raises(ValueError, match=r"'seg.bias' .* already in route 'seg'"):
        opt.add_param_group({"params": [model.seg.bias], "route": "depth"})
    model.trunk.requires_grad_(True)
    opt.add_param_group({"params": model.trunk.parameters(), "route": "depth", "lr": 0.3})
    assert opt.optimizers[("depth",)].param_groups[-1] is opt.param_groups[-1]
    assert opt.param_groups[-1]["lr"] == 0.3


def test_param_groups_is_one_list_in_step_with_the_route_optimizers():
    _, (model, opt) = plain_and_routed()
    groups = opt.param_groups
    assert opt.param_groups is groups
    assert groups[0] is opt.optimizers[("seg",)].param_groups[0]
    # a group added to a route optimizer directly, or appended to the list, is taken in
    model.depth.requires_grad_(True)
    opt.optimizers[("seg",)].add_param_group({"params": [model.depth.weight]})
    groups.append({"params": [model.depth.bias], "lr": 0.7})
    assert opt.param_groups is groups
    assert [len(g["params"]) for g in groups] == [2, 2, 1, 1]
    assert opt.optimizers[("loss",)].param_groups[-1]["lr"] == 0.7  # normalised by SGD
    assert "momentum" in opt.optimizers[("loss",)].param_groups[-1]


def test_defaults_state_and_hooks_behave_as_a_plain_optimizers():
    calls = {"plain": [], "routed": []}
    results = {}
    for kind, (model, opt) in zip(calls, plain_and_routed()):
        assert opt.defaults["lr"] == 0.1 and "momentum" in opt.defaults
        opt.register_step_pre_hook(lambda o, a, k, kind=kind: calls[kind].append("pre"))
        opt.register_step_post_hook(lambda o, a, k, kind=kind: calls[kind].append("post"))
        opt.register_state_dict_pre_hook(lambda o, kind=kind: calls[kind].append("save"))
        opt.register_load_state_dict_post_hook(lambda o, kind=kind: calls[kind].append("load"))
        for group in opt.param_groups:
            group["momentum"] = 0.9  # written through the groups, as a callback would
        set_grads(model)
        opt.step()
        assert len(opt.state) == 4 and model.trunk.weight in opt.state
        results[kind] = opt.state[model.trunk.weight]["momentum_buffer"]
        opt.load_state_dict(opt.state_dict())
    assert calls["routed"] == calls["plain"] == ["pre", "post", "save", "load"]
    torch.testing.assert_close(results["routed"], results["plain"])


def test_state_dict_is_shaped_like_a_torch_optimizers_and_older_checkpoints_load():
    (_, plain), (model, opt) = plain_and_routed()
    set_grads(model)
    for group in opt.param_groups:
        group["momentum"] = 0.9
    opt.step()
    saved = opt.state_dict()
    assert set(saved) == {"state", "param_groups"}
    assert [g["route"] for g in saved["param_groups"]] == ["seg", "loss"]
    assert [g["params"] for g in saved["param_groups"]] == [[0, 1], [2, 3]]
    buffers = {i: s["momentum_buffer"].clone() for i, s in saved["state"].items()}

    def fresh():
        _, (_, other) = plain_and_routed()
        return other

    for state in (
        saved,
        {
            "seg": opt.optimizers[("seg",)].state_dict(),  # before 0.3
            "loss": opt.optimizers[("loss",)].state_dict(),
        },
    ):
        other = fresh()
        other.load_state_dict(copy.deepcopy(state))
        assert other.param_groups[1]["momentum"] == 0.9
        for i, buffer in buffers.items():
            torch.testing.assert_close(other.state_dict()["state"][i]["momentum_buffer"], buffer)
    with pytest.raises(ValueError, match="the state of one optimizer"):
        fresh().load_state_dict(plain.state_dict())


def test_distributed_checkpoint_state_dict_round_trips():
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    _, (model, opt) = plain_and_routed()
    set_grads(model)
    for group in opt.param_groups:
        group["momentum"] = 0.9
    opt.step()
    saved = get_optimizer_state_dict(model, opt)
    assert [g["params"] for g in saved["param_groups"]] == [
        ["seg.weight", "seg.bias"],
        ["trunk.weight", "trunk.bias"],
    ]
    _, (other_model, other) = plain_and_routed()
    set_optimizer_state_dict(other_model, other, saved)
    for name, param in other_model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(
                other.state[param]["momentum_buffer"], saved["state"][name]["momentum_buffer"]
            )


def test_distributed_checkpoint_of_routes_with_a_state_less_optimizer_round_trips():
    # torch.distributed.checkpoint loads optimizer state strictly as soon as any parameter has
    # some (Adam's here), and then needs an entry for every trainable parameter: plain SGD
    # keeps none for its own
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    def make():
        model = MultiTask()
        model.depth.requires_grad_(False)
        opt = routed(
            model,
            seg=torch.optim.SGD(model.seg.parameters(), lr=0.1),
            loss=torch.optim.Adam(model.trunk.parameters(), lr=0.1),
        )
        return model, opt

    model, opt = make()
    set_grads(model)
    opt.step()
    saved = get_optimizer_state_dict(model, opt)
    other_model, other = make()
    set_optimizer_state_dict(other_model, other, copy.deepcopy(saved))
    assert saved["state"]["seg.weight"] == {}
    trunk = other.optimizers[("loss",)]
    torch.testing.assert_close(
        trunk.state[other_model.trunk.weight]["exp_avg"], saved["state"]["trunk.weight"]["exp_avg"]
    )
    assert trunk.state[other_model.trunk.weight]["step"] == 1


def test_writing_a_state_dict_leaves_a_route_that_has_not_stepped_as_it_was():
    # a distributed checkpoint needs the state an Adam route's first step creates, also before
    # that step: it is written with the state dict, and the route keeps none
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model = MultiTask()
    model.depth.requires_grad_(False)
    opt = routed(
        model,
        seg=torch.optim.SGD(model.seg.parameters(), lr=0.1),
        loss=torch.optim.Adam(model.trunk.parameters(), lr=0.1),
    )
    before = [p.detach().clone() for p in model.parameters()]
    opt.optimizers[("seg",)].step()  # (no gradients: nothing moves)
    saved = get_optimizer_state_dict(model, opt)
    trunk = opt.optimizers[("loss",)]
    assert opt.steps_taken == {("seg",): 0, ("loss",): 0} and len(trunk.state) == 0
    assert saved["state"]["trunk.weight"]["exp_avg"].abs().sum() == 0
    assert saved["state"]["seg.weight"] == {}
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert trunk.param_groups[0]["lr"] == 0.1


class Finetuned(MultiTask):
    """MultiTask behind a frozen-then-unfrozen backbone."""

    def __init__(self, make) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.backbone = nn.Linear(6, 6)
        self.make = make

    def losses(self, batch):
        x, y_seg, y_depth = batch
        return super().losses((self.backbone(x), y_seg, y_depth))

    def configure_optimizers(self):
        return self.make(self)


def test_backbone_finetuning_with_routes_trains_the_backbone_like_plain_lightning():
    def plain(m):
        return torch.optim.Adam(
            [
                {"params": m.seg.parameters()},
                {"params": [*m.trunk.parameters(), *m.depth.parameters()]},
            ],
            lr=0.01,
        )

    def routes(m):  # the frozen backbone is in no route; unfrozen, it joins "loss"
        return {
            "seg": torch.optim.Adam(m.seg.parameters(), lr=0.01),
            "loss": torch.optim.Adam([*m.trunk.parameters(), *m.depth.parameters()], lr=0.01),
        }

    fitted = []
    for make in (plain, routes):
        module = Finetuned(make)
        start = module.backbone.weight.detach().clone()
        finetuning = BackboneFinetuning(unfreeze_backbone_at_epoch=1, backbone_initial_ratio_lr=0.5)
        make_trainer(None, max_epochs=3, callbacks=[finetuning]).fit(module, multitask_data(n=16))
        fitted.append(module)
    assert not torch.equal(fitted[1].backbone.weight.detach(), start)
    for (name, p), q in zip(fitted[0].named_parameters(), fitted[1].parameters()):
        torch.testing.assert_close(q.detach(), p.detach(), msg=name)


def test_learning_rate_monitor_logs_one_series_per_route_with_its_own_momentum():
    def routes(m):
        depth = torch.optim.SGD(m.depth.parameters(), lr=0.3, momentum=0.7)
        step = torch.optim.lr_scheduler.StepLR(depth, step_size=1, gamma=0.5)
        return {
            "seg": torch.optim.Adam(m.seg.parameters(), lr=0.01, betas=(0.8, 0.99)),
            "depth": {
                "optimizer": depth,
                "lr_scheduler": {"scheduler": step, "interval": "step", "name": "depth-lr"},
            },
            "loss": {
                "optimizer": (trunk := torch.optim.AdamW(m.trunk.parameters(), 0.02, (0.85, 0.9))),
                "lr_scheduler": torch.optim.lr_scheduler.StepLR(trunk, step_size=1, gamma=0.1),
            },
        }

    logger = MemoryLogger()
    monitor = LearningRateMonitor(log_momentum=True)
    module = Routed(routes)
    make_trainer(logger, max_epochs=2, log_every_n_steps=1, callbacks=[monitor]).fit(
        module, multitask_data(n=16)
    )
    series = {k for _, row in logger.rows for k in row if "lr" in k or "momentum" in k}
    assert series == {
        "lr-seg",
        "lr-seg-momentum",  # no scheduler
        "depth-lr",
        "depth-lr-momentum",  # the scheduler's own name, its own route only
        "lr-loss",
        "lr-loss-momentum",  # a scheduler without a name: the route's
    }
    assert {v for _, v in logger.series("lr-seg-momentum")} == {0.8}  # Adam: betas[0]
    assert {v for _, v in logger.series("depth-lr-momentum")} == {0.7}  # SGD: momentum
    assert {v for _, v in logger.series("lr-loss-momentum")} == {0.85}  # AdamW: betas[0]
    assert [v for _, v in logger.series("depth-lr")] == pytest.approx([0.3, 0.15, 0.075, 0.0375])
    assert [v for _, v in logger.series("lr-loss")] == pytest.approx([0.02, 0.002])  # per epoch


def test_backbone_finetuning_resumes_routes_like_plain_lightning(tmp_path):
    """BaseFinetuning restores the groups it added by assigning ``param_groups``; the resumed
    run then equals plain Lightning's resumed run (which differs from an uninterrupted one:
    BackboneFinetuning's own behaviour)."""

    def plain(m):
        return torch.optim.Adam(
            [
                {"params": m.seg.parameters()},
                {"params": [*m.trunk.parameters(), *m.depth.parameters()]},
            ],
            lr=0.01,
        )

    def routes(m):
        return {
            "seg": torch.optim.Adam(m.seg.parameters(), lr=0.01),
            "loss": torch.optim.Adam([*m.trunk.parameters(), *m.depth.parameters()], lr=0.01),
        }

    def fit(make, epochs, ckpt_path=None):
        module = Finetuned(make)
        finetuning = BackboneFinetuning(unfreeze_backbone_at_epoch=1, backbone_initial_ratio_lr=0.5)
        trainer = make_trainer(None, max_epochs=epochs, callbacks=[finetuning])
        trainer.fit(module, multitask_data(n=16), ckpt_path=ckpt_path)
        return module, trainer

    resumed = []
    for make in (plain, routes):
        _, first = fit(make, 2)
        first.save_checkpoint(tmp_path / f"{make.__name__}.ckpt")
        module, trainer = fit(make, 3, tmp_path / f"{make.__name__}.ckpt")
        assert [len(g["params"]) for g in trainer.optimizers[0].param_groups] == [2, 4, 2]
        resumed.append(module)
    for (name, p), q in zip(resumed[0].named_parameters(), resumed[1].parameters()):
        torch.testing.assert_close(q.detach(), p.detach(), msg=name)


def test_learning_rate_monitor_with_swa_logs_each_group_once():
    # SWA's SWALR schedules the optimizer Lightning sees, every route at once: its series are
    # Lightning's for that scheduler, and no route series repeats them
    logger = MemoryLogger()
    monitor = LearningRateMonitor()
    swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=1)
    make_trainer(logger, max_epochs=2, log_every_n_steps=1, callbacks=[swa, monitor]).fit(
        Routed(disjoint), multitask_data(n=16)
    )
    series = {k for _, row in logger.rows for k in row if k.startswith("lr")}
    assert series == {"lr-RoutedOptimizer/pg1", "lr-RoutedOptimizer/pg2", "lr-RoutedOptimizer/pg3"}
