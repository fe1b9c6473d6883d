"""Corners a random search found (issue #23): the last row's labels, the time before the first
training step, reloads, non-scalar losses, damaged checkpoints, churning key sets, odd mappings."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import MemoryLogger, make_trainer
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_losses as ll
from lightning_losses import LossDictModule


class Tiny(LossDictModule):
    """``a`` (a term), and optionally a returned accuracy and an added metric."""

    def __init__(self, acc: bool = False, added: bool = False, **kwargs: Any) -> None:
        super().__init__(optimizer=lambda p: torch.optim.SGD(p, lr=0.1), **kwargs)
        torch.manual_seed(0)
        self.net = nn.Linear(2, 1)
        self.acc, self.added = acc, added

    def forward(self, batch: Any) -> Any:
        (x,) = batch
        out = {"a": self.net(x).pow(2).mean()}
        if self.acc:
            out["acc"] = (self.net(x) > 0).float().mean()
        if self.added:
            ll.add_metric("m", torch.tensor(2.5))
        return out


def data(n: int = 3, batch_size: int = 1) -> DataLoader:
    return DataLoader(
        TensorDataset(torch.randn(n, 2, generator=torch.Generator().manual_seed(0))),
        batch_size=batch_size,
    )


def labels(logger: MemoryLogger, name: str) -> list[tuple[int, int]]:
    return [(step, int(m["epoch"])) for step, m in logger.rows if name in m]


# ------------------------------------------------------------------------------------------
# 1. the last row is labelled like Lightning's own
# ------------------------------------------------------------------------------------------


class StopAt(Callback):
    """Asks to stop after training batch ``batch`` (as Lightning's Timer does)."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, out: Any, batch: Any, i: int
    ) -> None:
        if i == self.batch:
            trainer.should_stop = True


@pytest.mark.parametrize(
    ("options", "rows"),
    [
        # 3 batches, one epoch, a write every 2 steps: the last window is batch 2's (step 2,
        # epoch 0), written after the epoch row; never at step 3 or in epoch 1, which never ran
        (dict(max_epochs=1, log_every_n_steps=2), [(1, 0), (2, 0, "epoch"), (2, 0)]),
        # max_steps=3 in an epoch of 5: the last window is batch 2's
        (dict(max_epochs=2, max_steps=3, log_every_n_steps=2), [(1, 0), (2, 0, "epoch"), (2, 0)]),
        # a stop asked in on_train_batch_end: written at that batch, as Lightning writes its own
        # step metrics there, so before the epoch row
        (dict(max_epochs=2, log_every_n_steps=5, callbacks=[StopAt(2)]), [(2, 0), (2, 0, "epoch")]),
    ],
)
def test_last_window_has_the_last_batch_step_and_epoch(
    options: dict[str, Any], rows: list[Any]
) -> None:
    logger = MemoryLogger()
    make_trainer(logger, **options).fit(Tiny(), data(5 if "max_steps" in options else 3))
    got = [
        (step, int(m["epoch"])) + (("epoch",) if "train/a_epoch" in m else ())
        for step, m in logger.rows
    ]
    assert got == rows


# ------------------------------------------------------------------------------------------
# 2. before the first training step, nothing is guessed wrong
# ------------------------------------------------------------------------------------------


