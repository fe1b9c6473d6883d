"""Routes on a module that, as FSDP1 (``use_orig_params=True``) does, holds fresh views of one
flat parameter under its parameters' names at every forward: each step's route gradients reach
the flat parameter through that step's views (FSDP1 itself needs a GPU: see test_gpu.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_losses.distributed import sharding
from lightning_losses.routing import RoutedOptimizer, Router


class FlatHeads(nn.Module):
    """A trunk and two heads whose parameters become views of ``flat`` at every forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.ModuleList([nn.Linear(3, 4), nn.Linear(4, 1), nn.Linear(4, 1)])
        self.originals = list(self.net.parameters())
        self.flat = torch.cat([p.detach().flatten() for p in self.originals]).requires_grad_()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        offset = 0
        for module in self.net:
            for name, param in list(module._parameters.items()):
                n = param.numel()
                module._parameters[name] = self.flat[offset : offset + n].view(param.shape)
                offset += n
        h = self.net[0](x).tanh()
        return {
            "t0": F.mse_loss(self.net[1](h).squeeze(-1), y),
            "t1": F.l1_loss(self.net[2](h).squeeze(-1), y),
        }


def test_each_step_differentiates_that_steps_views_of_the_flat_parameter():
    module = FlatHeads()
    trunk, head0, head1 = (list(m.parameters()) for m in module.net)
    optimizers = {
        ("t0",): torch.optim.SGD([*trunk, *head0], lr=0.1),
        ("t1",): torch.optim.SGD(head1, lr=0.1),
    }
    router = Router(RoutedOptimizer(optimizers), sharding.leaf_resolver(module))
    g = torch.Generator().manual_seed(1)
    for _ in range(2):  # the second step's views are new tensors
        x, y = torch.randn(4, 3, generator=g), torch.randn(4, generator=g)
        losses = module(x, y)
        names = tuple(losses)
        router.note(names)
        assert router.views and not router.one_backward_suffices(names, list(losses.values()))
        module.flat.grad = None
        router.surrogate(names, torch.stack(list(losses.values()))).backward()

        split = len(torch.cat([p.flatten() for p in [*trunk, *head0]]))
        expected0 = torch.autograd.grad(module(x, y)["t0"], module.flat)[0][:split]
        expected1 = torch.autograd.grad(module(x, y)["t1"], module.flat)[0][split:]
        assert torch.allclose(module.flat.grad, torch.cat([expected0, expected1]))
        assert expected0.abs().sum() > 0 and expected1.abs().sum() > 0
