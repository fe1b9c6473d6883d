"""FSDP2 (Lightning's ``ModelParallelStrategy``, ``fully_shard`` in ``configure_model``) on CPU:
2 gloo processes, every scenario also run under plain DDP (no ``find_unused_parameters``).

One subprocess runs every fit (see fsdp_job.py), once per test session. Expectations: FSDP2
equals DDP in parameters and in every logged value, and both equal a single-process replay
where one is written here.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from conftest import run_hung_safe
from test_ddp import regression_batches

pytestmark = [
    pytest.mark.ddp,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed"),
]
JOB = Path(__file__).with_name("fsdp_job.py")
TIMEOUT = 240
SCENARIOS = [
    "one",
    "optional",
    "none",
    "joint",
    "frequency",
    "sequential",
    "uw",
    "add_loss",
    "diagnostics",
    "resume",
]
COMPARED = [s for s in SCENARIOS if s != "resume"]
#: FSDP2's usual recipe (each block sharded, resharded after its forward) and the same blocks
#: kept unsharded (``reshard_after_forward=False``); each scenario also runs under DDP.
RECIPES = ["fsdp2-blocks", "fsdp2-kept"]
#: Routes as in the issue's report: each head on its own term (plain SGD, which keeps no state,
#: and Adam), the trunk on the total (SGD with momentum); one backward of the total suffices.
#: "joint" routes overlap (t1 reaches the trunk, which is t0's): a backward per route.
ROUTED = ["three", "three+optional", "three+none", "joint+optional", "joint+none"]
#: ``+early``: rank 1's forward returns None before running any block.
EARLY = ["none+early", "three+none+early", "joint+none+early"]
BLOCKS = ["one", "optional", "none", "uw", "joint", "frequency", "sequential", *ROUTED, *EARLY]
#: Gradient diagnostics (a backward per term before the step's) with a term absent on a rank,
#: or None from one, where FSDP2 allows them (the root, or blocks kept unsharded).
DIAGNOSED = ["diagnostics+optional", "diagnostics+none"]
#: Resumed runs (the three routes above, and turns), under DDP and every FSDP2 recipe.
RESUMED = ["ddp", "fsdp2", *RECIPES]
#: FSDP2 only, with the trunk sharded as a group of its own (resharded after its forward).
NESTED = ["nested_optional", "nested_diagnostics", "nested_routes"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[dict]]:
    """``"<scenario>-<strategy>"`` -> the two ranks' records."""
    out = tmp_path_factory.mktemp("fsdp")
    jobs = [f"{s}:{strategy}" for s in SCENARIOS for strategy in ("ddp", "fsdp2")]
    jobs += [f"{s}:ddp" for s in (*ROUTED, *EARLY)]
    jobs += [f"{s}:{recipe}" for s in BLOCKS for recipe in RECIPES]
    jobs += [f"{s}:{strategy}" for s in ("resume_three", "resume_turns") for strategy in RESUMED]
    jobs += [f"{s}:{strategy}" for s in DIAGNOSED for strategy in ("ddp", "fsdp2", "fsdp2-kept")]
    jobs += ["joint+late:fsdp2-kept", "joint+late:ddp"]
    jobs += [f"{s}:fsdp2" for s in NESTED]  # last: these raise
    jobs += ["joint+late:fsdp2-blocks"]
    log = run_hung_safe([str(JOB), "--out", str(out), *jobs], TIMEOUT, "FSDP job")
    records: dict[str, list[dict]] = {}
    for folder in sorted(p for p in out.iterdir() if p.is_dir() and p.name != "checkpoints"):
        files = sorted(folder.glob("rank*.json"))
        assert len(files) == 2, f"{folder.name}: expected a record from each rank:\n{log[-4000:]}"
        records[folder.name] = [json.loads(f.read_text()) for f in files]
    return records


