"""What only a GPU shows: no host-device synchronisation on steps that write nothing.

Skipped without CUDA (CI has none). ``torch.cuda.set_sync_debug_mode("error")`` makes any
synchronising call (``.item()``, ``.tolist()``, a blocking copy to the host, ``nonzero``) raise.
"""

from __future__ import annotations

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
    ours = [*module.generator.parameters(), *module.critic.parameters()]
    for a, b in zip(ours, [*generator.parameters(), *critic.parameters()]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
