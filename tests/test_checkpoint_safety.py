"""A checkpoint never runs code from the file, through any loading path (issue #12).

Each checkpoint below carries a pickle payload that creates a marker file when unpickled, where
lightning_losses <= 0.x kept its pickled arguments (``checkpoint["lightning_losses"]
["pickled_hyper_parameters"]``), or class paths that would run code if followed blindly.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import make_trainer, multitask_data
from lightning.pytorch.core.mixins import HyperparametersMixin
from torch import nn

from lightning_losses import LossDictModule
from lightning_losses.checkpoints import hparams

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling it creates ``marker``: stands for any code an attacker would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class Net(HyperparametersMixin, nn.Module):
    def __init__(self, hidden: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.trunk, self.head = nn.Linear(6, hidden), nn.Linear(hidden, 3)

    def forward(self, batch):
        x, y, _ = batch
        return {"seg": F.cross_entropy(self.head(self.trunk(x).relu()), y)}


class Heads(LossDictModule):
    def __init__(self, hidden: int = 4, **options) -> None:
        super().__init__(**options)
        self.trunk, self.head = nn.Linear(6, hidden), nn.Linear(hidden, 3)

    def forward(self, batch):
        x, y, _ = batch
        return {"seg": F.cross_entropy(self.head(self.trunk(x).relu()), y)}


class Wrapper(LossDictModule):
    """A subclass used in wrap mode: its own load_from_checkpoint is ours."""


class PlainLightning(L.LightningModule):
    """Plain Lightning, with the same state dict as ``LossDictModule(Net())``."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Net()

    def training_step(self, batch, batch_idx):
        return self.model(batch)["seg"]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _save(module, path):
    trainer = make_trainer(None, max_steps=2)
    trainer.fit(module, multitask_data())
    trainer.save_checkpoint(path)
    return path


def _rewrite(path, change):
    checkpoint = torch.load(path, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, path)


@pytest.fixture
def marker(tmp_path):
    marker = tmp_path / "payload-ran"
    # the payload does run when unpickled (so the assertions below can fail)
    pickle.loads(pickle.dumps(Payload(marker))).close()
    assert marker.exists()
    marker.unlink()
    return marker


def _poisoned(kind, tmp_path, marker):
    module = {"wrap": lambda: LossDictModule(Net()), "subclass": Heads, "plain": PlainLightning}
    path = _save(module[kind](), tmp_path / f"{kind}.ckpt")

    def inject(checkpoint):
        entry = checkpoint.setdefault("lightning_losses", {})
        entry[hparams.LEGACY_PICKLED] = pickle.dumps(Payload(marker))

    _rewrite(path, inject)
    return path


# (checkpoint kind, how to load it); model= where the checkpoint cannot say how to build it
LOADERS = {
    "LossDictModule.load_from_checkpoint": [
        ("wrap", lambda path: LossDictModule.load_from_checkpoint(path)),
        ("plain", lambda path: LossDictModule.load_from_checkpoint(path, model=Net())),
    ],
    "subclass load_from_checkpoint": [
        ("subclass", lambda path: Heads.load_from_checkpoint(path)),
        ("wrap", lambda path: Wrapper.load_from_checkpoint(path)),
        ("plain", lambda path: Wrapper.load_from_checkpoint(path, model=Net())),
    ],
    "Trainer.fit(ckpt_path=)": [
        ("wrap", lambda path: make_trainer(None, max_steps=4).fit(
            LossDictModule(Net()), multitask_data(), ckpt_path=path)),
        ("subclass", lambda path: make_trainer(None, max_steps=4).fit(
            Heads(), multitask_data(), ckpt_path=path)),
    ],
    "trainer.validate(ckpt_path=)": [
        ("wrap", lambda path: make_trainer(None).validate(
            LossDictModule(Net()), multitask_data(), ckpt_path=path)),
        ("subclass", lambda path: make_trainer(None).validate(
            Heads(), multitask_data(), ckpt_path=path)),
        ("plain", lambda path: make_trainer(None).validate(
            LossDictModule(Net()), multitask_data(), ckpt_path=path)),
    ],
    "torch.load(weights_only=True)": [
        (kind, lambda path: torch.load(path, weights_only=True))
        for kind in ("wrap", "subclass", "plain")
    ],
}  # fmt: skip
CASES = [(name, kind, load) for name, cases in LOADERS.items() for kind, load in cases]


