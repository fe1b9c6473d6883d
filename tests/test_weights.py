"""Weight resolution: exact names, glob patterns, schedules, and their errors."""

import math

import pytest
import torch

from lightning_losses.weighting.static import LossWeights


def test_exact_name_beats_pattern_and_first_pattern_wins():
    weights = LossWeights({"aux_*": 0.1, "aux_b": 2.0, "aux_?": 0.5})
    with pytest.warns(UserWarning, match=r"pattern 'aux_\?' matches the loss term 'aux_a', but"):
        plan = weights.plan(("aux_a", "aux_b", "main"))
    assert plan.vector(0, torch.device("cpu"), torch.float32).tolist() == pytest.approx(
        [0.1, 2.0, 1.0]
    )
    assert plan.logged == (0, 1)  # only weights that are not a constant 1 are logged
    assert weights.unmatched() == ["aux_?"]


def test_a_pattern_that_an_earlier_one_hides_is_said_and_a_pattern_for_later_terms_is_not():
    with pytest.warns(UserWarning) as record:
        LossWeights({"aux_*": 0.1, "aux_?": 0.5}).plan(("aux_a", "main"))
    [said] = [str(w.message) for w in record]
    assert said == (
        "loss_weights pattern 'aux_?' matches the loss term 'aux_a', but the earlier pattern "
        "'aux_*' decides its weight (the first matching pattern wins), so 'aux_?' weighs "
        "nothing; list the more specific pattern first"
    )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # exceptions by name to a pattern, and a pattern for terms still to come: nothing to say
        LossWeights({"aux_a": 2.0, "aux_*": 0.1, "det/*": 3.0}).plan(("aux_a", "main"))


def test_constant_vectors_are_cached_per_device_and_dtype():
    plan = LossWeights({"a": 3.0}).plan(("a",))
    first = plan.vector(0, torch.device("cpu"), torch.float32)
    assert plan.vector(5, torch.device("cpu"), torch.float32) is first


def test_schedules_are_called_with_the_step():
    plan = LossWeights({"kl": lambda step: min(1.0, step / 10)}).plan(("recon", "kl"))
    assert plan.vector(3, torch.device("cpu"), torch.float64).tolist() == [1.0, 0.3]
    assert plan.vector(30, torch.device("cpu"), torch.float64).tolist() == [1.0, 1.0]
    assert plan.logged == (1,)


@pytest.mark.parametrize(
    ("loss_weights", "error", "fragment"),
    [
        ([("a", 1.0)], TypeError, "loss_weights is a value of type list"),
        ({"a": "heavy"}, TypeError, "loss_weights for 'a' is a value of type str"),
        ({"a": True}, TypeError, "for 'a' is a value of type bool"),
        ({"a": math.nan}, ValueError, "for 'a' is nan"),
        ({"": 1.0}, TypeError, "loss_weights key ''"),
    ],
)
def test_bad_weights_name_the_key(loss_weights, error, fragment):
    with pytest.raises(error, match=fragment):
        LossWeights(loss_weights)


def test_schedule_returning_garbage_names_the_term_and_step():
    plan = LossWeights({"kl": lambda step: None}).plan(("kl",))
    with pytest.raises(TypeError, match=r"loss_weights\[...\]\(7\) for 'kl'"):
        plan.vector(7, torch.device("cpu"), torch.float32)
