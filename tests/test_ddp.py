"""DDP on CPU (gloo, 2 processes), each job in a subprocess with a timeout: a hang fails.

Every expectation is a single-process reference: means computed from the values each rank
returned, parameters from replaying DDP's averaged SGD steps in this process.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import run_hung_safe
from ddp_job import RankSteps  # noqa: F401  (the scenario whose values the reference replays)
from torch import nn
from torch.utils.data import DistributedSampler

pytestmark = [
    pytest.mark.ddp,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed"),
]
JOB = Path(__file__).with_name("ddp_job.py")
TIMEOUT = 240
pytestmark.append(pytest.mark.timeout(TIMEOUT * 3 + 60))  # the first test runs the whole batch


#: Scenarios fitted one after another in one 2-process job, the first time a test asks for one
#: of them: each job start costs two interpreters importing torch and Lightning, more than most
#: fits. Where at most a few tests of this file are selected (``-k``), each runs its own job.
BATCHED = (
    "means", "loaders", "add_loss", "none_rank1", "nan_raise", "nan_skip", "routes",
    "label_less_first", "one_rank_term",
    "diagnostics", "uw", "aggregator", "count_ours", "count_plain", "detector", "gan", "famo",
    "imtll",
)  # fmt: skip
_batch: dict[str, list[dict] | str] = {}
_selected = {"tests": 0}


@pytest.fixture(autouse=True, scope="module")
def _count_selected_tests(request):
    _selected["tests"] = sum(item.module is request.module for item in request.session.items)


def run_job(scenario: str, tmp_path: Path, strategy: str = "ddp") -> list[dict]:
    if strategy == "ddp" and scenario in BATCHED and _selected["tests"] > 3:
        if not _batch:
            _batch.update(_run_batch(tmp_path / "batch"))
        return _records(_batch, scenario)
    ranks, launcher, log = _run_job_once([scenario], tmp_path, strategy)
    if launcher is not None and launcher["exception"] == "ProcessExitedException":
        # A spawned worker that exits abnormally (seen once in CI, at gloo teardown) is the
        # process launcher's problem, not the job's: run it again once, and say so.
        print(f"ddp_spawn worker exited abnormally, retrying once: {launcher['message']}\n{log}")
        ranks, launcher, log = _run_job_once([scenario], tmp_path / "retry", strategy)
    assert launcher is None, f"the launching process raised {launcher}:\n{log[-4000:]}"
    return _records(ranks, scenario)


def _run_batch(out: Path) -> dict[str, list[dict] | str]:
    ranks, launcher, log = _run_job_once(list(BATCHED), out, "ddp", timeout=TIMEOUT * 3)
    assert launcher is None, f"the launching process raised {launcher}:\n{log[-4000:]}"
    return ranks


def _run_job_once(
    scenarios: list[str], out: Path, strategy: str, timeout: int = TIMEOUT
) -> tuple[dict[str, list[dict] | str], dict | None, str]:
    log = run_hung_safe(
        [str(JOB), *scenarios, "--out", str(out), "--strategy", strategy],
        timeout,
        f"DDP job {scenarios}",
    )
    ranks = {}
    for scenario in scenarios:
        launcher = out / scenario / "launcher.json"
        if launcher.exists():
            return {}, json.loads(launcher.read_text()), log
        files = sorted((out / scenario).glob("rank*.json"))
        # a scenario without both records fails its own test, not the others of the batch
        ranks[scenario] = [json.loads(f.read_text()) for f in files] if len(files) == 2 else log
    return ranks, None, log


def _records(ranks: dict[str, list[dict] | str], scenario: str) -> list[dict]:
    found = ranks[scenario]
    assert not isinstance(found, str), f"expected a record from each rank:\n{found[-4000:]}"
    return found


# ---------------------------------------------------------------- logged values


def rank_step_values(rank: int, step: int) -> dict[str, float]:
    """What RankSteps.forward returns on ``rank`` at ``step`` (training), as numbers."""
    out = {"a": 10.0 * rank + step, "b": 100.0 + step * rank, "m": float(rank)}
    if rank == 1:
        out["only1"] = 1000.0 + step
    if rank == 0 and step >= 3:
        out["late0"] = float(step)
    if step % 4 == 1:
        out["sometimes"] = float(rank)
    out["loss"] = sum(v for k, v in out.items() if k != "m")
    return out


def pooled_means(steps) -> dict[str, float]:
    """Mean of each key over the (rank, step) pairs where it was present."""
    values: dict[str, list[float]] = {}
    for step in steps:
        for rank in (0, 1):
            for key, value in rank_step_values(rank, step).items():
                values.setdefault(key, []).append(value)
    return {key: statistics.fmean(v) for key, v in values.items()}


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_logged_values_are_means_over_ranks_and_steps(tmp_path, strategy):
    ranks = run_job("means", tmp_path, strategy)
    assert [r["exception"] for r in ranks] == [None, None]
    logged = ranks[0]["logged"]
    step_rows = [
        (s, m)
        for s, m in logged
        if any(k.startswith("train/") and not k.endswith("_epoch") for k in m)
    ]
    # 8 steps a rank per epoch, 2 epochs, a write every 3 steps, and the last (partial)
    # window written when training stops, at its last batch's step
    windows = [range(0, 3), range(3, 6), range(6, 9), range(9, 12), range(12, 15), range(15, 16)]
    assert [s for s, _ in step_rows] == [2, 5, 8, 11, 14, 15]  # the last: its batch's own step
    for (step, row), window in zip(step_rows, windows):
        expected = pooled_means(window)
        written = {k.removeprefix("train/"): v for k, v in row.items() if k.startswith("train/")}
        assert written == pytest.approx(expected), f"window ending at step {step}"
    epoch_rows = [m for _, m in logged if "train/a_epoch" in m]
    for epoch, row in enumerate(epoch_rows):
        expected = pooled_means(range(8 * epoch, 8 * epoch + 8))
        written = {
            k.removeprefix("train/").removesuffix("_epoch"): v
            for k, v in row.items()
            if k.endswith("_epoch")
        }
        assert written == pytest.approx(expected)
    # val: 10 items split 5/5, batches of 3 and 2 per rank: the batch-size-weighted mean is 4.5
    val_rows = [m for _, m in logged if "val/a" in m]
    assert [m["val/a"] for m in val_rows] == pytest.approx([4.5, 4.5])
    # every rank holds the same reduced values (monitors agree across ranks)
    assert ranks[0]["callback_metrics"] == pytest.approx(ranks[1]["callback_metrics"])


def test_two_val_loaders_stay_apart_and_metrics_stay_out_of_the_total_under_ddp(tmp_path):
    ranks = run_job("loaders", tmp_path)
    assert [r["exception"] for r in ranks] == [None, None]
    logged = ranks[0]["logged"]
    # single-process reference: each loader's batch-size-weighted mean is its items' mean
    expected_val = {
        "val/a/dataloader_idx_0": 4.5,
        "val/loss/dataloader_idx_0": 4.5,  # "acc" is a metric: never summed
        "val/acc/dataloader_idx_0": 7.0,
        "val/a/dataloader_idx_1": 104.5,
        "val/loss/dataloader_idx_1": 104.5,
        "val/acc/dataloader_idx_1": 7.0,
    }
    (val_row,) = [m for _, m in logged if any(k.startswith("val/") for k in m)]
    assert {k: v for k, v in val_row.items() if k != "epoch"} == pytest.approx(expected_val)
    step_rows = [(s, m) for s, m in logged if "train/a" in m]
    # 8 steps a rank: 2 writes, then the rest at its last batch's own step (7)
    assert [s for s, _ in step_rows] == [2, 5, 7]
    for (_, row), window in zip(step_rows, [range(0, 3), range(3, 6), range(6, 8)]):
        a = statistics.fmean(10 * r + s for r in (0, 1) for s in window)
        written = {k: v for k, v in row.items() if k != "epoch"}
        assert written == pytest.approx({"train/a": a, "train/loss": a, "train/acc": 0.5})
    for rank in ranks:
        assert {k: v for k, v in rank["callback_metrics"].items() if k.startswith("val/")} == (
            pytest.approx(expected_val)
        )


def test_losses_added_on_one_rank_only_are_pooled_over_the_ranks_that_added_them(tmp_path):
    ranks = run_job("add_loss", tmp_path)
    assert [r["exception"] for r in ranks] == [None, None]
    step_rows = [(s, m) for s, m in ranks[0]["logged"] if "train/a" in m]
    assert [s for s, _ in step_rows] == [3, 7]  # 8 steps a rank, a write every 4
    for (_, row), window in zip(step_rows, [range(0, 4), range(4, 8)]):
        a = statistics.fmean(10 * r + s for r in (0, 1) for s in window)
        reg = statistics.fmean(1000 + s for s in window)  # rank 1's steps only
        totals = [10 * 0 + s for s in window] + [10 + s + 1000 + s for s in window]
        written = {k: v for k, v in row.items() if k != "epoch"}
        assert written == pytest.approx(
            {
                "train/a": a,
                "train/reg": reg,
                "train/util": 0.5,
                "train/loss": statistics.fmean(totals),
            }
        )


# ---------------------------------------------------------------- parameters


def regression_batches():
    """The job's regression data and the indices each rank sees: Lightning gives a training
    loader a shuffling DistributedSampler (seed 0) on each rank."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 3, generator=g)
    y = x.sum(-1) + 0.1 * torch.randn(16, generator=g)
    rank_indices = [
        list(DistributedSampler(range(16), num_replicas=2, rank=rank, shuffle=True, seed=0))
        for rank in (0, 1)
    ]
    return x, y, rank_indices


