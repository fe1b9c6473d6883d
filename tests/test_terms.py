"""The pure parsing core: flattening, selecting loss terms, and every bad-input error."""

import pytest
import torch

from lightning_losses.terms.parse import flatten, parse_output
from lightning_losses.terms.selector import KeySelector

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


def nested(levels, leaf, key="a"):
    """``{key: {key: ... {"x": leaf}}}`` with ``levels`` mappings in all."""
    output = inner = {}
    for _ in range(levels - 1):
        inner[key] = {}
        inner = inner[key]
    inner["x"] = leaf
    return output


def test_nesting_up_to_the_limit_flattens_and_one_more_level_names_the_path():
    from lightning_losses.terms.parse import MAX_NESTING

    assert list(flatten(nested(MAX_NESTING, SCALAR))) == ["a/" * (MAX_NESTING - 1) + "x"]
    with pytest.raises(ValueError, match=rf"more than {MAX_NESTING} levels deep \(at 'a/a"):
        flatten(nested(MAX_NESTING + 1, SCALAR))


def test_2000_levels_raise_a_value_error_with_a_truncated_path_not_a_recursion_error():
    with pytest.raises(ValueError) as info:
        flatten(nested(2000, SCALAR, key="level"))
    message = str(info.value)
    assert "'level/level/" in message and "..." in message  # the path, elided in the middle
    assert "nested more than 32 levels" in message and "expected" in message
    assert len(message) < 400


def test_a_mapping_that_contains_itself_names_the_key_where_it_loops_back():
    output = {"seg": SCALAR}
    output["me"] = output
    with pytest.raises(ValueError, match=r"the value at 'me' is the mapping at the top level"):
        flatten(output)
    inner = {"cls": SCALAR}
    outer = {"rpn": {"head": inner}}
    inner["up"] = outer["rpn"]
    with pytest.raises(ValueError, match=r"contains itself: the value at 'rpn/head/up' is the "):
        parse(outer)


def test_one_mapping_under_two_keys_is_not_a_cycle():
    shared = {"cls": SCALAR}
    assert list(flatten({"a": shared, "b": shared})) == ["a/cls", "b/cls"]


def test_check_term_devices_names_every_term_and_its_device():
    from lightning_losses.terms.values import check_term_devices

    cpu, meta = torch.tensor(1.0), torch.empty((), device="meta")
    check_term_devices({"a": cpu, "b": torch.tensor(2.0)})  # one real device: no error
    check_term_devices({})
    with pytest.raises(ValueError) as info:
        check_term_devices({"a": cpu, "b": meta})
    assert str(info.value) == (
        "expected all loss terms on one real device; found 'a' on cpu, 'b' on meta"
    )
    with pytest.raises(ValueError, match=r"found 'only' on meta$"):
        check_term_devices({"only": meta})