def finished(ranks: list[dict]) -> list[dict]:
    assert [(r["exception"], r["message"]) for r in ranks] == [(None, None)] * 2
    assert ranks[0]["params"] == ranks[1]["params"]  # identical on both ranks, bit for bit
    return ranks


def assert_same_rows(rows: list, expected: list) -> None:
    assert [step for step, _ in rows] == [step for step, _ in expected]
    for (step, row), (_, want) in zip(rows, expected):
        assert row.keys() == want.keys(), f"step {step}"
        assert row == pytest.approx(want, rel=1e-6, abs=1e-7), f"step {step}"


def assert_trains_and_logs_alike(expected: list[dict], ranks: list[dict]) -> None:
    """``ranks`` (an FSDP2 run) trained and logged what ``expected`` (its DDP run) did."""
    assert ranks[0]["global_step"] == expected[0]["global_step"] == 4  # 4 steps a rank
    assert ranks[0]["initial_params"] == expected[0]["initial_params"]
    assert ranks[0]["params"] == pytest.approx(expected[0]["params"], abs=1e-6)
    assert ranks[0]["params"] != pytest.approx(ranks[0]["initial_params"], abs=1e-3)  # it trained
    assert_same_rows(ranks[0]["logged"], expected[0]["logged"])
    assert len(ranks[0]["logged"]) == 3  # a window, the epoch, the last window


@pytest.mark.parametrize("scenario", COMPARED)
def test_fsdp2_equals_ddp_in_parameters_and_logged_values(runs, scenario):
    ddp, fsdp2 = finished(runs[f"{scenario}-ddp"]), finished(runs[f"{scenario}-fsdp2"])
    assert_trains_and_logs_alike(ddp, fsdp2)


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("scenario", BLOCKS)
def test_fsdp2_blocks_train_and_log_what_ddp_does(runs, scenario, recipe):
    # every block sharded on its own, then the root: with the default reshard_after_forward the
    # blocks hold sharded parameters between their forward and their backward, and the ranks'
    # collectives must pair up whatever terms each rank has (None, optional terms, routes)
    ddp, fsdp2 = finished(runs[f"{scenario}-ddp"]), finished(runs[f"{scenario}-{recipe}"])
    assert_trains_and_logs_alike(ddp, fsdp2)


def test_no_sync_dist_advice_under_ddp_or_fsdp2(runs):
    # Lightning advises sync_dist=True for epoch-level values logged without it, once per name;
    # the epoch means are reduced over the ranks already and say so.
    warned = {name: [w for w in r[0]["warnings"] if "sync_dist" in w] for name, r in runs.items()}
    assert warned == {name: [] for name in runs}
    assert any("train/t0_epoch" in m for _, m in runs["one-fsdp2"][0]["logged"])


def replay(optional: bool = False):
    """Parameters and logged rows of the one-optimizer scenarios, replayed in one process: each
    step averages the ranks' gradients of their own totals (a rank without ``t1`` contributes
    nothing to head 1, as ``find_unused_parameters=True`` would have it); each logged value is
    the mean over the (rank, step) pairs of its window that had it."""
    from ddp_job import two_head_losses, two_heads

    net = two_heads()
    params = list(net.parameters())
    x, y, rank_indices = regression_batches()
    values: list[dict[str, float]] = []  # per (step, rank)
    for step in range(4):
        grads = [torch.zeros_like(p) for p in params]
        for rank in (0, 1):
            index = rank_indices[rank][2 * step : 2 * step + 2]
            losses = two_head_losses(net, (x[index], y[index]))
            if optional and rank == 0 and step < 2:
                del losses["t1"]
            total = sum(losses.values())
            found = torch.autograd.grad(total, params, allow_unused=True)
            for acc, grad in zip(grads, found):
                if grad is not None:
                    acc += grad / 2
            values.append({**{k: v.item() for k, v in losses.items()}, "loss": total.item()})
        with torch.no_grad():
            for p, grad in zip(params, grads):
                p -= 0.1 * grad

    def means(pairs: list[dict[str, float]], suffix: str = "") -> dict[str, float]:
        names = {k for pair in pairs for k in pair}
        return {
            f"train/{k}{suffix}": statistics.fmean(p[k] for p in pairs if k in p) for k in names
        }

    rows = [
        (2, {**means(values[0:6]), "epoch": 0}),
        (3, {**means(values, "_epoch"), "epoch": 0}),
        # the last window: its last batch's own step and epoch (Lightning's own labels)
        (3, {**means(values[6:8]), "epoch": 0}),
    ]
    return torch.cat([p.detach().flatten() for p in params]).tolist(), rows


