"""LightningCLI: every option from YAML, and checkpoints that load without arguments."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("jsonargparse")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

from cli import main  # noqa: E402
from multitask import MultiTask  # noqa: E402


def test_example_config_fits_and_its_checkpoint_loads_without_arguments(tmp_path):
    cli = main(
        [
            "fit",
            "--config",
            str(EXAMPLES / "configs" / "multitask.yaml"),
            "--trainer.max_steps=6",
            "--trainer.log_every_n_steps=2",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--trainer.default_root_dir={tmp_path}",
            "--model.loss_weights.depth=0.25",
            "--model.nonfinite=skip",
        ]
    )
    module, trainer = cli.model, cli.trainer
    assert trainer.global_step == 6
    optimizer = trainer.optimizers[0]
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["lr"] == 0.003 and optimizer.defaults["weight_decay"] == 0.01
    assert type(trainer.lr_scheduler_configs[0].scheduler).__name__ == "StepLR"
    assert module.loss_weights.get("depth", 1.0) == 0.25 and module.nonfinite == "skip"
    assert module._core.select("seg") and not module._core.select("acc")
    assert {"grad_norm/seg", "grad_cos/seg_vs_depth"} <= set(trainer.callback_metrics)
    assert module.weighting.terms == ("seg", "depth")
    assert "weight/seg" in trainer.callback_metrics

    [last] = Path(tmp_path).rglob("last.ckpt")
    loaded = MultiTask.load_from_checkpoint(last)
    assert loaded.loss_weights.get("depth", 1.0) == 0.25 and loaded.nonfinite == "skip"
    assert type(loaded.weighting).__name__ == "UncertaintyWeighting"
    assert type(loaded.optimizer_factory(loaded.parameters())) is torch.optim.AdamW
    for (name, p), q in zip(module.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(p, q), name


def test_fit_help_is_short_and_names_the_options_a_user_sets(capsys, monkeypatch):
    # every nn.Module in torch used to be listed under --model.model and --model.weighting:
    # 1,792 lines, 900 of them class paths
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--help"])
    assert stopped.value.code == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert len(lines) < 600, len(lines)
    for option in [
        "--config",
        "--trainer.max_epochs",
        "--model.loss_keys",
        "--model.loss_weights",
        "--model.weighting",
        "--model.optimizer",
        "--model.nonfinite",
        "--data.batch_size",
    ]:
        assert re.search(rf"^  (-\w \w+, )?{re.escape(option)}\b", text, re.M), option
    # the library's strategies stay listed; the rest is counted by package
    assert "lightning_losses.weighting.UncertaintyWeighting" in text
    assert "torch.nn.Linear" not in text
    assert re.search(r"and \d+ more \(\d+ in torch", " ".join(text.split()))


def test_short_listing_keeps_ours_and_the_users_classes_first():
    from lightning_losses.cli import shorten_listing

    paths = ["torch.nn.Linear", "torch.nn.ReLU", "mypkg.Net", "lightning_losses.weighting.GradNorm"]
    assert shorten_listing(paths, 4) == ", ".join(paths)
    assert shorten_listing(paths, 2) == (
        "lightning_losses.weighting.GradNorm, mypkg.Net and 2 more (2 in torch)"
    )
    assert shorten_listing(paths[:2], 1) == "torch.nn.Linear and 1 more (1 in torch)"


def test_a_top_level_optimizer_in_the_config_is_what_trains(tmp_path):
    """LightningCLI's own `optimizer:` (beside `model:`) replaces configure_optimizers on the
    instance; the module trains with it."""
    cli = main(
        [
            "fit",
            "--config",
            str(EXAMPLES / "configs" / "multitask.yaml"),
            "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--trainer.default_root_dir={tmp_path}",
            "--optimizer=torch.optim.SGD",
            "--optimizer.lr=0.05",
        ]
    )
    optimizer = cli.trainer.optimizers[0]
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["lr"] == 0.05
    assert cli.trainer.global_step == 2
