"""The library's side of one ``LossDictModule``: its parts, and what each hook asks of them.

``LossDictModule`` is the public surface; its hooks (generated from one list, see ``hooks``)
call the methods of the same name here, or of the running :class:`~.fit.FitSession`. The parts,
each owning one decision:

    KeySelector      which returned values are terms (terms/selector.py)
    LossWeights      static weights, per key set (weighting/static.py)
    Total            terms -> the weighted total (weighting/total.py)
    Guards           non-finite losses, terms without gradient, mistakes said at once
    Recorder         plans, accumulators, writes to Lightning (logging/)
    RoutingSession   per-key optimizers: turns, passes, clipping, resume (routing/)
    Evaluation       validation and test (evaluation/)

A fit's state (the trainer, the write schedule, the fast plans) is not here but in the fit
session, created at ``on_fit_start`` and dropped when the fit ends.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_losses import _lightning, _warnings
from lightning_losses.checkpoints import state as checkpoint_state
from lightning_losses.evaluation import predictions
from lightning_losses.evaluation.loop import Evaluation
from lightning_losses.gradients.diagnostics import GradientDiagnostics, gradient_statistics
from lightning_losses.gradients.shared import SharedParameters
from lightning_losses.logging.recorder import Recorder
from lightning_losses.routing import config as routing_config
from lightning_losses.routing.session import RoutingSession, is_routed, translate
from lightning_losses.session import epoch_ends, guards, hooks
from lightning_losses.session.fit import FitSession
from lightning_losses.session.guards import Guards
from lightning_losses.session.steps import StepOutput, fast_step, joint_step
from lightning_losses.terms import added
from lightning_losses.terms.calling import ModelCall
from lightning_losses.terms.parse import ParsedOutput
from lightning_losses.terms.patterns import did_you_mean
from lightning_losses.terms.selector import KeySelector
from lightning_losses.weighting.scalarizer import ScalarizerWeighting
from lightning_losses.weighting.static import LossWeights
from lightning_losses.weighting.total import Combined, Total

STAGES = ("train", "val", "test")


class Core:
    """The parts of one module and the hooks' work (see the module docstring)."""

    def __init__(self, module: Any, options: Mapping[str, Any], weighting: Any) -> None:
        self.module = module
        self.loss_keys = options["loss_keys"]
        self.select = KeySelector(options["loss_keys"], options["total_key"])
        # before the first training step, what the configuration names decides (API.md §1)
        self.select.name_terms(list(options["loss_weights"] or ()))
        self.weights = LossWeights(options["loss_weights"])
        self.total = Total(weighting)
        self.scalarizer = isinstance(weighting, ScalarizerWeighting)
        self.name_weighting_terms(weighting)
        self.guards = Guards(module, options["nonfinite"])
        self.recorder = Recorder(self.weights, tuple(options["prog_bar"]))
        self.routing = RoutingSession(options["route_mode"])
        self.model_call = ModelCall(options["call"])
        self.eval_metrics, self.inputs = options["metrics"], options["inputs"]
        metrics = self.eval_metrics
        self.evaluation = Evaluation(
            module,
            self.select,
            self.recorder,
            self.total,
            options["eval_losses"],
            None if metrics is None else predictions.EvalMetrics(metrics, self.inputs),
        )
        self._provided_validation_step = options["provided_validation_step"]
        self.aggregator = options["aggregator"]
        self.shared = SharedParameters(options["shared_parameters"])
        every = options["grad_diagnostics_every_n_steps"]
        self.diagnostics = None if every is None else GradientDiagnostics(every, self.shared)
        self._undiagnosable: set[tuple[str, ...]] = set()  # key sets warned about
        self._checked_unmatched = False
        self._quiet: Any = None
        #: The running fit (None outside one): see fit.py.
        self.fit: FitSession | None = None
        self._bind_parts()

    def _bind_parts(self) -> None:
        #: Each hook of session/hooks.py -> the method that does the library's part of it.
        self.parts: dict[str, Callable[..., Any]] = {
            name: hooks.nothing if name in hooks.FIT_HOOKS else getattr(self, name)
            for name in hooks.NAMES
        }
        fit = self.fit
        if fit is not None:
            self.parts.update({name: getattr(fit, name) for name in hooks.FIT_HOOKS})

    def __getstate__(self) -> dict[str, Any]:
        # a pickled or deep-copied module (ddp_spawn, an EMA teacher) carries no running fit
        state = {**self.__dict__, "fit": None, "_quiet": None}
        del state["parts"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._bind_parts()

    @property
    def weighting(self) -> Any:
        return self.total.weighting

    def combines_terms(self) -> str | None:
        if self.weighting is not None:
            return "weighting"
        return "aggregator" if self.aggregator is not None else None

    def name_weighting_terms(self, weighting: Any) -> None:
        terms = getattr(weighting, "terms", None)
        if isinstance(terms, tuple):  # a weighting weighs exactly its own terms
            self.select.name_terms(terms, all_terms=True)

    def plans_changed(self) -> None:
        """What a step planned from the options no longer holds: staged rows are added to the
        window as they were planned, then every plan is made again."""
        log = self.recorder.log
        log.flush()
        log.session.plans.clear()
        if self.fit is not None:
            self.fit.choose_step()

    # ------------------------------------------------------------------ steps

    def step(self, output: Any, stage: str | None, batch: Any, loader: int | None) -> StepOutput:
        """``total_loss``: reduce what ``forward`` returned and record it (see steps.py)."""
        collected = added.STEP.get()  # add_loss / add_metric: this step's collection
        if collected is not None and collected.owner is self.module:
            added.STEP.set(None)
            if collected.metrics:
                self.select.add_metrics(collected.metrics)  # never a term
                output = added.merge(output, collected)
            elif collected.losses:
                output = added.merge(output, collected)
        if stage is None:
            stage = _lightning.stage_now(_lightning.trainer_or_none(self.module))
        if stage == "train":
            fit = self.fit
            if fit is None:  # outside a fit: recorded, never written
                return joint_step(None, self, output).returned()
            if fit.objective is not None and not fit.sequential:
                guards.raise_called_twice(self.module)  # (a sequential batch calls it per pass)
            step = None
            fast = fit.fast
            if fast is not None and type(output) is dict:
                keyset = fast.get(tuple(output))
                if keyset is not None:
                    step = fast_step(fit, keyset, output)
            if step is None:
                step = fit.full_step(output)
            return step.objective if step.outputs is None else step.returned()
        if stage not in STAGES:
            raise ValueError(f"stage={stage!r}; expected one of {', '.join(map(repr, STAGES))}")
        trainer = _lightning.trainer_or_none(self.module)
        if loader is None:
            loader = _lightning.current_dataloader_idx(trainer)
        return self.evaluation.step(output, stage, batch, loader, trainer)

    def record_train(
        self, parsed: ParsedOutput, plan: Any, combined: Combined | None, step: int
    ) -> None:
        self.recorder.record(
            "train",
            parsed,
            plan,
            combined,
            self.module.device,
            step=step,
            check_nonfinite=self.guards.nonfinite == "raise",
        )

    def diagnose(self, names: tuple[str, ...], terms: list[Tensor]) -> None:
        """Record gradient norms and cosines on the shared parameters (see diagnostics.py)."""
        assert self.diagnostics is not None
        if not torch.is_grad_enabled() or not any(t.requires_grad for t in terms):
            return
        params = self.diagnostics.parameters(self.module, names, terms)
        if not params:
            if names not in self._undiagnosable:
                self._undiagnosable.add(names)
                _warnings.warn(
                    f"gradient diagnostics: no trainable parameter is reached by two or more of "
                    f"the terms {list(names)}; pass shared_parameters= to name the shared ones",
                    "__init__",
                    owner=self.module,
                )
            return
        self.recorder.record_diagnostics(names, gradient_statistics(terms, params))

    def warn_unmatched_once(self) -> None:
        """After the first training epoch: configuration names that matched no term."""
        if self._checked_unmatched:
            return
        self._checked_unmatched = True
        routes = ("configure_routes", "configure_optimizers")
        seen = self.select.trained_terms
        unshown, logged = self.recorder.unshown()
        for entry in unshown:
            _warnings.warn(
                f"prog_bar entry {entry!r} matched no value logged during the first training "
                f"epoch (train/{entry} was never logged); check its spelling"
                f"{did_you_mean(entry, logged)}",
                "__init__",
                owner=self.module,
            )
        # what every rank logged (the registry agreed on the names at the epoch's reduction):
        # an entry that matched a term on another rank only is no misspelling
        logged_terms = [
            name[6:]
            for name, kind in self.recorder.log.session.registry.kind_of.items()
            if name[:6] == "train/" and kind in ("term", "total")
        ]
        matched = set(logged_terms)

        def matched_elsewhere(entry: str) -> bool:
            parts = entry.split("+")  # (a tuple route is named "g+adv")
            return any(fnmatch.fnmatchcase(n, p) for p in parts for n in matched)

        for source, entries, hook, names in (
            ("loss_weights", self.weights.unmatched(), "__init__", seen),
            ("loss_keys", self.select.unmatched(), "__init__", ()),
            ("optimizer route", self.routing.unmatched(), routes, seen),
        ):
            for entry in entries:
                if matched_elsewhere(entry):
                    continue
                _warnings.warn(
                    f"{source} entry {entry!r} matched no loss term during the first training "
                    f"epoch; check its spelling{did_you_mean(entry, names)}",
                    hook,
                    owner=self.module,
                )

    # ------------------------------------------------------------------ optimizers

    def translate_routes(self, config: Any) -> Any:
        """What ``configure_optimizers`` returned, a route map made one ``RoutedOptimizer``.
        Route names are term names: before the first training step they decide (API.md §1)."""
        if not routing_config.is_route_map(config):
            return config
        self._name_route_terms(config)
        return translate(config, self.module)

    def _name_route_terms(self, config: Mapping[Any, Any]) -> None:
        routed = [name for key in config for name in ((key,) if isinstance(key, str) else key)]
        self.select.name_terms([n for n in routed if n != "loss"], all_terms="loss" not in routed)

    def peek_routes(self) -> None:
        """``validate()``/``test()`` before any training: the route names decide which values
        are terms, so read them from ``configure_routes`` or ``configure_optimizers``. The
        optimizers built are dropped; one that cannot be built outside a fit (a scheduler that
        reads ``trainer.estimated_stepping_batches``) leaves the routes unread."""
        module = self.module
        self.evaluation.routes_unread = None
        try:
            config = module.configure_routes()
            if config is None and hasattr(type(module).configure_optimizers, "__wrapped__"):
                config = type(module).configure_optimizers.__wrapped__(module)
        except Exception as error:  # (a configure_optimizers meant for fit only)
            self.evaluation.routes_unread = f"{type(error).__name__}: {error}"
            return
        if routing_config.is_route_map(config):
            self._name_route_terms(config)

    def active_routes(self) -> frozenset[str]:
        return self.routing.active_routes(_lightning.trainer_or_none(self.module))

    def clip(self, optimizer: Optimizer, clip_val: float | None, algorithm: str | None) -> None:
        """``configure_gradient_clipping``: Lightning's clipping, per route with routes."""
        module = self.module
        if self.routing.single_optimizer:  # known from this fit's first batch
            if clip_val is not None:
                module.clip_gradients(optimizer, clip_val, algorithm)
            return
        composite = is_routed(optimizer)
        if composite is not None:
            self.routing.clip(module, composite, clip_val, algorithm)
        elif clip_val is not None:  # (else Lightning's own hook would do nothing either)
            module.clip_gradients(optimizer, clip_val, algorithm)

    # ------------------------------------------------------------------ hooks outside a fit

    def configure_callbacks(self) -> None:
        # A trainer is attached and Lightning checks its loops right after this hook (before
        # setup). This module provides validation_step for those who validate: one withdrawn
        # for the last fit (see setup) is back, and a fit without a val loader should not be
        # told "You defined a validation_step" (lifted again in setup).
        module = self.module
        hooks.adopt(module)  # hooks assigned since the class was made
        module.__dict__.pop("validation_step", None)
        if self._quiet is None:
            self._quiet = _lightning.quiet_unused_validation_step()
        epoch_ends.attach(module.trainer)

    def setup(self, stage: str) -> None:
        _lightning.unquiet(self._quiet)
        self._quiet = None
        module = self.module
        hooks.adopt(module)  # (again: configure_callbacks may be one of them)
        epoch_ends.attach(module.trainer)
        # Tuner.scale_batch_size requests a val loader wherever validation_step is defined: the
        # provided one is withdrawn for a fit without a val loader.
        if (
            stage == "fit"
            and type(module).validation_step is self._provided_validation_step
            and not _lightning.fit_has_val_loader(module.trainer)
        ):
            module.validation_step = functools.partial(pl.LightningModule.validation_step, module)

    def on_fit_start(self) -> None:
        self.setup("fit")
        trainer = self.module.trainer
        self.recorder.log.begin("fit")
        self.recorder.summaries.reset()
        self.routing.begin_fit()
        self.routing.check_restored_routes(trainer)
        self.fit = FitSession(self, trainer)
        self._bind_parts()

    def teardown(self, stage: str) -> None:
        """The call ends: the module keeps no trainer, no run (API.md §10)."""
        self.fit = None
        self._bind_parts()
        self.routing.end_fit()
        self.recorder.log.end()

    def on_validation_start(self) -> None:
        trainer = self.module.trainer
        if _lightning.running(trainer) == "fit":
            if self.fit is not None:  # a validation inside the fit belongs to it
                self.fit.check_nonfinite_now()
            return
        self.recorder.log.begin("validate")  # validate(): a call of its own
        self._before_evaluation()

    def on_test_start(self) -> None:
        self.recorder.log.begin("test")
        self._before_evaluation()

    def _before_evaluation(self) -> None:
        if not self.select.trained and not self.select.explicit:
            self.peek_routes()

    def on_validation_epoch_start(self) -> None:
        self.evaluation.begin("val")

    def on_test_epoch_start(self) -> None:
        self.evaluation.begin("test")

    def on_validation_batch_start(self, batch: Any, batch_idx: int, loader: int = 0) -> None:
        added.open_step(self.module, fresh=True)

    on_test_batch_start = on_validation_batch_start

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        added.close(self.module)

    on_test_batch_end = on_validation_batch_end

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.fit is not None:  # no checkpoint between a non-finite step and the raise
            self.fit.check_nonfinite_now()
        checkpoint_state.save(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint_state.load(self, checkpoint)


__all__ = ["STAGES", "Core"]
