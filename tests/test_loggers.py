"""Every logged name survives every Lightning logger: MLflow (local file store) beside CSV."""

from __future__ import annotations

import pytest
from conftest import MultiTask, make_trainer, multitask_data

mlflow = pytest.importorskip("mlflow")


class Named(MultiTask):
    """conftest's two heads, a third term of a given name, diagnostics and a weight."""

    def __init__(self, third: str = "aux", **options) -> None:
        super().__init__(grad_diagnostics_every_n_steps=2, loss_weights={"depth": 0.5}, **options)
        self.third = third

    def forward(self, batch):
        out = self.losses(batch)
        out[self.third] = self.depth(self.trunk(batch[0]).relu()).pow(2).mean()
        return out


@pytest.fixture
def mlflow_logger(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import MLFlowLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # newer MLflow asks for this opt-in
    return MLFlowLogger(experiment_name="test", tracking_uri=f"file:{tmp_path / 'mlruns'}")


def logged_names(logger) -> set[str]:
    client = mlflow.tracking.MlflowClient(tracking_uri=logger._tracking_uri)
    return set(client.get_run(logger.run_id).data.metrics)


def test_every_name_reaches_mlflow_unchanged_and_equal_to_csv(mlflow_logger, tmp_path):
    import csv

    from lightning.pytorch.loggers import CSVLogger

    csv_logger = CSVLogger(tmp_path / "csv")
    make_trainer(logger=[mlflow_logger, csv_logger], max_epochs=1, log_every_n_steps=2).fit(
        Named(), multitask_data()
    )
    names = logged_names(mlflow_logger)
    assert {
        "train/seg", "train/depth", "train/aux", "train/loss", "weight/depth",
        "grad_norm/seg", "grad_cos/seg_vs_depth", "grad_cos/seg_vs_aux", "grad_cos/depth_vs_aux",
        "train/seg_epoch",
    } <= names  # fmt: skip
    with open(csv_logger.log_dir + "/metrics.csv") as handle:
        columns = set(next(csv.reader(handle))) - {"epoch", "step"}
    assert columns == names - {"epoch"}
    client = mlflow.tracking.MlflowClient(tracking_uri=mlflow_logger._tracking_uri)
    history = client.get_metric_history(mlflow_logger.run_id, "train/seg")
    assert [m.step for m in history] == [1, 3, 5, 7]


def test_a_key_that_mlflow_would_refuse_is_an_error_naming_it(mlflow_logger):
    with pytest.raises(ValueError, match=r"'train/损失' .* would write it as 'train/'"):
        make_trainer(logger=mlflow_logger, max_steps=1).fit(Named("损失"), multitask_data())


def test_a_key_that_mlflow_would_rewrite_is_named_in_a_warning(mlflow_logger):
    with pytest.warns(UserWarning, match=r"'train/größe' is logged there as 'train/gre'"):
        make_trainer(logger=mlflow_logger, max_steps=1).fit(Named("größe"), multitask_data())


def test_keys_that_mlflow_would_merge_are_an_error():
    from lightning_losses.logging.names import NameCheck

    class MLFlowLogger:  # only the type's name is read
        pass

    check = NameCheck()
    with pytest.raises(ValueError, match=r"'train/a\|b' and 'train/ab' both become 'train/ab'"):
        check.check(["train/a|b", "train/ab"], [MLFlowLogger()])


def test_without_mlflow_names_are_not_checked():
    make_trainer(max_steps=1).fit(Named("损失"), multitask_data())