def test_added_metric_is_never_summed_before_training() -> None:
    model = Tiny(added=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (got,) = make_trainer().validate(model, data(), verbose=False)
    assert got["val/m"] == 2.5
    assert got["val/loss"] == pytest.approx(got["val/a"], rel=1e-12)  # not a + 2.5


def test_a_weighting_term_list_decides_in_the_sanity_check() -> None:
    from lightning_losses.weighting import DynamicWeightAverage

    model = Tiny(acc=True, added=True, weighting=DynamicWeightAverage(["a"]))
    trainer = make_trainer(num_sanity_val_steps=2, max_epochs=1)
    trainer.fit(model, data(), data())  # raised "got loss term 'acc'" in the sanity check
    assert float(trainer.callback_metrics["val/loss"]) == pytest.approx(
        float(trainer.callback_metrics["val/a"]) * 1.0, rel=1e-6
    )


def test_summaries_follow_the_final_classification(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_losses.logging import summaries

    defined: list[str] = []
    monkeypatch.setattr(
        summaries, "define_min_summaries", lambda trainer, names: defined.extend(names)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(num_sanity_val_steps=2).fit(Tiny(acc=True), data(), data())
    assert "val/acc" not in defined and "val/a" in defined and "val/loss" in defined


def test_the_guess_warning_only_where_it_can_be_wrong_and_once() -> None:
    message = "no training step has told loss terms from metrics yet"
    with pytest.warns(UserWarning, match=message) as record:
        make_trainer().validate(Tiny(acc=True), data(), verbose=False)
    assert sum(message in str(w.message) for w in record) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # the weights name both: nothing is guessed; an added metric is never a term
        model = Tiny(acc=True, added=True, loss_weights={"a": 1.0, "ac*": 0.5})
        (got,) = make_trainer().validate(model, data(), verbose=False)
    assert not [w for w in caught if message in str(w.message)]
    assert got["val/loss"] == pytest.approx(got["val/a"] + 0.5 * got["val/acc"], rel=1e-6)


# ------------------------------------------------------------------------------------------
# 4. a loss that is not a scalar is not silently dropped
# ------------------------------------------------------------------------------------------


class Unreduced(LossDictModule):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(optimizer=lambda p: torch.optim.SGD(p, lr=0.1), **kwargs)
        self.net = nn.Linear(2, 1)

    def forward(self, batch: Any) -> Any:
        (x,) = batch
        p = self.net(x).squeeze(-1)
        return {"a": p.pow(2).mean(), "l1": F.l1_loss(p, torch.zeros_like(p), reduction="none")}


def test_an_unreduced_loss_beside_terms_gets_one_warning_naming_it() -> None:
    with pytest.warns(UserWarning, match=r"'l1'.*forgotten \.mean\(\)") as record:
        make_trainer().fit(Unreduced(), data(4, batch_size=2))
    assert sum("'l1'" in str(w.message) for w in record) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer().fit(Unreduced(loss_keys=["a"]), data(4, batch_size=2))
    assert not [w for w in caught if "'l1'" in str(w.message)]


# ------------------------------------------------------------------------------------------
# 7. mappings that fail to read give our error
# ------------------------------------------------------------------------------------------


class Broken(Mapping[str, Any]):
    """A mapping that lists ``b`` but cannot look it up."""

    def __init__(self, a: torch.Tensor) -> None:
        self.a = a

    def __iter__(self) -> Any:
        return iter(["a", "b"])

    def __len__(self) -> int:
        return 2

    def __getitem__(self, key: str) -> Any:
        if key == "a":
            return self.a
        raise KeyError(key)


def test_a_mapping_that_fails_to_read_names_the_key() -> None:
    from lightning_losses.terms.parse import parse_output
    from lightning_losses.terms.selector import KeySelector

    a = torch.tensor(1.0, requires_grad=True)
    with pytest.raises(TypeError, match=r"Broken whose entry 'b' could not be read \(KeyError"):
        parse_output(Broken(a), KeySelector(), "train")
    with pytest.raises(TypeError, match=r"entry 'outer/b' could not be read"):
        parse_output({"outer": Broken(a)}, KeySelector(), "train")


# ------------------------------------------------------------------------------------------
# 6. memory stays bounded while key sets churn
# ------------------------------------------------------------------------------------------

CHURNING = [f"t{i}" for i in range(8)]


class Churn(LossDictModule):
    """A new subset of 8 terms almost every step (up to 255 key sets)."""

    def __init__(self) -> None:
        super().__init__(optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
        self.net, self.i = nn.Linear(2, 1), 0

    def forward(self, batch: Any) -> Any:
        self.i += 1
        base = self.net(batch[0]).pow(2).mean()
        chosen = [n for k, n in enumerate(CHURNING) if (self.i * 2654435761 >> k) & 1]
        return {n: base * (k + 1) for k, n in enumerate(chosen)} or {"t0": base}


class Entry(Callback):
    """The library's checkpoint entry after the last batch of a long epoch (mid-epoch)."""

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        checkpoint: dict[str, Any] = {}
        module.on_save_checkpoint(checkpoint)
        self.entry = checkpoint["lightning_losses"]


def test_churning_key_sets_keep_counts_and_checkpoints_bounded() -> None:
    entry = Entry()
    make_trainer(max_steps=300, log_every_n_steps=50, callbacks=[entry]).fit(
        Churn(), data(400)
    )  # one epoch of 400 batches, stopped at 300: the epoch means hold 300 steps
    # grew with every key set seen (about 250 here, and on and on in a longer epoch)
    assert len(entry.entry["epoch"]["counts"]) <= len(CHURNING) + 1  # the terms and the total
    assert len(entry.entry["window"]["counts"]) <= 65


# ------------------------------------------------------------------------------------------
# 5. a damaged checkpoint entry says so
# ------------------------------------------------------------------------------------------


def damage_window(entry: dict[str, Any]) -> str:
    entry["window"]["names"] = entry["window"]["names"][1:]  # one slot more than names
    return r"\['window'\] is inconsistent: 'data' has shape \(3, \d+\) for \d+ names"


def damage_kinds(entry: dict[str, Any]) -> str:
    entry["registry"]["kinds"] = entry["registry"]["kinds"][:-1]
    return r"\['registry'\] is inconsistent: \d+ names but \d+ kinds"


def damage_counts(entry: dict[str, Any]) -> str:
    entry["epoch"]["counts"] = [[["train/nowhere"], 1.0]]
    return r"\['epoch'\] is inconsistent: 'counts' counts names \['train/nowhere'\] that it has no"


@pytest.mark.parametrize("damage", [damage_window, damage_kinds, damage_counts])
def test_a_damaged_checkpoint_entry_is_a_value_error_naming_it(tmp_path: Any, damage: Any) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    saver = ModelCheckpoint(tmp_path, every_n_train_steps=2)  # mid-fit: the window holds 2 steps
    trainer = make_trainer(
        max_steps=3, log_every_n_steps=50, callbacks=[saver], enable_checkpointing=True
    )
    trainer.fit(Tiny(acc=True), data(4))
    (path,) = tmp_path.glob("*step=2.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    message = damage(checkpoint["lightning_losses"])
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"checkpoint entry 'lightning_losses'" + message):
        make_trainer(max_steps=4).fit(Tiny(acc=True), data(4), ckpt_path=path)


# ------------------------------------------------------------------------------------------
# 3. built-in weightings reload with no arguments
# ------------------------------------------------------------------------------------------


class TwoHeads(LossDictModule):
    """The docs' subclass: options passed through to LossDictModule."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        torch.manual_seed(0)
        self.trunk, self.head = nn.Linear(2, 4), nn.Linear(4, 2)

    def forward(self, batch: Any) -> Any:
        (x,) = batch
        out = self.head(self.trunk(x).relu())
        return {"a": out[:, 0].pow(2).mean(), "b": (out[:, 1] - 1).pow(2).mean()}


class Heads(nn.Module):
    """The same network for wrap mode (no constructor arguments: recorded as its class)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk, self.head = nn.Linear(2, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> Any:
        out = self.head(self.trunk(x).relu())
        return {"a": out[:, 0].pow(2).mean(), "b": (out[:, 1] - 1).pow(2).mean()}


def strategies() -> list[Any]:
    from lightning_losses.weighting import DynamicWeightAverage, GradNorm, UncertaintyWeighting

    made = [
        ("uw", lambda: dict(weighting=UncertaintyWeighting(["a", "b"], init_log_variance=0.5))),
        ("dwa", lambda: dict(weighting=DynamicWeightAverage(["a", "b"], temperature=1.5))),
        ("gradnorm", lambda: dict(weighting=GradNorm(["a", "b"], shared="trunk", alpha=0.5))),
    ]
    try:
        from torchjd import aggregation, scalarization
    except ImportError:
        return made
    return [
        *made,
        ("famo", lambda: dict(weighting=scalarization.FAMO(2, lr=0.01))),
        ("jd-dwa", lambda: dict(weighting=scalarization.DWA(temperature=3.0))),
        ("upgrad", lambda: dict(aggregator=aggregation.UPGrad())),
        ("mgda", lambda: dict(aggregator=aggregation.MGDA(epsilon=0.01))),
    ]


@pytest.mark.parametrize("mode", ["subclass", "wrap"])
@pytest.mark.parametrize("strategy", strategies(), ids=lambda s: s[0])
def test_builtin_weightings_reload_with_no_arguments(
    tmp_path: Any, mode: str, strategy: Any
) -> None:
    options = strategy[1]()
    prefix = "" if mode == "subclass" else "model."
    shared = {"weighting": "trunk", "aggregator": "trunk"}
    if "aggregator" in options:
        options["shared_parameters"] = prefix + shared["aggregator"]
    if "weighting" in options and hasattr(options["weighting"], "shared_prefixes"):
        from lightning_losses.weighting import GradNorm

        options["weighting"] = GradNorm(["a", "b"], shared=prefix + "trunk", alpha=0.5)
    module = TwoHeads(**options) if mode == "subclass" else LossDictModule(Heads(), **options)
    trainer = make_trainer(max_epochs=2, default_root_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, data(8, batch_size=4))
    path = tmp_path / "done.ckpt"
    trainer.save_checkpoint(path)
    torch.load(path, weights_only=True)  # plain values and tensors only
    cls = TwoHeads if mode == "subclass" else LossDictModule
    loaded = cls.load_from_checkpoint(path)  # raised "does not record how to build weighting"
    want, got = module.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        if isinstance(want[key], torch.Tensor):
            assert torch.equal(want[key], got[key]), key
        else:  # extra state (FAMO's inner optimizer, DWA's history)
            assert repr(want[key]) == repr(got[key]), key
    # the plain settings too (a temperature, an epsilon: not in any state dict)
    for before, after in zip(plain_settings(module), plain_settings(loaded)):
        assert before == after


def plain_settings(module: LossDictModule) -> list[dict[str, Any]]:
    strategy = module.weighting if module.weighting is not None else module.aggregator
    return [
        {k: v for k, v in vars(m).items() if type(v) in (int, float, str, tuple)}
        for m in strategy.modules()
    ]


class Routed(Tiny):
    """``a`` and ``b`` on their own optimizers, and an accuracy."""

    def __init__(self) -> None:
        super().__init__(acc=True)
        self.other = nn.Linear(2, 1)

    def forward(self, batch: Any) -> Any:
        out = super().forward(batch)
        out["b"] = self.other(batch[0]).pow(2).mean()
        return out

    def configure_optimizers(self) -> Any:
        return {
            "a": torch.optim.SGD(self.net.parameters(), lr=0.1),
            "b": torch.optim.SGD(self.other.parameters(), lr=0.1),
        }


def test_route_names_decide_in_the_sanity_check() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(num_sanity_val_steps=2).fit(Routed(), data(), data())
    # the routes name every term: acc is not guessed to be one
    assert not [w for w in caught if "no training step has told" in str(w.message)]