def reference_params(none_at=None, skip_step=None, steps=4) -> list[float]:
    """Replay 2-rank DDP with SGD(lr=0.1) in one process: each step averages the ranks'
    gradients (a rank that returned None contributes zero), as DDP's all-reduce does."""
    torch.manual_seed(0)
    net = nn.Linear(3, 1)
    x, y, rank_indices = regression_batches()
    for step in range(steps):
        grads = [torch.zeros_like(p) for p in net.parameters()]
        for rank in (0, 1):
            if (rank, step) == none_at:
                continue
            index = rank_indices[rank][2 * step : 2 * step + 2]
            pred = net(x[index]).squeeze(-1)
            loss = F.mse_loss(pred, y[index]) + 0.5 * F.l1_loss(pred, y[index])
            for acc, grad in zip(grads, torch.autograd.grad(loss, list(net.parameters()))):
                acc += grad / 2
        if step != skip_step:
            with torch.no_grad():
                for p, grad in zip(net.parameters(), grads):
                    p -= 0.1 * grad
    return torch.cat([p.detach().flatten() for p in net.parameters()]).tolist()


def test_none_on_one_rank_neither_hangs_nor_drops_the_other_ranks_gradients(tmp_path):
    ranks = run_job("none_rank1", tmp_path)
    assert [r["exception"] for r in ranks] == [None, None]
    assert ranks[0]["params"] == ranks[1]["params"]  # identical, bit for bit
    assert ranks[0]["params"] == pytest.approx(reference_params(none_at=(1, 1)), abs=1e-6)
    assert ranks[0]["params"] != pytest.approx(reference_params(), abs=1e-6)


