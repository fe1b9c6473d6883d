"""torchjd's scalarizers as ``weighting=``, against the plain loops torchjd documents."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import MemoryLogger, MultiTask, make_trainer, multitask_data

from lightning_losses.weighting import ScalarizerWeighting

scalarization = pytest.importorskip("torchjd.scalarization")


class TwoTasks(MultiTask):
    """conftest's two-head model (SGD, lr 0.1, over every parameter, the strategy's included)."""


def losses(net, batch) -> dict[str, torch.Tensor]:
    return MultiTask.losses(net, batch)


def plain_loop(scalarizer, batches, stateful: bool):
    """The loop torchjd's docstrings write: scalarize, step, then (FAMO) update with the losses
    recomputed on the same batch."""
    net = TwoTasks()
    optimizer = torch.optim.SGD([*net.parameters(), *scalarizer.parameters()], lr=0.1)
    for batch in batches:
        values = torch.stack(list(losses(net, batch).values()))
        optimizer.zero_grad()
        scalarizer(values).backward()
        optimizer.step()
        if stateful:
            with torch.no_grad():
                scalarizer.update(torch.stack(list(losses(net, batch).values())))
    return net, scalarizer


@pytest.mark.parametrize(
    ("make", "stateful"),
    [
        (lambda: scalarization.FAMO(2), True),
        (lambda: scalarization.IMTLL(2), False),
        (lambda: scalarization.UW(2), False),
        (lambda: scalarization.GeometricMean(), False),
    ],
    ids=["FAMO", "IMTLL", "UW", "GeometricMean"],
)
def test_a_scalarizer_trains_as_torchjds_own_loop(make, stateful):
    data = multitask_data(n=48)
    module = TwoTasks(weighting=make())
    logger = MemoryLogger()
    make_trainer(logger=logger, max_epochs=1, log_every_n_steps=1).fit(module, data)
    reference, scalarizer = plain_loop(make(), list(data), stateful)
    # the gradient is sum_k dS/dl_k grad l_k instead of autograd through S: equal to rounding
    for a, b in zip(
        [*module.trunk.parameters(), *module.seg.parameters(), *module.depth.parameters()],
        reference.parameters(),
    ):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(module.weighting.scalarizer.parameters(), scalarizer.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert isinstance(module.weighting, ScalarizerWeighting)
    # the weights logged are dS/dl at the step's losses, and train/loss is S itself
    first = {name: series[0][1] for name, series in ((n, logger.series(n)) for n in (
        "weight/seg", "weight/depth", "train/loss", "train/seg", "train/depth"))}  # fmt: skip
    check = make()
    point = torch.tensor([first["train/seg"], first["train/depth"]], requires_grad=True)
    objective = check(point)
    (expected,) = torch.autograd.grad(objective, point)
    assert [first["weight/seg"], first["weight/depth"]] == pytest.approx(
        expected.tolist(), rel=1e-5
    )
    assert first["train/loss"] == pytest.approx(float(objective), rel=1e-5)


def test_famo_resumes_exactly(tmp_path):
    # the same batch every step: a loader that cannot resume mid-epoch restarts the epoch
    from torch.utils.data import DataLoader

    data = DataLoader([next(iter(multitask_data(n=8)))] * 10, batch_size=None)
    straight = TwoTasks(weighting=scalarization.FAMO(2))
    make_trainer(max_steps=8, max_epochs=3).fit(straight, data)

    first = TwoTasks(weighting=scalarization.FAMO(2))
    trainer = make_trainer(max_steps=4, max_epochs=3)
    trainer.fit(first, data)
    path = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(path)
    torch.load(path, weights_only=True)  # plain tensors and values only
    resumed = TwoTasks(weighting=scalarization.FAMO(2))
    make_trainer(max_steps=8, max_epochs=3).fit(resumed, data, ckpt_path=path)
    for a, b in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(a, b)
    ours = resumed.weighting.scalarizer._optimizer.state_dict()["state"][0]
    theirs = straight.weighting.scalarizer._optimizer.state_dict()["state"][0]
    assert all(torch.equal(ours[k], theirs[k]) for k in ("exp_avg", "exp_avg_sq"))


def test_a_step_without_every_term_names_what_is_missing():
    class Optional(TwoTasks):
        def forward(self, batch):
            out = super().forward(batch)
            if self.trainer.global_step == 1:
                del out["depth"]
            return out

    with pytest.raises(
        ValueError,
        match=r"scalarizes the terms \['seg', 'depth'\], but this "
        r"step has \['seg'\] \(missing \['depth'\]",
    ):
        make_trainer(max_steps=3).fit(Optional(weighting=scalarization.IMTLL(2)), multitask_data())


def test_dwa_from_torchjd_rolls_its_epochs():
    module = TwoTasks(weighting=scalarization.DWA())
    make_trainer(max_epochs=3).fit(module, multitask_data(n=32))
    assert len(module.weighting.scalarizer._previous_averages) == 2
    model_copy = copy.deepcopy(module.weighting.scalarizer._previous_averages)
    assert all(torch.isfinite(t).all() for t in model_copy)


def test_validation_with_a_scalarizer_neither_crashes_nor_advances_its_state():
    data = multitask_data(n=32)
    # before any fit, and inside Lightning's inference mode: the weights of val/loss
    uw = TwoTasks(weighting=scalarization.UW(2))
    (result,) = make_trainer().validate(uw, data, verbose=False)
    assert result["val/loss"] == pytest.approx(0.5 * (result["val/seg"] + result["val/depth"]))
    # DWA's epoch history counts training batches only, with or without validation
    with_val, without_val = (TwoTasks(weighting=scalarization.DWA()) for _ in range(2))
    make_trainer(max_epochs=3).fit(with_val, data, multitask_data(n=16, seed=1))
    make_trainer(max_epochs=3).fit(without_val, data)
    for a, b in zip(
        with_val.weighting.scalarizer._previous_averages,
        without_val.weighting.scalarizer._previous_averages,
    ):
        assert torch.equal(a, b)
    for a, b in zip(with_val.parameters(), without_val.parameters()):
        assert torch.equal(a, b)
