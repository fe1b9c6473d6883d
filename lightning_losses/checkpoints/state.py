"""What a checkpoint carries besides the weights, and when it applies.

Under ``checkpoint["lightning_losses"]``, as plain data (a checkpoint loads with
``weights_only=True``):

- ``skipped_steps``: steps skipped for non-finite losses, over all epochs;
- the running fit's partly filled window and epoch (``LossLog.state``), so that a resumed run
  writes what an uninterrupted one would have;
- ``classification``: training's term/metric verdicts, so that evaluation after a reload sums
  the same terms into ``val/loss``;
- ``routes`` and ``route_steps``: the per-key optimizers' routes and how often each stepped (a
  route's scheduler follows its own optimizer's steps).

Resuming a fit (``fit(ckpt_path=)``) restores all of it; any other load (``load_from_checkpoint``,
``validate(ckpt_path=)``) restores the count and the classification, and whatever runs next
starts from empty windows with whatever optimizers it configures.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_losses import _lightning

CHECKPOINT_KEY = "lightning_losses"


def save(core: Any, checkpoint: dict[str, Any]) -> None:
    """Add our entry (and the hyperparameters as plain values) to a checkpoint being saved."""
    from lightning_losses.checkpoints import hparams

    module = core.module
    trainer = _lightning.trainer_or_none(module)
    checkpoint[CHECKPOINT_KEY] = {
        "skipped_steps": module.skipped_steps,
        **_log_state(core),
        "classification": core.select.state(),
        **core.routing.state(trainer),
    }
    stored = checkpoint.get(module.CHECKPOINT_HYPER_PARAMS_KEY)
    if stored is not None:  # plain values only; what is left out is named (see hparams.py)
        checkpoint[module.CHECKPOINT_HYPER_PARAMS_KEY] = hparams.for_checkpoint(module, stored)


def load(core: Any, checkpoint: Mapping[str, Any]) -> None:
    """Restore our entry from a checkpoint being loaded (see the module docstring)."""
    state = checkpoint.get(CHECKPOINT_KEY, {})
    module = core.module
    module.skipped_steps = int(state.get("skipped_steps", 0))
    if "classification" in state:
        core.select.load_state(state["classification"])
    trainer = _lightning.trainer_or_none(module)
    # Resuming a fit (Lightning restores the module just before the fit starts): the saved
    # windows continue and the optimizers must match.
    if trainer is None or _lightning.running(trainer) != "fit":
        return
    core.routing.restore(state)
    # Most strategies restore before on_fit_start (which begins the fit's session); FSDP-like
    # ones after it, into the session already begun.
    core.recorder.log.load_state(
        state, apply_now=_lightning.restores_after_setup(trainer), rank=trainer.global_rank
    )


def _log_state(core: Any) -> dict[str, Any]:
    """The logging state, with the running fit's labels (a save outside a fit has none)."""
    fit = core.fit
    if fit is None:
        return core.recorder.log.state((0, 0), epoch_open=False)
    return core.recorder.log.state(fit.labels_now(), epoch_open=not fit.epoch_just_ended)
