"""Per-key routes under ``torch.compile`` (CPU inductor, one torch thread as under torchrun): the
same updates as eager; disjoint routes keep the one plain backward although a compiled region
hides which term reaches which parameter, and overlapping routes get their backward per route
although inductor's compiled backward donates its buffers.

About 3 s with a warm inductor cache, 15 s with an empty one (2-core machine, lightly loaded)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_trainer, multitask_data
from test_routing import Routed, disjoint, overlapping


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_compiled_routes_update_like_eager_with_one_backward_where_routes_are_disjoint(
    monkeypatch,
):
    grad = torch.autograd.grad
    retained: list[bool] = []

    def counting(*args, **kwargs):  # the router's per-route backwards keep the graph
        retained.append(bool(kwargs.get("retain_graph")))
        return grad(*args, **kwargs)

    data = multitask_data(n=24)
    # (routes, accumulate_grad_batches): under accumulation the first micro-batch runs before
    # any optimizer step, compiled
    for routes, accumulate in ((disjoint, 1), (overlapping, 1), (disjoint, 2), (overlapping, 2)):
        eager, compiled = Routed(routes), Routed(routes)
        compiled.losses = torch.compile(compiled.losses)
        options = dict(max_steps=3 // accumulate, accumulate_grad_batches=accumulate)
        make_trainer(None, **options).fit(eager, data)
        retained.clear()
        with monkeypatch.context() as patch:
            patch.setattr(torch.autograd, "grad", counting)
            make_trainer(None, **options).fit(compiled, data)
        case = f"{routes.__name__}, accumulate_grad_batches={accumulate}"
        for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
            torch.testing.assert_close(q.detach(), p.detach(), msg=f"{case}: {name}")
        if routes is disjoint:
            assert not any(retained), case  # one plain backward per batch, compiled or not
        else:  # seg's backward keeps the graph for depth's, in every batch
            assert retained.count(True) == 3 // accumulate * accumulate, case
