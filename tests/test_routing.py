"""Per-key optimizers: exact updates per route, the one-backward path, and Trainer flags."""

import copy

import pytest
import torch
from conftest import MultiTask, make_trainer, multitask_data
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from lightning_losses.routing import RoutedOptimizer


class Routed(MultiTask):
    def __init__(self, routes, **kwargs):
        super().__init__(**kwargs)
        self.routes = routes

    def configure_optimizers(self):
        return self.routes(self)


def disjoint(m, lr=(0.1, 0.2, 0.05)):
    return {
        "seg": torch.optim.SGD(m.seg.parameters(), lr=lr[0]),
        "depth": torch.optim.SGD(m.depth.parameters(), lr=lr[1]),
        "loss": torch.optim.SGD(m.trunk.parameters(), lr=lr[2]),
    }


def overlapping(m):
    # the trunk belongs to "seg": it must move by the gradient of seg alone, although depth
    # reaches it too
    return {
        "seg": torch.optim.SGD([*m.seg.parameters(), *m.trunk.parameters()], lr=0.1),
        "depth": torch.optim.SGD(m.depth.parameters(), lr=0.2),
    }


class KeepRouter(Callback):
    """The fit's router, as it was at the end of training."""

    def on_train_end(self, trainer, module):
        self.router = module._core.routing.router


def expected_sgd(initial, batch, groups):
    """``groups``: (parameters of the initial model, route loss of it, lr) -> params after."""
    out = {}
    for params, loss, lr in groups:
        grads = torch.autograd.grad(loss, params, retain_graph=True)
        for p, g in zip(params, grads):
            out[id(p)] = p.detach() - lr * g
    return [out[id(p)] for p in initial.parameters()]


def test_disjoint_routes_update_each_parameter_by_its_route_alone_in_one_backward():
    data = multitask_data()
    module = Routed(disjoint, loss_weights={"depth": 0.5})
    initial = copy.deepcopy(module)
    keep = KeepRouter()
    make_trainer(None, max_steps=1, callbacks=[keep]).fit(module, data)
    out = initial.losses(next(iter(data)))
    seg, depth = out["seg"], 0.5 * out["depth"]
    expected = expected_sgd(
        initial,
        None,
        [
            (list(initial.seg.parameters()), seg, 0.1),
            (list(initial.depth.parameters()), depth, 0.2),
            (list(initial.trunk.parameters()), seg + depth, 0.05),
        ],
    )
    for p, e in zip(module.parameters(), expected):
        torch.testing.assert_close(p.detach(), e)
    router = keep.router  # (the module keeps no router once the fit ends)
    assert router._fast.get(("seg", "depth")) is True  # one plain backward


def test_overlapping_routes_give_the_shared_trunk_its_owner_route_gradient_only():
    data = multitask_data()
    module = Routed(overlapping, loss_weights={"depth": 0.5})
    initial = copy.deepcopy(module)
    keep = KeepRouter()
    make_trainer(None, max_steps=1, callbacks=[keep]).fit(module, data)
    out = initial.losses(next(iter(data)))
    expected = expected_sgd(
        initial,
        None,
        [
            ([*initial.seg.parameters(), *initial.trunk.parameters()], out["seg"], 0.1),
            (list(initial.depth.parameters()), 0.5 * out["depth"], 0.2),
        ],
    )
    for p, e in zip(module.parameters(), expected):
        torch.testing.assert_close(p.detach(), e)
    router = keep.router  # (the module keeps no router once the fit ends)
    assert router._fast.get(("seg", "depth")) is False  # per-route gradients


def test_global_step_counts_batches_and_every_route_optimizer_steps_each_batch():
    def adams(m):
        return {
            "seg": torch.optim.Adam(m.seg.parameters()),
            "depth": torch.optim.Adam(m.depth.parameters()),
            "loss": torch.optim.Adam(m.trunk.parameters()),
        }

    module = Routed(adams)
    trainer = make_trainer(None, max_steps=5)
    trainer.fit(module, multitask_data())
    assert trainer.global_step == 5
    [composite] = trainer.optimizers
    assert isinstance(composite, RoutedOptimizer)
    for optimizer in composite.optimizers.values():
        steps = {int(s["step"]) for s in optimizer.state.values()}
        assert steps == {5}


