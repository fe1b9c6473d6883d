"""absent_terms.AbsentTerms in one process: what it adds, when, and how often it walks the graph.

The 2-process behaviour (plain DDP and FSDP2 with a term absent on one rank) is in
test_fsdp.py; here the fit's number of processes is given to the tracker (one per fit).
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_losses.distributed import absent_terms
from lightning_losses.distributed.absent_terms import AbsentTerms


def heads() -> nn.Module:
    torch.manual_seed(0)
    module = nn.Module()
    module.trunk, module.a, module.b = nn.Linear(3, 4), nn.Linear(4, 1), nn.Linear(4, 1)
    module.frozen = nn.Linear(4, 1).requires_grad_(False)
    return module


def only_a(module: nn.Module) -> torch.Tensor:
    return module.a(module.trunk(torch.ones(2, 3))).pow(2).mean()


def test_on_several_processes_every_unreached_trainable_parameter_gets_a_zero_gradient():
    module = heads()
    objective = only_a(module)
    covered = AbsentTerms(distributed=True).cover(module, ("a",), objective)
    assert covered is not objective and covered.item() == objective.item()
    covered.backward()
    assert torch.equal(module.b.weight.grad, torch.zeros(1, 4))  # only "b" reaches it
    assert torch.equal(module.b.bias.grad, torch.zeros(1))
    assert module.frozen.weight.grad is None
    expected = torch.autograd.grad(only_a(module), module.a.weight)[0]
    assert torch.equal(module.a.weight.grad, expected)  # the reached ones: their own gradient


def test_alone_nothing_is_added_and_an_absent_head_keeps_no_gradient():
    module = heads()
    objective = only_a(module)
    assert AbsentTerms(distributed=False).cover(module, ("a",), objective) is objective
    objective.backward()
    assert module.b.weight.grad is None  # the optimizer skips it, as without the library


def test_nothing_is_added_when_the_objective_reaches_every_parameter():
    module = heads()
    objective = only_a(module) + module.b(torch.ones(1, 4)).sum()
    assert AbsentTerms(distributed=True).cover(module, ("a", "b"), objective) is objective


def test_the_graph_is_walked_once_per_key_set(monkeypatch):
    walks = []
    walk = absent_terms.reach
    monkeypatch.setattr(absent_terms, "reach", lambda *t: walks.append(1) or walk(*t))
    module, tracker = heads(), AbsentTerms(distributed=True)
    for _ in range(3):
        tracker.cover(module, ("a",), only_a(module)).backward()
    tracker.cover(module, ("a", "b"), only_a(module) + module.b(torch.ones(1, 4)).sum())
    assert len(walks) == 2


def test_an_objective_without_a_graph_is_returned_unchanged():
    module = heads()
    with torch.no_grad():
        objective = only_a(module)
    assert AbsentTerms(distributed=True).cover(module, ("a",), objective) is objective
