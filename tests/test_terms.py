"""The pure parsing core: flattening, selecting loss terms, and every bad-input error."""

import pytest
import torch

from lightning_losses.terms import KeySelector, flatten, parse_output

# A loss term carries a gradient in training (API.md §1); metrics are built without one below.
SCALAR = torch.tensor(1.5, requires_grad=True)


def parse(output, loss_keys=None):
    return parse_output(output, KeySelector(loss_keys))


def test_scalar_return_is_the_one_loss_named_loss():
    parsed = parse(SCALAR)
    assert list(parsed.terms) == ["loss"] and parsed.terms["loss"] is SCALAR


@pytest.mark.parametrize("nothing", [None, {}, {"a": {}}])
def test_none_and_empty_mappings_mean_nothing_to_learn(nothing):
    assert parse(nothing) is None


def test_nested_mappings_flatten_with_slash_in_returned_order():
    out = {"rpn": {"cls": SCALAR, "box": SCALAR}, "roi": {"deep": {"cls": SCALAR}}}
    assert list(flatten(out)) == ["rpn/cls", "rpn/box", "roi/deep/cls"]
    assert list(parse(out).terms) == ["rpn/cls", "rpn/box", "roi/deep/cls"]


def test_default_selection_by_type_splits_terms_metrics_and_outputs():
    logits = torch.randn(4, 3)
    out = {
        "seg": SCALAR,
        "count": torch.tensor(3),  # 0-dim but integer: a metric, not a loss
        "lr_scale": 0.5,  # Python number: a metric
        "logits": logits,  # not a scalar: passed through
        "name": "batch-7",  # passed through
    }
    parsed = parse(out)
    assert list(parsed.terms) == ["seg"]
    assert list(parsed.metrics) == ["count", "lr_scale"]
    assert parsed.outputs["logits"] is logits and parsed.outputs["name"] == "batch-7"


def test_explicit_loss_keys_names_globs_and_callables():
    out = {"loss_a": SCALAR, "loss_b": SCALAR, "acc": torch.tensor(0.9), "z": torch.randn(2)}
    assert list(parse(out, ["loss_a"]).terms) == ["loss_a"]
    assert list(parse(out, "loss_*").terms) == ["loss_a", "loss_b"]
    by_callable = parse(out, lambda name: name.endswith("_b"))
    assert list(by_callable.terms) == ["loss_b"]
    # scalars not selected are metrics, not terms
    assert list(parse(out, "loss_*").metrics) == ["acc"]


def test_selector_reports_entries_that_never_matched():
    select = KeySelector(["seg", "aux_*", "typo"])
    parse_output({"seg": SCALAR, "aux_1": SCALAR}, select)
    assert select.unmatched() == ["typo"]


@pytest.mark.parametrize(
    ("output", "loss_keys", "error", "fragments"),
    [
        ("oops", None, TypeError, ["forward returned a value of type str", "expected a 0-dim"]),
        (torch.randn(3), None, TypeError, ["shape (3,)", "expected a 0-dim floating tensor"]),
        (torch.tensor(3), None, TypeError, ["dtype torch.int64", "expected a 0-dim floating"]),
        ({"seg": torch.randn(2)}, ["seg"], TypeError, ["'seg'", "shape (2,)", "expected a 0-dim"]),
        ({"seg": 1.0}, ["seg"], TypeError, ["'seg'", "float", "expected a 0-dim"]),
        ({1: SCALAR}, None, TypeError, ["key 1", "int", "expected str keys"]),
        ({"": SCALAR}, None, ValueError, ["key ''", "non-empty"]),
        ({"a": {"b/": SCALAR}}, None, ValueError, ["'b/'", "under 'a'"]),
        ({"a/b": SCALAR, "a": {"b": SCALAR}}, None, ValueError, ["'a/b'", "unique names"]),
        ({"loss": SCALAR, "aux": SCALAR}, None, ValueError, ["'loss'", "'aux'", "weighted total"]),
        ({"seg": SCALAR, "loss": 1.0}, None, ValueError, ["metric named 'loss'"]),
    ],
)
def test_bad_returns_name_the_key_what_was_found_and_what_was_expected(
    output, loss_keys, error, fragments
):
    with pytest.raises(error) as info:
        parse(output, loss_keys)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("loss_keys", "fragment"),
    [(3, "loss_keys is a value of type int"), ([""], "loss_keys entry ''"), ([1], "entry 1")],
)
def test_bad_loss_keys(loss_keys, fragment):
    with pytest.raises(TypeError, match=fragment):
        KeySelector(loss_keys)


def test_callable_loss_keys_must_return_bool():
    with pytest.raises(TypeError, match=r"loss_keys\('seg'\) returned"):
        parse({"seg": SCALAR}, lambda name: "yes")
