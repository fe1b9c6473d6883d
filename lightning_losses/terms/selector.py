"""Which returned entries are loss terms: ``loss_keys``, the configuration's named terms, and
training's verdicts (a 0-dim floating tensor that carries a gradient)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch

from lightning_losses import _warnings
from lightning_losses.cache import BoundedCache
from lightning_losses.terms.patterns import NamePatterns, closest
from lightning_losses.terms.values import describe, is_loss_tensor

#: ``loss_keys`` as users may give it: ``None`` (a 0-dim floating tensor that carries a gradient
#: in training), names or glob patterns, or a predicate on the flattened name.
LossKeys = str | Collection[str] | Callable[[str], bool] | None


class KeySelector:
    """Decides which flattened entries are loss terms, and remembers training's verdicts.

    With ``loss_keys=None`` a training entry is a term when it is a 0-dim floating tensor that
    carries a gradient: an accuracy from ``argmax`` or a value computed under ``no_grad`` is a
    metric, never summed into the loss. Evaluation runs without gradients, so it asks training's
    verdicts instead: ``val/loss`` is the same weighted sum as ``train/loss``. A name that has been
    a term once stays one (a curve does not change meaning mid-run); the verdicts travel in
    checkpoints. Before any training step there is no verdict: what the configuration names
    (``loss_keys``, a weighting's terms, ``loss_weights`` patterns, routes) decides, and a 0-dim
    floating tensor nothing names is a term unless the named terms are all there are (the caller
    warns once about such a guess). A list that names every term there is (a weighting's terms,
    routes without a ``"loss"`` route) wins over a pattern that merely matches: a weighting
    weighs exactly its own terms.

    ``version`` changes whenever a verdict could change (a name becomes a term, a name is added
    with ``add_metric``, verdicts are restored): a cached decision keeps the version it was made
    under and is made again when it differs.

    Explicit ``loss_keys`` decide by name alone, in every stage. Verdicts on names and patterns are
    cached; the entries of ``loss_keys`` that matched are remembered so that one which never
    matched anything can be reported after the first epoch.
    """

    def __init__(self, loss_keys: LossKeys = None, total_key: str | None = None) -> None:
        self.explicit = loss_keys is not None
        if total_key is not None:
            if not isinstance(total_key, str) or not total_key:
                raise TypeError(
                    f"total_key is {describe(total_key)}; expected the name of the entry that "
                    'holds the model\'s own total loss ("loss" for HuggingFace models) or None'
                )
            if loss_keys is not None:
                raise ValueError(
                    f"total_key={total_key!r} and loss_keys={loss_keys!r} both decide what is "
                    "summed into the loss; expected one of them: total_key to train on the "
                    "model's own total, loss_keys to choose and weight the terms yourself"
                )
        #: The entry that already is the model's weighted total (see ``parse_output``).
        self.total_key = total_key
        self._predicate: Callable[[str], bool] | None = None
        #: ``loss_keys`` as names and patterns (each mapped to True: it selects a term).
        self._keys: NamePatterns[bool] = NamePatterns()
        if loss_keys is None:
            pass
        elif isinstance(loss_keys, str):
            self._split([loss_keys])
        elif callable(loss_keys):
            self._predicate = loss_keys
        elif isinstance(loss_keys, Collection):
            self._split(list(loss_keys))
        else:
            raise TypeError(
                f"loss_keys is {describe(loss_keys)}; expected None, a name or glob pattern, "
                "a collection of them, or a callable name -> bool"
            )
        self._verdicts: BoundedCache[str, bool] = BoundedCache(4096)
        #: What the configuration calls a loss term (``loss_weights`` entries, route names):
        #: before any training step these decide (see :meth:`before_training`).
        self._named: NamePatterns[bool] = NamePatterns()
        #: Lists that name every term there is (a weighting's terms): they decide alone.
        self._all: NamePatterns[bool] = NamePatterns()
        self._named_all = False
        #: Changes whenever a verdict could (see the class docstring).
        self.version = 0
        #: Names added with ``add_metric``: never a term.
        self.added_metrics: set[str] = set()
        #: Pass-through outputs warned about as possible unreduced losses.
        self.warned_unreduced: set[str] = set()
        #: Names training has classified: terms (carried a gradient at least once) and metrics.
        self.trained_terms: set[str] = set()
        self.trained_metrics: set[str] = set()
        #: Names ``loss_keys`` did not select since the last :meth:`check_spelling` (each name is
        #: decided once: the verdicts are cached), and the entries already told about.
        self.rejected: list[str] = []
        self._suggested: set[str] = set()

    def _split(self, entries: list[Any]) -> None:
        for entry in entries:
            if not isinstance(entry, str) or not entry:
                raise TypeError(
                    f"loss_keys entry {entry!r} is {describe(entry)}; expected a non-empty name "
                    "or glob pattern"
                )
        self._keys = NamePatterns((e, True) for e in entries)

    def name_terms(self, names: Collection[str], all_terms: bool = False) -> None:
        """Names or glob patterns the configuration calls loss terms; ``all_terms`` when no other
        name can be one (a weighting weighs exactly its own list)."""
        entries = [(n, True) for n in names if isinstance(n, str) and n]
        if all_terms:
            self._all.extend(entries)
            self._named_all = True
        else:
            self._named.extend(entries)

    def named(self, name: str) -> bool:
        """Whether the configuration calls ``name`` a loss term."""
        if self._named_all:
            return self._all.match(name, False)
        return self._named.match(name, False)

    @property
    def names_any(self) -> bool:
        """Whether the configuration names any term (weights, routes, a weighting's terms)."""
        return bool(self._named)

    def names_exactly(self, name: str) -> bool:
        """Whether the configuration names ``name`` itself (not by a glob pattern) a term."""
        return self._named.has_name(name)

    def before_training(self, name: str) -> bool:
        """Whether ``name`` is a term before any training step has told terms by gradient.

        An added metric never is; where a list names every term there is, a term is one it
        names; otherwise a name the configuration calls a term is, and so is any other (a guess).
        """
        if name in self.added_metrics:
            return False
        return self.named(name) or not self._named_all

    def guessed(self, name: str) -> bool:
        """Whether calling ``name`` a term before training is a guess (nothing names it)."""
        return name not in self.added_metrics and not self._named_all and not self.named(name)

    def add_metrics(self, names: Collection[str]) -> None:
        """Names added with ``add_metric`` in a step: never terms from now on."""
        if not self.added_metrics.issuperset(names):
            self.added_metrics.update(names)
            self.version += 1

    @property
    def trained(self) -> bool:
        """Whether any training step has classified names (here or in a restored checkpoint)."""
        return bool(self.trained_terms or self.trained_metrics)

    def is_term(self, name: str, value: Any, training: bool) -> bool:
        """Whether the entry ``name: value`` is a loss term in this stage (see the class doc)."""
        if self.explicit:
            return self(name)
        if not is_loss_tensor(value):
            return False
        if training and torch.is_grad_enabled():
            if value.requires_grad or name in self.trained_terms:
                if name not in self.trained_terms:
                    self.trained_terms.add(name)
                    self.trained_metrics.discard(name)
                    self.version += 1
                return True
            self.trained_metrics.add(name)
            return False
        if self.trained:
            return name in self.trained_terms
        return self.before_training(name)  # nothing has been trained yet

    def state(self) -> dict[str, list[str]]:
        return {"terms": sorted(self.trained_terms), "metrics": sorted(self.trained_metrics)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.trained_terms = set(state.get("terms", ()))
        self.trained_metrics = set(state.get("metrics", ())) - self.trained_terms
        self.version += 1

    def __call__(self, name: str) -> bool:
        verdict = self._verdicts.get(name)
        if verdict is None:
            verdict = self._decide(name)
            self._verdicts.put(name, verdict)
        return verdict

    def _decide(self, name: str) -> bool:
        if self._predicate is not None:
            verdict = self._predicate(name)
            if not isinstance(verdict, bool):
                raise TypeError(
                    f"loss_keys({name!r}) returned {describe(verdict)}; expected a bool"
                )
            return verdict
        verdict = self._keys.match(name, False)
        if not verdict:
            self.rejected.append(name)
        return verdict

    def check_spelling(self) -> None:
        """A warning for each ``loss_keys`` entry that has matched nothing yet and is close to a
        name it did not select (``"depht"`` beside ``depth``, which is then logged as a metric
        and trains nothing). Called after a step's values are classified, when a name new to
        the selector was not selected: once per new name, never per step."""
        rejected, self.rejected = self.rejected, []
        for entry in self._keys.unmatched():
            if entry in self._suggested:
                continue
            meant = closest(entry, rejected)
            if meant is not None:
                self._suggested.add(entry)
                _warnings.warn(
                    f"loss_keys entry {entry!r} matches no returned key; did you mean "
                    f"{meant!r}? Until it is renamed, {meant!r} is not a loss term: it is "
                    "logged as a metric (or passed through) and trains nothing",
                    "__init__",
                )

    def unmatched(self) -> list[str]:
        """The literal names and patterns of ``loss_keys`` that matched no returned key."""
        return self._keys.unmatched()