def test_nan_on_one_rank_raises_on_every_rank(tmp_path):
    ranks = run_job("nan_raise", tmp_path)
    for record in ranks:
        assert record["exception"] == "FloatingPointError"
        assert "'mse'" in record["message"] and "at step 2 on rank 1" in record["message"]


def test_nan_on_one_rank_with_skip_updates_nothing_anywhere(tmp_path):
    ranks = run_job("nan_skip", tmp_path)
    assert [r["exception"] for r in ranks] == [None, None]
    assert [r["skipped_steps"] for r in ranks] == [1, 1]
    for record in ranks:
        steps = record["step_params"]
        assert steps[2] == steps[1] and steps[3] != steps[2]  # step 2 changed nothing
    assert ranks[0]["params"] == ranks[1]["params"]
    assert ranks[0]["params"] == pytest.approx(reference_params(skip_step=2), abs=1e-6)
    assert [
        v for _, m in ranks[0]["logged"] for k, v in m.items() if k == "train/skipped_steps"
    ] == [0.0, 1.0]


def test_per_key_optimizers_under_ddp_equal_a_single_process_replay(tmp_path):
    from ddp_job import two_head_losses, two_heads

    ranks = run_job("routes", tmp_path)
    assert [r["exception"] for r in ranks] == [None, None]
    assert ranks[0]["params"] == ranks[1]["params"]
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
            for rank in (0, 1):  # each route's gradient, averaged over ranks as DDP does
                index = rank_indices[rank][2 * step : 2 * step + 2]
                loss = two_head_losses(net, (x[index], y[index]))[term]
                for acc, grad in zip(grads, torch.autograd.grad(loss, params)):
                    acc += grad / 2
            updates += [(p, lr * grad) for p, grad in zip(params, grads)]
        with torch.no_grad():
            for p, update in updates:
                p -= update
    expected = torch.cat([p.detach().flatten() for p in net.parameters()]).tolist()
    assert ranks[0]["params"] == pytest.approx(expected, abs=1e-6)


