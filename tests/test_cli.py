"""LightningCLI: every option from YAML, and checkpoints that load without arguments."""

from __future__ import annotations

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
    assert module._lifecycle.select("seg") and not module._lifecycle.select("acc")
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