@pytest.mark.parametrize(
    ("path_name", "kind", "load"), CASES, ids=[f"{n}-{k}" for n, k, _ in CASES]
)
@pytest.mark.filterwarnings("ignore:.*older lightning_losses")
def test_a_pickled_payload_in_the_checkpoint_never_runs(tmp_path, marker, path_name, kind, load):
    path = _poisoned(kind, tmp_path, marker)
    load(path)
    assert not marker.exists(), f"{path_name} ran code from {kind} checkpoint"


def test_a_legacy_pickled_entry_is_named_not_unpickled(tmp_path, marker):
    path = _poisoned("plain", tmp_path, marker)
    with (
        pytest.warns(UserWarning, match=r"never unpickled .*pass the ones it needs"),
        pytest.raises(RuntimeError, match="Unexpected key"),  # no model: nothing to load into
    ):
        LossDictModule.load_from_checkpoint(path)
    assert not marker.exists()


def _crafted(tmp_path, **entries):
    path = _save(LossDictModule(Net()), tmp_path / "crafted.ckpt")
    _rewrite(path, lambda checkpoint: checkpoint["hyper_parameters"].update(entries))
    return path


@pytest.mark.parametrize("name", ["model", "weighting", "optimizer", "lr_scheduler"])
def test_a_class_path_to_something_else_is_not_called(tmp_path, marker, name):
    entry = {"class_path": "builtins.open", "init_args": {"file": str(marker), "mode": "w"}}
    path = _crafted(tmp_path, **{name: entry})
    with pytest.raises(ValueError, match=f"cannot rebuild {name}: builtins.open is not a subclass"):
        LossDictModule.load_from_checkpoint(path)
    assert not marker.exists()


def test_a_class_path_never_imports_a_module(tmp_path, marker, monkeypatch):
    (tmp_path / "evil_module.py").write_text(
        f"open({str(marker)!r}, 'w')\nimport torch\nclass Net(torch.nn.Module):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _crafted(tmp_path, model={"class_path": "evil_module.Net", "init_args": {}})
    with pytest.raises(ValueError, match=r"not among the imported modules .*import evil_module"):
        LossDictModule.load_from_checkpoint(path)
    assert not marker.exists() and "evil_module" not in sys.modules


def test_an_instantiator_outside_lightnings_allowlist_is_refused(tmp_path, marker):
    path = _crafted(tmp_path, _instantiator="builtins.exec")
    with pytest.raises(ValueError, match="allowlist"):
        LossDictModule.load_from_checkpoint(path)
    assert not marker.exists()


SAVE_IN_MAIN = """
import functools, sys, warnings
import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from lightning_losses import LossDictModule

class Adapter(nn.Module):  # defined in __main__: no other process can import it
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(6, 6)

    def forward(self, batch):
        return {"recon": (self.layer(batch[0]) - batch[0]).pow(2).mean()}

torch.manual_seed(0)
module = LossDictModule(Adapter(), optimizer=functools.partial(torch.optim.SGD, lr=0.1))
trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    trainer.fit(module, DataLoader(TensorDataset(torch.randn(32, 6)), batch_size=8))
    trainer.save_checkpoint("main.ckpt")
torch.save(module.model.state_dict(), "expected.pt")
print("\\n".join(str(w.message) for w in caught if "cannot record" in str(w.message)))
"""

LOAD_ELSEWHERE = """
import torch
from torch import nn
from lightning_losses import LossDictModule

class SameLayers(nn.Module):  # this process's own class, under another name
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(6, 6)

try:
    LossDictModule.load_from_checkpoint("main.ckpt")
except ValueError as error:
    print("WITHOUT MODEL:", error)
loaded = LossDictModule.load_from_checkpoint("main.ckpt", model=SameLayers())
expected = torch.load("expected.pt", weights_only=True)
assert type(loaded.model) is SameLayers
assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in expected.items())
assert loaded.optimizer_factory.keywords == {"lr": 0.1}
print("LOADED")
"""


def _run(script: str, cwd: Path) -> str:
    (cwd / "script.py").write_text(textwrap.dedent(script))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "script.py"], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_model_class_from_main_is_named_at_saving_and_loads_with_model_elsewhere(tmp_path):
    saved = _run(SAVE_IN_MAIN, tmp_path)
    assert "cannot record model (__main__.Adapter: Adapter is defined in __main__" in saved
    assert "load_from_checkpoint(path, model=...)" in saved
    loaded = _run(LOAD_ELSEWHERE, tmp_path)  # a fresh process, with no Adapter anywhere
    assert "WITHOUT MODEL:" in loaded and "__main__.Adapter" in loaded and "model=" in loaded
    assert "LOADED" in loaded