def test_a_term_grad_less_on_one_ranks_first_batch_trains_on_every_later_step(tmp_path):
    """The fast plan rank 0 makes after a grad-less zero does not keep that verdict: every
    later step sums and trains "t1" on both ranks, as a single-process replay does."""
    from ddp_job import two_head_losses, two_heads

    ranks = run_job("label_less_first", tmp_path)
    assert [r["exception"] for r in ranks] == [None, None]
    assert ranks[0]["params"] == ranks[1]["params"]
    net = two_heads()
    params = list(net.parameters())
    x, y, rank_indices = regression_batches()
    logged: list[dict[str, float]] = []
    for step in range(4):
        grads = [torch.zeros_like(p) for p in params]
        values = {}
        for rank in (0, 1):
            index = rank_indices[rank][2 * step : 2 * step + 2]
            out = two_head_losses(net, (x[index], y[index]))
            terms = ["t0"] if (rank, step) == (0, 0) else ["t0", "t1"]
            total = sum(out[t] for t in terms)
            for acc, grad in zip(grads, torch.autograd.grad(total, params, allow_unused=True)):
                if grad is not None:  # (rank 0's first step: t1's head gets none)
                    acc += grad / 2
            values[rank] = {t: float(out[t]) for t in terms} | {"loss": float(total)}
        logged.append(values)
        with torch.no_grad():
            for p, grad in zip(params, grads):
                p -= 0.1 * grad
    expected = torch.cat([p.detach().flatten() for p in params]).tolist()
    assert ranks[0]["params"] == pytest.approx(expected, abs=1e-6)
    # the window of steps 2-3: every (rank, step) pair has both terms, and the total is theirs
    (_, window), *_ = [(s, m) for s, m in ranks[0]["logged"] if s == 3 and "train/loss" in m]
    pairs = [logged[s][r] for s in (2, 3) for r in (0, 1)]
    for name in ("t0", "t1", "loss"):
        assert window[f"train/{name}"] == pytest.approx(
            statistics.fmean(p[name] for p in pairs), rel=1e-6
        )


def test_a_name_that_matched_a_term_on_another_rank_only_is_not_called_misspelt(tmp_path):
    ranks = run_job("one_rank_term", tmp_path)
    assert [r["exception"] for r in ranks] == [None, None]
    said = [w for r in ranks for w in r["warnings"] if "check its spelling" in w]
    assert said == []
    assert "train/t1" in ranks[0]["callback_metrics"]  # t1 was a term, pooled from rank 1


