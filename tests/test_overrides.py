"""A subclass overrides Lightning hooks as on any LightningModule, without ``super()``, and
logs exactly what it logs without the overrides (API.md section 1, 0.3)."""

from __future__ import annotations

import math
import os
from typing import Any

import lightning as L
import pytest
import torch
from conftest import MemoryLogger, MultiTask, make_trainer, multitask_data
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_losses import LossDictModule, add_loss, add_metric
from lightning_losses.session.hooks import NAMES

#: Every hook the library takes part in, and the epoch ends it handles in a callback: a
#: subclass overrides them all, without super().
OVERRIDDEN = (*NAMES, "on_train_epoch_end", "on_validation_epoch_end", "on_test_epoch_end")

#: Lightning's signature of each chained hook, for overrides that do nothing of the library's.
_ARGS = {
    "configure_callbacks": (),
    "setup": ("stage",),
    "on_train_batch_start": ("batch", "batch_idx"),
    "on_train_batch_end": ("outputs", "batch", "batch_idx"),
    "on_before_optimizer_step": ("optimizer",),
    "on_validation_batch_start": ("batch", "batch_idx", "dataloader_idx=0"),
    "on_validation_batch_end": ("outputs", "batch", "batch_idx", "dataloader_idx=0"),
    "on_test_batch_start": ("batch", "batch_idx", "dataloader_idx=0"),
    "on_test_batch_end": ("outputs", "batch", "batch_idx", "dataloader_idx=0"),
    "on_save_checkpoint": ("checkpoint",),
    "on_load_checkpoint": ("checkpoint",),
    "teardown": ("stage",),
}


class Regularised(MultiTask):
    """Adds a loss and a metric from inside forward, so batch hooks matter too."""

    def forward(self, batch: Any) -> Any:
        out = super().forward(batch)
        add_loss("l2", 1e-3 * self.trunk.weight.square().sum())
        add_metric("seen", float(len(batch[0])))
        return out


def _overriding(call_super: bool) -> type[LossDictModule]:
    """A subclass that overrides every chained hook, counting calls, with or without super()."""
    body: dict[str, Any] = {}
    for hook in OVERRIDDEN:
        params = ", ".join(("self", *_ARGS.get(hook, ())))
        names = ", ".join(p.split("=")[0] for p in _ARGS.get(hook, ()))
        call = (
            f"return super(type(self).__mro__[1], self).{hook}({names})"
            if call_super
            else ("return [] " if hook == "configure_callbacks" else "return None")
        )
        source = (
            f"def {hook}({params}):\n"
            f"    self.calls[{hook!r}] = self.calls.get({hook!r}, 0) + 1\n"
            f"    {call}\n"
        )
        namespace: dict[str, Any] = {}
        exec(source, namespace)
        body[hook] = namespace[hook]
    body["calls"] = None

    def __init__(self: Any, **kwargs: Any) -> None:
        Regularised.__init__(self, **kwargs)
        self.calls = {}

    body["__init__"] = __init__
    return type(f"Overriding{'Super' if call_super else ''}", (Regularised,), body)


def _run(cls: type[LossDictModule], tmp_path: Any) -> tuple[list[Any], dict[str, Any], Any]:
    logger = MemoryLogger()
    torch.manual_seed(0)
    module = cls(prog_bar=["loss", "seg"])
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = make_trainer(
        logger,
        max_epochs=2,
        log_every_n_steps=3,
        limit_val_batches=2,
        enable_checkpointing=True,
        callbacks=[checkpoints],
        num_sanity_val_steps=1,
    )
    trainer.fit(module, multitask_data(n=56), multitask_data(n=32, seed=1))
    trainer.test(module, multitask_data(n=24, seed=2), verbose=False)
    resumed = cls(prog_bar=["loss", "seg"])
    values = {k: float(v) for k, v in trainer.callback_metrics.items()}
    make_trainer(logger, max_epochs=3, log_every_n_steps=3).fit(
        resumed, multitask_data(n=56), ckpt_path=checkpoints.last_model_path
    )
    return logger.rows, values, [p.detach().clone() for p in resumed.parameters()]


def _same_rows(a: list[Any], b: list[Any]) -> None:
    assert [step for step, _ in a] == [step for step, _ in b]
    for (_, left), (_, right) in zip(a, b):
        assert left.keys() == right.keys()
        for name in left:
            assert math.isclose(left[name], right[name], rel_tol=0, abs_tol=0), name


@pytest.mark.parametrize("call_super", [False, True], ids=["without_super", "with_super"])
def test_overridden_hooks_log_exactly_what_plain_hooks_log(tmp_path: Any, call_super: bool) -> None:
    plain_rows, plain_values, plain_params = _run(Regularised, tmp_path / "plain")
    cls = _overriding(call_super)
    rows, values, params = _run(cls, tmp_path / "overriding")
    assert len(plain_rows) == 14  # windows, epoch ends, validations, the test, the resumed fit
    _same_rows(rows, plain_rows)
    assert values == plain_values
    for p, q in zip(params, plain_params):
        assert torch.equal(p, q)  # the resumed fit continued the same windows and optimizers


def test_the_library_part_runs_once_per_hook_call_through_a_super_chain() -> None:
    """Two levels of overrides, each calling super(): the outermost wrapper runs the library's
    part, the inner wrapper and LossDictModule's own hook do not run it again."""
    runs: list[str] = []

    class Base(MultiTask):
        def on_validation_epoch_start(self) -> None:
            runs.append("base")
            super().on_validation_epoch_start()

    class Outer(Base):
        def on_validation_epoch_start(self) -> None:
            runs.append("outer")
            super().on_validation_epoch_start()

    logger = MemoryLogger()
    module = Outer()
    original = module._core.on_validation_epoch_start
    module._core.on_validation_epoch_start = lambda: (runs.append("library"), original())[1]
    make_trainer(logger, max_epochs=2).fit(module, multitask_data(), multitask_data(n=16))
    assert runs == ["library", "outer", "base"] * 2
    assert [step for step, m in logger.rows if "val/loss" in m] == [7, 15]


def test_a_mixin_that_overrides_a_hook_is_chained_too(tmp_path: Any) -> None:
    class Quiet:
        def on_train_epoch_end(self) -> None:  # a plain mixin, no super() possible
            pass

    class Mixed(Quiet, MultiTask):  # type: ignore[misc]
        pass

    logger = MemoryLogger()
    make_trainer(logger, max_epochs=1).fit(Mixed(), multitask_data())
    assert [step for step, m in logger.rows if "train/loss_epoch" in m] == [7]


def test_checkpoint_hooks_without_super_keep_our_entry(tmp_path: Any) -> None:
    class Custom(MultiTask):
        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            checkpoint["mine"] = 1

    module = Custom(nonfinite="skip")
    trainer = make_trainer(max_epochs=1, default_root_dir=tmp_path)
    trainer.fit(module, multitask_data())
    path = os.path.join(tmp_path, "last.ckpt")
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["mine"] == 1
    assert checkpoint["lightning_losses"]["classification"]["terms"] == ["depth", "seg"]
    assert L.__version__  # the plain Lightning API was all this test used
