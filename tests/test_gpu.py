"""What only a GPU shows: no host-device synchronisation on steps that write nothing.

Skipped without CUDA (CI has none). ``torch.cuda.set_sync_debug_mode("error")`` makes any
synchronising call (``.item()``, ``.tolist()``, a blocking copy to the host, ``nonzero``) raise.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import MemoryLogger, MultiTask, make_trainer, multitask_data

from lightning_losses import _lightning

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class StrictMultiTask(MultiTask):
    """Runs the library's part of every step that writes nothing under sync debug mode "error"."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.strict_steps = 0

    def forward(self, batch):
        return self.losses(batch)  # MultiTask's recording calls float() on purpose: skip it

    def training_step(self, batch, batch_idx=0):
        output = self(batch)
        writes = _lightning.writes_step_metrics(self.trainer)
        torch.cuda.set_sync_debug_mode(0 if writes else "error")
        try:
            return self.total_loss(output, "train", batch)
        finally:
            torch.cuda.set_sync_debug_mode(0)
            self.strict_steps += not writes


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"loss_weights": {"depth": 0.5}},
        {"loss_weights": {"depth": lambda step: 1.0 / (1 + step)}},
        {"grad_diagnostics_every_n_steps": 2},
    ],
    ids=["plain", "constant-weights", "scheduled-weights", "grad-diagnostics"],
)
def test_steps_that_write_nothing_never_synchronise(options):
    logger = MemoryLogger()
    model = StrictMultiTask(**options)
    make_trainer(logger, accelerator="gpu", max_steps=12, log_every_n_steps=5).fit(
        model, multitask_data(n=128)
    )
    assert model.strict_steps >= 9
    assert [step for step, _ in logger.series("train/loss")] == [4, 9, 11]


