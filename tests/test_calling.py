"""Wrap mode calls a model the way the batch asks, and says so when a call does not fit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossDictModule
from lightning_losses.terms.calling import ModelCall, decide, describe_batch


def recording(signature_source):
    """A module whose ``forward`` has exactly the signature of ``signature_source``."""

    class Recording(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(()))
            self.calls: list[tuple[tuple, dict]] = []

    def forward(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.weight * 1.0

    import functools
    import inspect

    wrapped = functools.wraps(signature_source)(forward)
    wrapped.__signature__ = inspect.signature(signature_source)
    Recording.forward = wrapped
    return Recording()


x, y = torch.randn(4, 3), torch.randn(4)


def f_batch(self, batch): ...
def f_x(self, x): ...
def f_xy(self, x, y): ...
def f_images_targets(self, images, targets=None): ...
def f_inputs(self, inputs): ...
def f_kwargs_only(self, *, input_ids, labels=None): ...
def f_hf(self, input_ids=None, attention_mask=None, labels=None, **kwargs): ...
def f_var_kwargs(self, **kwargs): ...
def f_dict_param(self, batch, extra=None): ...


@pytest.mark.parametrize(
    ("forward", "batch", "expected"),
    [
        (f_batch, (x, y), "batch"),  # forward(self, batch) receives it whole
        (f_batch, [x], "batch"),
        (f_x, [x], "positional"),  # a TensorDataset batch for forward(x)
        (f_xy, (x, y), "positional"),
        (f_images_targets, ([x, x], [{}, {}]), "positional"),  # torchvision detectors
        (f_inputs, (x, y), "batch"),  # one parameter, two items: only whole fits
        (f_hf, {"input_ids": x, "labels": y}, "keyword"),  # HuggingFace
        (f_hf, {"input_ids": x, "labels": y, "idx": y}, "keyword"),  # an extra key: **kwargs
        (f_kwargs_only, {"input_ids": x}, "keyword"),
        (f_var_kwargs, {"a": x, "b": y}, "keyword"),
        (f_batch, {"x": x, "y": y}, "batch"),  # keys are not parameters: whole
        (f_dict_param, {"x": x}, "batch"),
        (f_x, x, "batch"),  # a tensor is never unpacked
    ],
)
def test_auto_reads_the_batch_and_the_signature(forward, batch, expected):
    model = recording(forward)
    how = "batch" if isinstance(batch, torch.Tensor) else decide(model, batch)
    assert how == expected
    ModelCall("auto")(model, batch)
    args, kwargs = model.calls[-1]
    if expected == "batch":
        assert len(args) == 1 and args[0] is batch and not kwargs
    elif expected == "positional":
        assert len(args) == len(batch) and all(a is b for a, b in zip(args, batch)) and not kwargs
    else:
        assert not args and kwargs.keys() == batch.keys()
        assert all(kwargs[k] is batch[k] for k in batch)


def test_no_way_that_fits_the_signature_is_a_type_error_naming_the_batch():
    model = recording(f_xy)
    with pytest.raises(TypeError) as error:
        ModelCall("auto")(model, (x, y, y))
    message = str(error.value)
    assert "Recording.forward(x, y)" in message
    assert "a tuple of 3 (Tensor[4, 3] float32, Tensor[4] float32, Tensor[4] float32)" in message
    assert "call='batch', 'positional' or 'keyword'" in message
    assert not model.calls  # refused before the model ran


@pytest.mark.parametrize("call", ["positional", "keyword"])
def test_an_explicit_unpacking_that_the_batch_cannot_take_says_so(call):
    batch = x if call == "positional" else (x, y)
    with pytest.raises(TypeError, match=rf"call='{call}' unpacks the batch .* but the batch is"):
        ModelCall(call)(recording(f_x), batch)


def test_an_error_inside_the_model_keeps_its_type_and_gets_a_note_naming_the_call():
    class Strict(nn.Module):
        def forward(self, images, targets=None):
            if targets is None:
                raise ValueError("targets should not be none when in training mode")
            return images.sum()

    with pytest.raises(ValueError, match="targets should not be none") as error:
        ModelCall("batch")(Strict(), (x, [{"boxes": x}]))
    (note,) = error.value.__notes__
    assert "Strict.forward was called as (batch) (call='batch')" in note
    assert "a tuple of 2 (Tensor[4, 3] float32, a list of 1)" in note
    assert "call='positional' or 'keyword'" in note


def test_a_callable_call_receives_model_and_batch():
    model = recording(f_xy)
    ModelCall(lambda m, b: m(b["a"], y=b["b"]))(model, {"a": x, "b": y})
    (args, kwargs) = model.calls[-1]
    assert args[0] is x and kwargs["y"] is y


def test_an_unknown_call_is_a_value_error():
    with pytest.raises(ValueError, match=r"call='kwargs'; expected one of 'auto', 'batch'"):
        LossDictModule(nn.Linear(2, 2), call="kwargs")


def test_describe_batch_reads_nested_structures():
    batch = {"pixel_values": torch.zeros(2, 3, 8, 8), "labels": [{"boxes": x}, {"boxes": x}]}
    assert describe_batch(batch) == (
        "a dict with keys 'pixel_values', 'labels' ('pixel_values': Tensor[2, 3, 8, 8] float32, "
        "'labels': a list of 2)"
    )


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(3, 1)

    def forward(self, x, y):
        return {"mse": F.mse_loss(self.net(x).squeeze(-1), y)}


def test_a_tensor_dataset_model_trains_without_glue_and_matches_plain_pytorch():
    data = TensorDataset(torch.randn(16, 3), torch.randn(16))
    module = LossDictModule(Regressor(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    make_trainer(max_epochs=1).fit(module, DataLoader(data, batch_size=4))

    reference = Regressor()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for batch in DataLoader(data, batch_size=4):
        optimizer.zero_grad()
        reference(*batch)["mse"].backward()
        optimizer.step()
    for ours, theirs in zip(module.model.parameters(), reference.parameters()):
        assert torch.equal(ours, theirs)


def test_keyword_batches_train_the_same_as_positional_ones():
    data = [{"x": x[i : i + 2], "y": y[i : i + 2]} for i in range(0, 4, 2)]
    module = LossDictModule(Regressor(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    make_trainer(max_epochs=1).fit(module, DataLoader(data, batch_size=None))
    reference = Regressor()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for batch in data:
        optimizer.zero_grad()
        reference(**batch)["mse"].backward()
        optimizer.step()
    for ours, theirs in zip(module.model.parameters(), reference.parameters()):
        assert torch.equal(ours, theirs)


def test_the_chosen_convention_is_announced_once(monkeypatch):
    from lightning_losses.terms import calling

    said: list[str] = []
    monkeypatch.setattr(calling, "rank_zero_info", said.append)
    module = LossDictModule(Regressor())
    make_trainer(max_epochs=1).fit(
        module, DataLoader(TensorDataset(torch.randn(8, 3), torch.randn(8)), batch_size=4)
    )
    assert said == [
        "LossDictModule calls Regressor.forward(*batch) for a batch that is a list of 2 "
        "(Tensor[4, 3] float32, Tensor[4] float32) (call='auto'; pass call= to choose)"
    ]