def test_gradient_diagnostics_under_ddp_are_rank_means_and_leave_training_unchanged(tmp_path):
    from ddp_job import two_head_losses, two_heads

    ranks = run_job("diagnostics", tmp_path)
    assert [r["exception"] for r in ranks] == [None, None]
    assert ranks[0]["params"] == ranks[1]["params"]
    net = two_heads()
    params, trunk = list(net.parameters()), list(net[0].parameters())
    x, y, rank_indices = regression_batches()
    seen: list[list[float]] = []  # per (step, rank): norm t0, norm t1, cosine
    for step in range(4):
        grads = [torch.zeros_like(p) for p in params]
        for rank in (0, 1):
            index = rank_indices[rank][2 * step : 2 * step + 2]
            losses = two_head_losses(net, (x[index], y[index]))
            g0, g1 = (
                torch.cat(
                    [g.flatten() for g in torch.autograd.grad(losses[k], trunk, retain_graph=True)]
                )
                for k in ("t0", "t1")
            )
            seen.append(
                [g0.norm().item(), g1.norm().item(), (g0 @ g1 / g0.norm() / g1.norm()).item()]
            )
            for acc, grad in zip(grads, torch.autograd.grad(losses["t0"] + losses["t1"], params)):
                acc += grad / 2  # DDP's average of the total's gradient
        with torch.no_grad():
            for p, grad in zip(params, grads):
                p -= 0.1 * grad
    expected = torch.cat([p.detach().flatten() for p in net.parameters()]).tolist()
    assert ranks[0]["params"] == pytest.approx(expected, abs=1e-6)
    logged = {step: m for step, m in ranks[0]["logged"] if "grad_norm/t0" in m}
    assert sorted(logged) == [1, 3]
    for write, first in ((1, 0), (3, 4)):  # a window is 2 steps x 2 ranks
        window = seen[first : first + 4]
        means = [statistics.fmean(column) for column in zip(*window)]
        names = ["grad_norm/t0", "grad_norm/t1", "grad_cos/t0_vs_t1"]
        assert [logged[write][n] for n in names] == pytest.approx(means, rel=1e-5)


def weighed_heads_replay():
    """What a single-process replay of the WeighedHeads scenarios starts from: the network at
    its initial weights, the data, each rank's indices and the loss function."""
    from ddp_job import two_head_losses, two_heads

    net = two_heads()
    x, y, rank_indices = regression_batches()
    return net, x, y, rank_indices, two_head_losses


def test_uncertainty_weighting_under_ddp_equals_a_single_process_replay(tmp_path):
    ranks = run_job("uw", tmp_path)
    assert [r["exception"] for r in ranks] == [None, None]
    assert ranks[0]["params"] == ranks[1]["params"]  # s included: identical on every rank
    net, x, y, rank_indices, losses_of = weighed_heads_replay()
    s = torch.full((2,), 0.2, requires_grad=True)
    params = [s, *net.parameters()]  # the weighting is registered before the network
    for step in range(4):
        grads = [torch.zeros_like(p) for p in params]
        for rank in (0, 1):
            index = rank_indices[rank][2 * step : 2 * step + 2]
            losses = losses_of(net, (x[index], y[index]))
            stacked = torch.stack([losses["t0"], losses["t1"]])
            total = (0.5 * torch.exp(-s) * stacked).sum() + 0.5 * s.sum()
            for acc, grad in zip(grads, torch.autograd.grad(total, params)):
                acc += grad / 2
        with torch.no_grad():
            for p, grad in zip(params, grads):
                p -= 0.1 * grad
    expected = torch.cat([p.detach().flatten() for p in params]).tolist()
    assert ranks[0]["params"] == pytest.approx(expected, abs=1e-6)