@pytest.mark.xfail(
    strict=True,
    reason="run on an H200 for the first time in 0.3: parameters differ from the plain "
    "GradScaler loop by up to 3e-2 after 12 batches; not yet diagnosed (the mixed-precision "
    "route tests below, without turns' clipping, pass)",
)
def test_wgan_turns_under_16_mixed_equal_a_plain_loop_with_one_grad_scaler():
    # One GradScaler for the route optimizers (Lightning's), unscaled before the critic's own
    # clipping; the reference steps the active player's optimizer through the same scaler.
    import copy

    from gan import WGANGP, adam, batches, networks, wgan_player_losses
    from torch.utils.data import DataLoader

    data = [tuple(t.cuda() for t in b) for b in batches(12)]
    module = WGANGP(n_critic=2, critic_route={"gradient_clip_val": 0.5})
    make_trainer(accelerator="gpu", precision="16-mixed").fit(
        module, DataLoader(data, batch_size=None)
    )

    generator, critic = (copy.deepcopy(n).cuda() for n in networks())
    optimizers = {"d": adam(critic.parameters()), "g": adam(generator.parameters())}
    scaler = torch.amp.GradScaler("cuda")
    losses = wgan_player_losses()
    for k, batch in enumerate(data):
        player = "d" if k % 3 < 2 else "g"
        for optimizer in optimizers.values():
            optimizer.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16, cache_enabled=False):
            loss = losses[player](generator, critic, batch)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizers[player])
        if player == "d":
            torch.nn.utils.clip_grad_norm_(critic.parameters(), 0.5)
        scaler.step(optimizers[player])
        scaler.update()
    ours = [*module.generator.parameters(), *module.critic.parameters()]  # back on the CPU
    for a, b in zip(ours, [*generator.parameters(), *critic.parameters()]):
        assert torch.allclose(a.detach().cpu(), b.detach().cpu(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- routes under mixed precision


def heads_reference(mode: str, precision: str, steps: int = 4, device: str = "cuda") -> list[float]:
    """fsdp_job.Heads' routes replayed on the GPU: each stepping route's SGD update from the
    gradient of its own term, the forward under the same autocast; "sequential" re-runs the
    forward before the second route. Gradients are computed unscaled, as the route surrogate
    does (it scales them by the GradScaler's factor, which unscaling undoes exactly)."""
    from ddp_job import two_head_losses, two_heads

    net = two_heads().to(device)
    trunk, head0, head1 = net
    routes = {
        "t0": ([*trunk.parameters(), *head0.parameters()], 0.1),
        "t1": (list(head1.parameters()), 0.2),
    }
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 3, generator=g)
    y = x.sum(-1) + 0.1 * torch.randn(16, generator=g)
    for step in range(steps):
        batch = (x[2 * step : 2 * step + 2].to(device), y[2 * step : 2 * step + 2].to(device))
        stepping = ["t0", "t1"]
        if mode == "frequency":  # t0 one step, t1 two
            stepping = ["t0"] if step % 3 == 0 else ["t1"]
        updates = []
        for term in stepping:
            if mode == "sequential" or term == stepping[0]:
                with torch.autocast(device, dtype=dtype):
                    losses = two_head_losses(net, batch)
            params, lr = routes[term]
            grads = torch.autograd.grad(losses[term], params, retain_graph=True)
            updates += [(p, lr * grad) for p, grad in zip(params, grads)]
            if mode == "sequential":
                with torch.no_grad():
                    for p, update in updates:
                        p -= update
                updates = []
        with torch.no_grad():
            for p, update in updates:
                p -= update
    return torch.cat([p.detach().flatten() for p in net.parameters()]).tolist()


def fit_heads(scenario: str, logger=None, **trainer_options):
    """fsdp_job's scenario on one GPU, 4 steps; returns the module."""
    from ddp_job import regression_data
    from fsdp_job import module_for

    module = module_for(scenario)
    # (one process: a distributed strategy's sampler would shuffle, the single run's does not)
    options = dict(
        accelerator="gpu", max_steps=4, log_every_n_steps=3, use_distributed_sampler=False
    )
    make_trainer(logger, **{**options, **trainer_options}).fit(module, regression_data())
    return module


def whole(module) -> list[float]:
    return torch.cat([p.detach().flatten().float().cpu() for p in module.parameters()]).tolist()


@pytest.mark.parametrize(
    ("precision", "mode"),
    [
        ("bf16-mixed", "joint"),
        ("bf16-mixed", "frequency"),
        ("bf16-mixed", "sequential"),
        ("16-mixed", "joint"),
        ("16-mixed", "frequency"),
    ],
)
def test_routes_under_mixed_precision_equal_a_replay_under_the_same_autocast(precision, mode):
    module = fit_heads(mode, precision=precision)
    expected = heads_reference(mode, precision)
    assert whole(module) == pytest.approx(expected, rel=1e-3, abs=1e-5)
    # and not the one-optimizer result: the trunk is t0's alone
    assert whole(module) != pytest.approx(whole(fit_heads("one", precision=precision)), abs=1e-4)


def test_sequential_routes_under_16_mixed_say_why_not():
    with pytest.raises(ValueError, match="route_mode='sequential' runs one closure per route"):
        fit_heads("sequential", precision="16-mixed")


@pytest.mark.parametrize("routes", ["joint", "frequency"])
def test_steps_with_routes_that_write_nothing_never_synchronise(routes):
    class StrictRoutes(StrictMultiTask):
        def configure_optimizers(self):
            trunk_and_seg = [*self.trunk.parameters(), *self.seg.parameters()]
            seg = torch.optim.SGD(trunk_and_seg, lr=0.1)
            depth = torch.optim.SGD(self.depth.parameters(), lr=0.1)
            if routes == "frequency":
                return {
                    "seg": {"optimizer": seg, "frequency": 2},
                    "depth": {"optimizer": depth, "frequency": 1},
                }
            return {"seg": seg, "depth": depth}

    logger = MemoryLogger()
    model = StrictRoutes()
    make_trainer(logger, accelerator="gpu", max_steps=12, log_every_n_steps=5).fit(
        model, multitask_data(n=128)
    )
    assert model.strict_steps >= 9
    assert [step for step, _ in logger.series("train/seg")] == [4, 9, 11]


# ---------------------------------------------------------------- FSDP1 and DeepSpeed


@pytest.fixture
def process_group():
    """FSDP and DeepSpeed on one GPU start a process group (world size 1); other tests in this
    process must not see one (routes give zero gradients instead of none under one)."""
    yield
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    os.environ.pop("MASTER_PORT", None)  # the next one on a free port of its own


@pytest.mark.parametrize(
    "scenario",
    [
        "one",
        "optional",
        "joint",
        "frequency",
        "sequential",
        "uw",
    ],
)
def test_fsdp1_on_one_gpu_equals_a_single_device_run(scenario, process_group):
    from lightning.pytorch.strategies import FSDPStrategy

    single_log, fsdp_log = MemoryLogger(), MemoryLogger()
    single = fit_heads(scenario, single_log)
    fsdp = fit_heads(scenario, fsdp_log, strategy=FSDPStrategy())
    assert whole(fsdp) == pytest.approx(whole(single), abs=1e-6)
    # a window at step 2, the epoch's row and the last window at step 3 (4 steps, every 3)
    assert [s for s, _ in fsdp_log.rows] == [s for s, _ in single_log.rows] == [2, 3, 3]
    for (_, got), (_, want) in zip(fsdp_log.rows, single_log.rows):
        assert got == pytest.approx(want, rel=1e-6)


def test_fsdp1_gradient_diagnostics_say_they_cannot_work(process_group):
    from lightning.pytorch.strategies import FSDPStrategy

    with pytest.raises(RuntimeError, match=r"FSDPStrategy, FSDP1"):
        fit_heads("diagnostics", strategy=FSDPStrategy())


@pytest.mark.parametrize("scenario", ["one", "joint", "frequency"])
def test_deepspeed_zero2_on_one_gpu_equals_a_single_device_run(scenario, process_group):
    pytest.importorskip("deepspeed")
    single_log, zero_log = MemoryLogger(), MemoryLogger()
    single = fit_heads(scenario, single_log)
    zero = fit_heads(scenario, zero_log, strategy="deepspeed_stage_2")
    assert whole(zero) == pytest.approx(whole(single), abs=1e-6)
    assert [s for s, _ in zero_log.rows] == [s for s, _ in single_log.rows]
    for (_, got), (_, want) in zip(zero_log.rows, single_log.rows):
        assert got == pytest.approx(want, rel=1e-6)
