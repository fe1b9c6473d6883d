"""Errors that name the key: runaway nesting, terms on different or meta devices."""

import pytest
import torch

from lightning_losses.terms.parse import parse_output
from lightning_losses.terms.selector import KeySelector
from lightning_losses.terms.values import check_term_devices


def test_mappings_nested_2000_deep_name_the_path_instead_of_recursing():
    output = value = {}
    for _ in range(2000):
        value["a"] = {}
        value = value["a"]
    value["x"] = torch.tensor(1.0, requires_grad=True)
    with pytest.raises(ValueError, match=r"nested more than 32 levels deep \(at 'a/a/a"):
        parse_output(output, KeySelector())


def test_a_mapping_that_contains_itself_is_named_not_recursed_forever():
    output = {"loss_a": torch.tensor(1.0, requires_grad=True)}
    output["self"] = output
    with pytest.raises(ValueError, match="contains itself"):
        parse_output(output, KeySelector())


def test_terms_on_meta_or_on_different_devices_are_named_with_their_devices():
    cpu = torch.tensor(1.0)
    meta = torch.empty((), device="meta")
    with pytest.raises(ValueError, match=r"found 'a' on cpu, 'b' on meta"):
        check_term_devices({"a": cpu, "b": meta})
    with pytest.raises(ValueError, match=r"found 'b' on meta"):
        check_term_devices({"b": meta})
    check_term_devices({"a": cpu, "c": torch.tensor(2.0)})  # one real device: fine


def test_a_training_step_with_a_meta_term_names_it():
    from torch import nn

    from lightning_losses import LossDictModule

    class Meta(LossDictModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, batch):
            return {"real": self.w * 2, "ghost": torch.empty((), device="meta")}

    with pytest.raises(ValueError, match="'ghost' on meta"):
        Meta().training_step(None)