@pytest.mark.parametrize("scenario", ["one", "optional"])
def test_fsdp2_and_ddp_equal_a_single_process_replay(runs, scenario):
    # "optional": t1 (head 1's only term) is absent on rank 0 at steps 0 and 1, before rank 0
    # ever saw it. DDP runs without find_unused_parameters, and FSDP2 reduce-scatters the same
    # parameters on both ranks: the absent head gets a zero gradient there.
    params, rows = replay(optional=scenario == "optional")
    for strategy in ("ddp", "fsdp2"):
        record = finished(runs[f"{scenario}-{strategy}"])[0]
        assert record["params"] == pytest.approx(params, abs=1e-6), strategy
        assert_same_rows(record["logged"], rows)


def test_joint_routes_equal_a_single_process_replay(runs):
    # the trunk is t0's, and t1 reaches it too: the route surrogate, not the fast path
    from ddp_job import two_head_losses, two_heads

    net = two_heads()
    x, y, rank_indices = regression_batches()
    routes = [
        ([*net[0].parameters(), *net[1].parameters()], "t0", 0.1),
        (list(net[2].parameters()), "t1", 0.2),
    ]
    for step in range(4):
        updates = []
        for params, term, lr in routes:
            grads = [torch.zeros_like(p) for p in params]
            for rank in (0, 1):
                index = rank_indices[rank][2 * step : 2 * step + 2]
                loss = two_head_losses(net, (x[index], y[index]))[term]
                for acc, grad in zip(grads, torch.autograd.grad(loss, params)):
                    acc += grad / 2
            updates += [(p, lr * grad) for p, grad in zip(params, grads)]
        with torch.no_grad():
            for p, update in updates:
                p -= update
    expected = torch.cat([p.detach().flatten() for p in net.parameters()]).tolist()
    assert finished(runs["joint-fsdp2"])[0]["params"] == pytest.approx(expected, abs=1e-6)


def test_none_on_one_rank_under_fsdp2_neither_hangs_nor_drops_the_other_ranks_gradients(runs):
    # rank 1's forward returns None at step 1: its zero reaches FSDP2's reduce-scatter too
    none, one = finished(runs["none-fsdp2"])[0], finished(runs["one-fsdp2"])[0]
    assert none["step_params"][0] == one["step_params"][0]
    assert none["step_params"][1] != pytest.approx(one["step_params"][1], abs=1e-6)


def test_add_loss_on_one_rank_under_fsdp2_is_logged_and_trained(runs):
    record = finished(runs["add_loss-fsdp2"])[0]
    first = record["logged"][0][1]
    assert first["train/util"] == 0.5  # the metric: both ranks' values pooled
    assert "train/t1" in first and "train/t0" in first


def test_gradient_diagnostics_under_fsdp2_are_logged_as_under_ddp(runs):
    rows = dict((s, m) for s, m in finished(runs["diagnostics-fsdp2"])[0]["logged"])
    assert sorted(k for k in rows[2] if k.startswith("grad_")) == [
        "grad_cos/t0_vs_t1",
        "grad_norm/t0",
        "grad_norm/t1",
    ]


