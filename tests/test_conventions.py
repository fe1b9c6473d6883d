"""Lightning's own conventions, kept: epoch values under the plain name, no noise."""

from __future__ import annotations

import warnings

import pytest
from conftest import MemoryLogger, MultiTask, make_trainer, multitask_data


def test_a_fit_without_validation_hears_nothing_about_validation_step():
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(max_epochs=1).fit(MultiTask(), multitask_data())
    assert not [w for w in caught if "validation_step" in str(w.message)]
    assert warnings.filters == before  # the silence was local to the loop check


def test_lightning_still_warns_a_plain_module_without_a_val_loader():
    import lightning as L
    import torch

    class Plain(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(6, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            pass

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    make_trainer(max_epochs=1).fit(MultiTask(), multitask_data())  # ours, first
    with pytest.warns(UserWarning, match="You defined a `validation_step` but have no"):
        make_trainer(max_epochs=1).fit(Plain(), multitask_data())


def test_after_an_epoch_the_plain_name_holds_the_epoch_mean_for_monitors(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    logger = MemoryLogger()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="train/loss", mode="min")
    trainer = make_trainer(
        logger=logger, max_epochs=2, log_every_n_steps=3, callbacks=[checkpoint],
        enable_checkpointing=True,
    )  # fmt: skip
    trainer.fit(MultiTask(), multitask_data())
    epoch_means = [v for _, v in logger.series("train/loss_epoch")]
    last_windows = [v for _, v in logger.series("train/loss")]
    assert len(epoch_means) == 2
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(epoch_means[-1])
    assert epoch_means[-1] != pytest.approx(last_windows[-1])  # so the test can tell them apart
    assert float(checkpoint.best_model_score) == pytest.approx(min(epoch_means))


def test_the_quick_start_fits_with_a_sanity_check_and_no_warning_from_us(recwarn) -> None:
    """The README's quick start (weights on some terms, the default sanity check): nothing we
    say there could help, since the sanity check's values are never written."""
    model = MultiTask(loss_weights={"depth": 0.5})
    make_trainer(num_sanity_val_steps=2, max_epochs=1).fit(
        model, multitask_data(), multitask_data(seed=1)
    )
    ours = [str(w.message) for w in recwarn if "training step has told" in str(w.message)]
    assert ours == []