def test_gradient_clipping_is_per_route_optimizer():
    data = multitask_data()
    module = Routed(disjoint)
    initial = copy.deepcopy(module)
    make_trainer(None, max_steps=1, gradient_clip_val=0.01).fit(module, data)
    out = initial.losses(next(iter(data)))
    for mod, loss, lr in (
        (initial.seg, out["seg"], 0.1),
        (initial.depth, out["depth"], 0.2),
        (initial.trunk, out["seg"] + out["depth"], 0.05),
    ):
        params = list(mod.parameters())
        grads = torch.autograd.grad(loss, params, retain_graph=True)
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        scale = min(1.0, 0.01 / (float(norm) + 1e-6))
        names = [n for n, p in initial.named_parameters() if any(p is q for q in params)]
        after = dict(module.named_parameters())
        for name, p, g in zip(names, params, grads):
            torch.testing.assert_close(after[name].detach(), p.detach() - lr * scale * g)


def test_accumulation_equals_one_step_on_the_concatenated_batch():
    full = next(iter(multitask_data(n=16, batch_size=16)))
    halves = [tuple(t[:8] for t in full), tuple(t[8:] for t in full)]
    accumulated, single = Routed(overlapping), Routed(overlapping)
    make_trainer(None, max_steps=1, accumulate_grad_batches=2).fit(
        accumulated, DataLoader(halves, batch_size=None)
    )
    make_trainer(None, max_steps=1).fit(single, DataLoader([full], batch_size=None))
    for a, b in zip(accumulated.parameters(), single.parameters()):
        torch.testing.assert_close(a, b)


def test_schedulers_step_their_own_route_on_their_interval_and_are_checkpointed(tmp_path):
    def scheduled(m):
        seg = torch.optim.SGD(m.seg.parameters(), lr=1.0)
        return {
            "seg": {
                "optimizer": seg,
                "lr_scheduler": {
                    "scheduler": torch.optim.lr_scheduler.StepLR(seg, step_size=1, gamma=0.5),
                    "interval": "step",
                },
            },
            "depth": torch.optim.SGD(m.depth.parameters(), lr=0.3),
            "loss": torch.optim.SGD(m.trunk.parameters(), lr=0.1),
        }

    module = Routed(scheduled)
    trainer = make_trainer(None, max_steps=3)
    trainer.fit(module, multitask_data())
    inner = trainer.optimizers[0].optimizers
    assert inner[("seg",)].param_groups[0]["lr"] == pytest.approx(0.125)  # 3 halvings
    assert inner[("depth",)].param_groups[0]["lr"] == 0.3
    trainer.save_checkpoint(tmp_path / "routes.ckpt")
    state = torch.load(tmp_path / "routes.ckpt", weights_only=False)
    saved = state["optimizer_states"][0]  # shaped like any optimizer's, each group's route named
    assert set(saved) == {"state", "param_groups"}
    assert [g["route"] for g in saved["param_groups"]] == ["seg", "depth", "loss"]
    assert state["lr_schedulers"][0]["last_epoch"] == 3
    # restoring: a fresh composite and scheduler take the saved states back
    fresh = Routed(scheduled).configure_optimizers()
    fresh["optimizer"].load_state_dict(state["optimizer_states"][0])
    fresh["lr_scheduler"]["scheduler"].load_state_dict(state["lr_schedulers"][0])
    assert fresh["optimizer"].optimizers[("seg",)].param_groups[0]["lr"] == pytest.approx(0.125)
    fresh["lr_scheduler"]["scheduler"].step()
    assert fresh["optimizer"].optimizers[("seg",)].param_groups[0]["lr"] == pytest.approx(0.0625)