@pytest.mark.parametrize("recipe", ["fsdp2", "fsdp2-kept"])
@pytest.mark.parametrize("scenario", DIAGNOSED)
def test_gradient_diagnostics_with_terms_absent_on_a_rank_equal_ddp(runs, scenario, recipe):
    # each rank differentiates its own terms: the passes must issue no collective under FSDP2
    ddp, fsdp2 = finished(runs[f"{scenario}-ddp"]), finished(runs[f"{scenario}-{recipe}"])
    assert_trains_and_logs_alike(ddp, fsdp2)
    assert any(k.startswith("grad_norm/") for _, row in fsdp2[0]["logged"] for k in row)


def route_replay(kind: str, optional: bool = False, none: bool = False) -> list[float]:
    """Parameters after the routed scenarios' 4 steps, replayed in one process with the same
    optimizers: each route's gradient is the mean over the ranks of its own terms' gradient
    on that rank (zero where a rank had none of them: ``optional`` drops t1 on rank 0 at steps
    0 and 1, ``none`` has rank 1 return nothing at step 1), and every route steps."""
    from ddp_job import two_head_losses, two_heads

    net = two_heads()
    trunk, head0, head1 = net
    if kind == "three":
        routes = [
            (list(head0.parameters()), ("t0",), torch.optim.SGD(head0.parameters(), lr=0.1)),
            (list(head1.parameters()), ("t1",), torch.optim.Adam(head1.parameters(), lr=0.01)),
            (
                list(trunk.parameters()),
                ("t0", "t1"),
                torch.optim.SGD(trunk.parameters(), lr=0.1, momentum=0.9),
            ),
        ]
    else:  # joint: the trunk is t0's, and t1 reaches it too
        owned0 = [*trunk.parameters(), *head0.parameters()]
        routes = [
            (owned0, ("t0",), torch.optim.SGD(owned0, lr=0.1)),
            (list(head1.parameters()), ("t1",), torch.optim.SGD(head1.parameters(), lr=0.2)),
        ]
    x, y, rank_indices = regression_batches()
    for step in range(4):
        for params, terms, _ in routes:
            grads = [torch.zeros_like(p) for p in params]
            for rank in (0, 1):
                if none and (rank, step) == (1, 1):
                    continue
                index = rank_indices[rank][2 * step : 2 * step + 2]
                losses = two_head_losses(net, (x[index], y[index]))
                if optional and rank == 0 and step < 2:
                    del losses["t1"]
                present = [losses[t] for t in terms if t in losses]
                if present:
                    found = torch.autograd.grad(sum(present), params, allow_unused=True)
                    for acc, grad in zip(grads, found):
                        if grad is not None:
                            acc += grad / 2
            for param, grad in zip(params, grads):
                param.grad = grad
        for _, _, optimizer in routes:
            optimizer.step()
    return torch.cat([p.detach().flatten() for p in net.parameters()]).tolist()


@pytest.mark.parametrize("scenario", ROUTED)
def test_routes_with_optional_terms_or_none_equal_a_single_process_replay(runs, scenario):
    kind, _, option = scenario.partition("+")
    expected = route_replay(kind, optional=option == "optional", none=option == "none")
    for strategy in ("ddp", *RECIPES):
        params = finished(runs[f"{scenario}-{strategy}"])[0]["params"]
        assert params == pytest.approx(expected, abs=1e-6), strategy


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_a_resumed_run_with_routes_equals_the_uninterrupted_one(runs, strategy):
    # Adam on one route, SGD with momentum on the other: optimizer state travels through the
    # checkpoint (a distributed checkpoint under FSDP2)
    straight = finished(runs[f"resume-straight-{strategy}"])[0]
    finished(runs[f"resume-saving-{strategy}"])
    resumed = finished(runs[f"resume-resumed-{strategy}"])[0]
    assert resumed["global_step"] == straight["global_step"] == 8
    assert resumed["params"] == pytest.approx(straight["params"], abs=1e-7)
    assert_same_rows(resumed["logged"], [(s, m) for s, m in straight["logged"] if s >= 4])