def test_aggregator_under_ddp_equals_a_single_process_replay(tmp_path):
    from torchjd.aggregation import UPGrad

    from lightning_losses.gradients.aggregation import jacobian

    ranks = run_job("aggregator", tmp_path)
    assert [r["exception"] for r in ranks] == [None, None]
    assert ranks[0]["params"] == ranks[1]["params"]
    net, x, y, rank_indices, losses_of = weighed_heads_replay()
    trunk, heads = list(net[0].parameters()), [*net[1].parameters(), *net[2].parameters()]
    aggregator = UPGrad()
    for step in range(4):
        trunk_grad = torch.zeros(sum(p.numel() for p in trunk))
        head_grads = [torch.zeros_like(p) for p in heads]
        for rank in (0, 1):  # each rank aggregates its own Jacobian; DDP averages the results
            index = rank_indices[rank][2 * step : 2 * step + 2]
            losses = losses_of(net, (x[index], y[index]))
            trunk_grad += aggregator(jacobian([losses["t0"], losses["t1"]], trunk)) / 2
            for acc, grad in zip(
                head_grads, torch.autograd.grad(losses["t0"] + losses["t1"], heads)
            ):
                acc += grad / 2
        with torch.no_grad():
            offset = 0
            for p in trunk:
                p -= 0.1 * trunk_grad[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
            for p, grad in zip(heads, head_grads):
                p -= 0.1 * grad
    expected = torch.cat([p.detach().flatten() for p in net.parameters()]).tolist()
    assert ranks[0]["params"] == pytest.approx(expected, abs=1e-5)


# ---------------------------------------------------------------- cost


def collectives(record: dict) -> int:
    return sum(record["collectives"].values())


def test_sixteen_terms_cost_at_most_one_collective_per_write(tmp_path):
    ours = run_job("count_ours", tmp_path)
    plain = run_job("count_plain", tmp_path)
    writes, epochs = 8, 2  # 40 steps a rank, log_every_n_steps=5
    extra = collectives(ours[0]) - collectives(plain[0])
    # one gather per write and per epoch end, plus the one-off agreement on the 17 names
    # (an object gather, counted once and for the two gathers it issues, and a second gather)
    assert extra <= writes + epochs + 4, (ours[0]["collectives"], plain[0]["collectives"])
    assert collectives(ours[0]) == collectives(ours[1])


def test_detector_val_losses_and_metrics_under_ddp_equal_a_single_process_reference(tmp_path):
    # Each rank validates half of the set; val/ losses are pooled by batch size over the ranks,
    # the AP metric's states are gathered by torchmetrics alone (a second reduction would double
    # the object counts and halve recall_50).
    from detection import Scenes, TinyRCNN, collate, reference_scores

    ranks = run_job("detector", tmp_path)
    assert [r["exception"] for r in ranks] == [None, None]
    state = {k.removeprefix("model."): torch.tensor(v) for k, v in ranks[0]["state"].items()}
    model = TinyRCNN(negatives=16)
    model.load_state_dict(state)
    val = Scenes(16, 1)

    held = TinyRCNN(negatives=16)
    held.load_state_dict(state)
    held.train()
    held.backbone[1].eval()  # BatchNorm
    held.backbone[3].eval()  # Dropout
    sums: dict[str, float] = {}
    for rank in (0, 1):  # DistributedSampler(shuffle=False): rank r holds items r, r+2, ...
        items = [val[i] for i in range(rank, len(val), 2)]
        for start in range(0, len(items), 4):
            images, targets = collate(items[start : start + 4])
            with torch.no_grad():
                for name, value in held(images, targets).items():
                    sums[name] = sums.get(name, 0.0) + float(value) * len(images)
    expected = {f"val/{k}": v / len(val) for k, v in sums.items()}
    expected["val/loss"] = sum(expected.values())
    expected.update({f"val/{k}": v for k, v in reference_scores(model, val).items()})
    (last_val,) = [m for _, m in ranks[0]["logged"] if "val/map_50" in m][-1:]
    assert {k: last_val[k] for k in expected} == pytest.approx(expected, rel=1e-5)
    for rank in ranks:
        metrics = rank["callback_metrics"]
        assert {k: metrics[k] for k in expected} == pytest.approx(expected, rel=1e-5)


def test_a_sequential_gan_under_ddp_equals_a_single_process_replay(tmp_path):
    # D steps, then G against the updated D, every batch, on 2 ranks, with DDP's default
    # find_unused_parameters=False; the replay averages the two ranks' gradients by hand.
    from gan import adam, gan_losses, networks

    ranks = run_job("gan", tmp_path)
    assert [r["exception"] for r in ranks] == [None, None]
    assert ranks[0]["params"] == ranks[1]["params"]  # the replicas stay identical
    assert ranks[0]["global_step"] == 4

    g = torch.Generator().manual_seed(5)
    real, z = torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g)
    generator, critic = networks()
    optimizers = {"d": adam(critic.parameters()), "g": adam(generator.parameters())}
    samplers = [  # what Lightning gives each rank of a training loader: shuffled, seed 0
        DistributedSampler(range(16), num_replicas=2, rank=r, shuffle=True, seed=0) for r in (0, 1)
    ]
    for epoch in range(2):
        order = []
        for sampler in samplers:
            sampler.set_epoch(epoch)
            order.append(list(sampler))
        for start in (0, 4):
            rank_batches = [
                (real[idx[start : start + 4]], z[idx[start : start + 4]], None) for idx in order
            ]
            for player in ("d", "g"):
                optimizers[player].zero_grad()
                for batch in rank_batches:
                    (gan_losses(generator, critic, batch)[player] / 2).backward()
                optimizers[player].step()
    expected = torch.cat(
        [p.detach().flatten() for p in (*generator.parameters(), *critic.parameters())]
    )
    assert torch.allclose(torch.tensor(ranks[0]["params"]), expected, atol=1e-6)
    # each route's gradient is synchronised once per route step: one bucket all-reduce per pass
    for rank in ranks:
        assert rank["extra"]["allreduces"] == 2 * 4


