"""Sanity checks: each flags the model it is meant to catch and passes a plain linear model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpm_jax.attacks import checks
from hpm_jax.ops import straight_through_onehot

RNG = np.random.default_rng(0)
W = jnp.asarray(RNG.normal(size=(48, 10)), jnp.float32)
B = jnp.asarray(RNG.normal(size=(10,)), jnp.float32)
X = jnp.asarray(RNG.uniform(0.2, 0.8, size=(8, 4, 4, 3)), jnp.float32)
Y = jnp.asarray(np.asarray(X).reshape(8, -1) @ np.asarray(W) + np.asarray(B)).argmax(1)


def plain(x):
    return x.reshape(x.shape[0], -1) @ W + B


def softmax_model(x):
    return jax.nn.softmax(plain(x))


_noise = np.random.default_rng(1)


def randomized_model(x):
    # Host-side noise: a fresh draw on every (eager) call, as a stochastic defense would give.
    return plain(x) + jnp.asarray(_noise.normal(0, 0.1, (x.shape[0], 10)), jnp.float32)


def quantized_model(x):
    return plain(jnp.round(x * 8) / 8)  # piecewise constant in x: zero gradient everywhere


def batch_coupled_model(x):
    z = plain(x)
    return z - z.mean(0, keepdims=True)  # each row depends on the whole batch


def ste_model(x):
    z = plain(x)
    return z + straight_through_onehot(z, 1.0)  # custom_vjp in the forward pass


def loop_model(x):
    z = plain(x)
    return jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] * 0.5), (0, z))[1]


def test_a_plain_model_passes_every_model_check():
    results = [
        checks.check_randomized(plain, X),
        checks.check_softmax_output(plain(X)),
        checks.check_zero_gradients(plain, X, Y),
        checks.check_dynamic(plain, X),
        checks.check_batch_dependence(plain, X),
    ]
    assert [r.flagged for r in results] == [False] * 5, [r.message for r in results]
    assert all(r.passed and r.message for r in results)
    assert results[1].details["num_classes"] == 10


def test_randomized_model_is_flagged_with_the_reference_wording():
    r = checks.check_randomized(randomized_model, X)
    assert r.flagged and "it seems to be a randomized defense" in r.message
    assert "version='rand'" in r.message and r.details["max_difference"] > 1e-4


def test_softmax_output_is_flagged():
    r = checks.check_softmax_output(softmax_model(X))
    assert r.flagged and "the output is a probability distribution" in r.message
    # Non-negative outputs that do not sum to one are logits, not probabilities.
    assert not checks.check_softmax_output(jnp.abs(plain(X))).flagged


def test_zero_gradients_of_a_quantised_model_are_counted():
    r = checks.check_zero_gradients(quantized_model, X, Y)
    assert r.flagged and r.details == {"zero_gradient_points": 8, "points": 8}
    assert "there are 8 points with zero gradient" in r.message


@pytest.mark.parametrize("model,what", [(ste_model, "custom gradient"), (loop_model, "while")])
def test_dynamic_forward_passes_are_flagged(model, what):
    r = checks.check_dynamic(model, X)
    assert r.flagged and "dynamic defense" in r.message and what in r.message


def test_batch_dependent_model_is_flagged_and_a_row_wise_one_is_not():
    r = checks.check_batch_dependence(batch_coupled_model, X)
    assert r.flagged and "depends on the rest of the batch" in r.message
    assert r.details["max_relative_change"] > 1e-2
    # Row-wise normalisation looks at the row only: not batch dependent.
    row_wise = lambda x: jax.nn.log_softmax(plain(x))
    assert not checks.check_batch_dependence(row_wise, X).flagged


def test_square_check_follows_the_reference_rule():
    flagged = checks.check_square({"clean": 0.9, "apgd-ce": 0.5, "apgd-t": 0.45, "square": 0.4})
    assert flagged.flagged and "decreased the robust accuracy of 5.00%" in flagged.message
    # Within alpha (0.2%) of the best other attack: no flag.
    assert not checks.check_square({"clean": 0.9, "apgd-ce": 0.5, "square": 0.499}).flagged
    # Square alone, or no Square at all: nothing to compare.
    assert not checks.check_square({"clean": 0.9, "square": 0.1}).flagged
    assert not checks.check_square({"clean": 0.9, "apgd-ce": 0.5}).flagged


def test_perturbation_check_flags_leaving_the_ball_the_box_or_nans():
    x = np.full((3, 2, 2, 1), 0.5, np.float32)
    good = x + np.float32(0.1)
    ok = checks.check_perturbation(good, x, norm="Linf", eps=0.1)
    assert not ok.flagged and ok.message.startswith("max Linf perturbation: 0.10000")
    assert checks.check_perturbation(x + 0.2, x, norm="Linf", eps=0.1).flagged
    l2_far = x.copy()
    l2_far[0, 0, 0, 0] += 0.3
    assert checks.check_perturbation(l2_far, x, norm="L2", eps=0.25).flagged
    assert not checks.check_perturbation(l2_far, x, norm="L2", eps=0.3).flagged
    nan = good.copy()
    nan[1, 0, 0, 0] = np.nan
    assert checks.check_perturbation(nan, x, norm="Linf", eps=0.1).details["nan"] == 1
    outside = np.zeros_like(x)
    outside[0] = -0.05
    assert checks.check_perturbation(outside, np.zeros_like(x), norm="Linf", eps=0.1).flagged


def test_final_reevaluation_counts_changed_verdicts():
    chain = np.array([True, True, False, False])
    r = checks.check_final_reevaluation(chain, np.array([True, False, True, False]))
    assert r.flagged and r.details == {"lost": 1, "regained": 1, "near_ties": 0}
    assert not checks.check_final_reevaluation(chain, chain).flagged


def test_results_serialise():
    r = checks.check_zero_gradients(quantized_model, X, Y)
    d = r.to_dict()
    assert d["name"] == "zero_gradients" and d["flagged"] is True and "message" in d
