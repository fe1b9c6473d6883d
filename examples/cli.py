"""Configure a ``LossDictModule`` from YAML with LightningCLI.

    python examples/cli.py fit --config examples/configs/multitask.yaml
    python examples/cli.py fit --config examples/configs/multitask.yaml --model.loss_weights.depth=2

Every option of ``LossDictModule`` (``loss_keys``, ``loss_weights``, ``nonfinite``, ``optimizer``,
``lr_scheduler``, ``weighting``, ``grad_diagnostics_every_n_steps``, ``prog_bar``) is a constructor
argument with a type hint, so LightningCLI exposes it; the subclass forwards them with
``**options``; ``fit --help`` lists them all. Checkpoints written this way load with
``MultiTask.load_from_checkpoint(path)``.
"""

from __future__ import annotations

from multitask import MultiTask, SyntheticTasks

from lightning_losses.cli import LossDictCLI


def main(args: list[str] | None = None) -> LossDictCLI:
    # LightningCLI, with --help that lists a few known subclasses per argument instead of every
    # nn.Module in torch
    return LossDictCLI(MultiTask, SyntheticTasks, args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