def test_bf16_mixed_precision_on_cpu_trains_every_route():
    module = Routed(overlapping)
    initial = copy.deepcopy(module)
    make_trainer(None, max_steps=2, precision="bf16-mixed").fit(module, multitask_data())
    for (name, p0), p1 in zip(initial.named_parameters(), module.parameters()):
        assert not torch.equal(p0, p1), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_mixed_precision_on_gpu_matches_fp32_closely():
    data = multitask_data()
    amp, full = Routed(overlapping), Routed(overlapping)
    make_trainer(None, max_steps=3, accelerator="gpu", precision="16-mixed").fit(amp, data)
    make_trainer(None, max_steps=3, accelerator="gpu").fit(full, data)
    for a, b in zip(amp.parameters(), full.parameters()):
        torch.testing.assert_close(a.cpu(), b.cpu(), atol=1e-2, rtol=1e-2)


def test_a_parameter_in_two_optimizers_is_named_with_both_routes():
    module = Routed(
        lambda m: {
            "seg": torch.optim.SGD(m.parameters(), lr=0.1),
            "depth": torch.optim.SGD(m.depth.parameters(), lr=0.1),
        }
    )
    with pytest.raises(
        ValueError,
        match=r"parameter 'depth.weight' is in the optimizers of "
        r"routes 'seg' and 'depth'",
    ):
        make_trainer(None, max_steps=1).fit(module, multitask_data())


def test_a_parameter_in_no_optimizer_is_named():
    module = Routed(
        lambda m: {
            "seg": torch.optim.SGD(m.seg.parameters(), lr=0.1),
            "loss": torch.optim.SGD(m.trunk.parameters(), lr=0.1),
        }
    )
    with pytest.raises(
        ValueError,
        match=r"trainable parameters 'depth.weight', 'depth.bias' "
        r"are in no optimizer",
    ):
        make_trainer(None, max_steps=1).fit(module, multitask_data())


def test_a_route_that_matched_no_term_warns_after_the_first_epoch():
    def typo(m):
        return {
            "sgm": torch.optim.SGD(m.seg.parameters(), lr=0.1),
            "loss": torch.optim.SGD([*m.trunk.parameters(), *m.depth.parameters()], lr=0.1),
        }

    with pytest.warns(UserWarning, match="optimizer route entry 'sgm' matched no loss term"):
        make_trainer(None, max_epochs=1).fit(Routed(typo), multitask_data())


def test_reduce_on_plateau_gets_its_monitor_through_the_route_proxy():
    def plateau(m):
        seg = torch.optim.SGD(m.seg.parameters(), lr=1.0)
        # mode="max" on a falling loss: every epoch after the first is "no improvement"
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            seg, mode="max", factor=0.5, patience=0
        )
        return {
            "seg": {
                "optimizer": seg,
                "lr_scheduler": {"scheduler": scheduler, "monitor": "train/loss_epoch"},
            },
            "loss": torch.optim.SGD([*m.trunk.parameters(), *m.depth.parameters()], lr=0.01),
        }

    trainer = make_trainer(None, max_epochs=3)
    trainer.fit(Routed(plateau), multitask_data())
    assert trainer.optimizers[0].optimizers[("seg",)].param_groups[0]["lr"] == pytest.approx(0.25)


def test_configure_routes_is_configure_optimizers_for_typed_code():
    from conftest import MultiTask, make_trainer, multitask_data

    from lightning_losses import RouteMap

    class Typed(MultiTask):
        def configure_routes(self) -> RouteMap:
            return {
                "seg": torch.optim.SGD([*self.seg.parameters(), *self.trunk.parameters()], lr=0.1),
                "depth": {"optimizer": torch.optim.SGD(self.depth.parameters(), lr=0.1)},
            }

    class Untyped(MultiTask):
        def configure_optimizers(self):
            return {
                "seg": torch.optim.SGD([*self.seg.parameters(), *self.trunk.parameters()], lr=0.1),
                "depth": {"optimizer": torch.optim.SGD(self.depth.parameters(), lr=0.1)},
            }

    typed, untyped = Typed(), Untyped()
    for module in (typed, untyped):
        make_trainer(max_steps=3).fit(module, multitask_data())
    for a, b in zip(typed.parameters(), untyped.parameters()):
        assert torch.equal(a, b)