#: What each route's step count is at the checkpoint and at the end of the resumed run.
ROUTE_STEPS = {
    "resume_three": ({"t0": 4, "t1": 4, "loss": 4}, {"t0": 8, "t1": 8, "loss": 8}),
    "resume_turns": ({"t0": 4, "t1": 0}, {"t0": 7, "t1": 1}),
}


@pytest.mark.parametrize("strategy", RESUMED)
@pytest.mark.parametrize("scenario", list(ROUTE_STEPS))
def test_a_resumed_run_with_any_route_optimizer_equals_the_uninterrupted_one(
    runs, scenario, strategy
):
    # resume_three: plain SGD (no state at all) beside Adam and SGD with momentum; a distributed
    # checkpoint loads optimizer state strictly, and needs an entry for every trainable
    # parameter. resume_turns: the Adam route has not stepped when the checkpoint is saved (its
    # turn comes after 5 steps of plain SGD), and must resume without state, as it was.
    at_checkpoint, at_end = ROUTE_STEPS[scenario]
    straight = finished(runs[f"{scenario}-straight-{strategy}"])[0]
    saving = finished(runs[f"{scenario}-saving-{strategy}"])[0]
    assert saving["extra"]["route_steps"] == at_checkpoint
    resumed = finished(runs[f"{scenario}-resumed-{strategy}"])[0]
    assert resumed["global_step"] == straight["global_step"] == 8
    assert resumed["params"] == pytest.approx(straight["params"], abs=1e-7)
    assert resumed["params"] != pytest.approx(straight["initial_params"], abs=1e-3)
    assert_same_rows(resumed["logged"], [(s, m) for s, m in straight["logged"] if s >= 4])
    assert resumed["extra"]["route_steps"] == straight["extra"]["route_steps"] == at_end


def test_nested_fsdp2_groups_with_optional_terms_equal_ddp(runs):
    # the trunk's group runs forward on every rank; head 1 (in the root's group) sometimes not
    ddp, nested = finished(runs["optional-ddp"]), finished(runs["nested_optional-fsdp2"])
    assert nested[0]["params"] == pytest.approx(ddp[0]["params"], abs=1e-6)
    assert_same_rows(nested[0]["logged"], ddp[0]["logged"])


def test_routes_over_a_trunk_resharded_after_its_forward_equal_ddp(runs):
    # refused in 0.3: the trunk's unsharded parameters are found from FSDP2's own records
    assert_trains_and_logs_alike(finished(runs["joint-ddp"]), finished(runs["nested_routes-fsdp2"]))


def test_gradient_diagnostics_on_resharded_parameters_say_so_on_every_rank(runs):
    for record in runs["nested_diagnostics-fsdp2"]:
        assert record["exception"] == "RuntimeError"
        message = record["message"]
        assert message.startswith("gradient diagnostics and aggregator=")
        assert "'net.0.weight', 'net.0.bias'" in message
        assert "reshard_after_forward=False" in message


def test_routes_that_first_cross_after_the_first_step_are_refused_on_every_rank(runs):
    # t1 (which reaches t0's trunk) is on no rank at steps 0 and 1: the ranks settled on one
    # backward of the total with resharded blocks, and t1 at step 2 needs gathered ones
    for record in runs["joint+late-fsdp2-blocks"]:
        assert (record["exception"], record["global_step"]) == ("RuntimeError", 2)
        assert "term 't1' reaches parameters of route 't0'" in record["message"]
        assert "reshard_after_forward=False" in record["message"]
    # blocks kept unsharded gather at no cost: the same run trains as under DDP
    ddp, kept = finished(runs["joint+late-ddp"]), finished(runs["joint+late-fsdp2-kept"])
    assert_trains_and_logs_alike(ddp, kept)