@pytest.mark.parametrize("method", ["famo", "imtll"])
def test_torchjd_scalarizers_under_ddp_equal_a_single_process_replay_on_the_pooled_batch(
    tmp_path, method
):
    # Each rank scalarizes at the loss values pooled over ranks, so DDP's average of the ranks'
    # gradients is the single-process gradient on the two ranks' batches together; FAMO's update
    # sees the pooled recomputed losses, so its logits stay identical on both ranks.
    from ddp_job import scalarizer_data
    from test_scalarizers import TwoTasks, losses
    from torchjd.scalarization import FAMO, IMTLL

    ranks = run_job(method, tmp_path)
    assert [r["exception"] for r in ranks] == [None, None]
    assert ranks[0]["params"] == ranks[1]["params"]  # replicas (and the scalarizer) identical

    data = scalarizer_data()
    sampler = [
        DistributedSampler(range(32), num_replicas=2, rank=r, shuffle=True, seed=0) for r in (0, 1)
    ]
    order = [list(s) for s in sampler]
    scalarizer = FAMO(2) if method == "famo" else IMTLL(2)
    net = TwoTasks()
    optimizer = torch.optim.SGD([*net.parameters(), *scalarizer.parameters()], lr=0.1)
    for start in range(0, 16, 4):
        pooled = [i for idx in order for i in idx[start : start + 4]]
        batch = tuple(t[pooled] for t in data.tensors)
        optimizer.zero_grad()
        scalarizer(torch.stack(list(losses(net, batch).values()))).backward()
        optimizer.step()
        if method == "famo":
            with torch.no_grad():
                scalarizer.update(torch.stack(list(losses(net, batch).values())))
    expected = torch.cat(
        [p.detach().flatten() for p in (*scalarizer.parameters(), *net.parameters())]
    )
    assert torch.allclose(torch.tensor(ranks[0]["params"]), expected, rtol=1e-5, atol=1e-6)
