"""The attacks' shared contract (geometry.py) and losses (losses.py) against float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpm_jax.attacks import contract, geometry, losses


def np_log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def np_margin(z, y):
    others = z.copy()
    others[np.arange(len(y)), y] = -np.inf
    return z[np.arange(len(y)), y] - others.max(1)


def np_dlr(z, y):
    s = np.sort(z, 1)[:, ::-1]
    return -np_margin(z, y) / (s[:, 0] - s[:, 2] + 1e-12)


def np_targeted_dlr(z, y, t):
    s = np.sort(z, 1)[:, ::-1]
    rows = np.arange(len(y))
    return -(z[rows, y] - z[rows, t]) / (s[:, 0] - 0.5 * (s[:, 2] + s[:, 3]) + 1e-12)


@pytest.fixture(scope="module")
def logits():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(16, 10)) * 3
    y = rng.integers(0, 10, 16)
    y[:4] = z[:4].argmax(1)  # some correctly classified rows: the margin is positive there
    t = (y + rng.integers(1, 10, 16)) % 10
    return z.astype(np.float32), y.astype(np.int32), t.astype(np.int32)


# ------------------------------------------------------------------------------------ losses
def test_cross_entropy_is_the_negative_log_softmax_of_the_label(logits):
    z, y, _ = logits
    want = -np_log_softmax(z.astype(np.float64))[np.arange(16), y]
    np.testing.assert_allclose(losses.cross_entropy(jnp.asarray(z), y), want, rtol=1e-5)


def test_margin_is_the_label_logit_minus_the_best_other(logits):
    z, y, _ = logits
    got = np.asarray(losses.margin(jnp.asarray(z), y))
    np.testing.assert_allclose(got, np_margin(z.astype(np.float64), y), rtol=1e-6, atol=1e-6)
    assert (got[:4] > 0).all() and ((got > 0) == (z.argmax(1) == y)).all()


def test_dlr_matches_numpy_and_ignores_shift_and_scale(logits):
    z, y, _ = logits
    got = np.asarray(losses.dlr(jnp.asarray(z), y))
    np.testing.assert_allclose(got, np_dlr(z.astype(np.float64), y), rtol=1e-5, atol=1e-6)
    moved = np.asarray(losses.dlr(jnp.asarray(z * 7.0 - 3.0), y))
    np.testing.assert_allclose(moved, got, rtol=1e-4, atol=1e-5)
    # Maximised by the attacker: negative where the point is classified correctly.
    assert ((got < 0) == (z.argmax(1) == y)).all()


def test_targeted_dlr_matches_numpy_and_ignores_shift_and_scale(logits):
    z, y, t = logits
    got = np.asarray(losses.targeted_dlr(jnp.asarray(z), y, t))
    want = np_targeted_dlr(z.astype(np.float64), y, t)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    moved = np.asarray(losses.targeted_dlr(jnp.asarray(z * 0.5 + 10.0), y, t))
    np.testing.assert_allclose(moved, got, rtol=1e-4, atol=1e-5)


def test_dlr_gradient_is_exactly_zero_on_its_plateau_and_untouched_elsewhere():
    """Where y ranks third, DLR = (z_pi1 - z_y) / (z_pi1 - z_y) = 1 around the point: its
    gradient is exactly 0 (autodiff through both paths left +-1 ulp of noise, which APGD's
    sign and L2 steps blew up into full steps). Elsewhere it is the formula's own gradient."""
    z = jnp.asarray(np.random.default_rng(1).normal(size=(256, 10)) * 3, jnp.float32)
    rank = jnp.argsort(-z, axis=1)
    y = rank[:, jnp.arange(256) % 5]  # y ranked 1st .. 5th, in turn
    y = y[jnp.arange(256), jnp.arange(256)]
    third = np.arange(256) % 5 == 2

    def formula(v):  # the loss without the plateau rule
        top = jax.lax.top_k(v, 3)[0]
        return -losses.margin(v, y) / (top[:, 0] - top[:, 2] + 1e-12)

    grad = np.asarray(jax.grad(lambda v: losses.dlr(v, y).sum())(z))
    raw = np.asarray(jax.grad(lambda v: formula(v).sum())(z))
    assert np.all(grad[third] == 0) and np.any(raw[third] != 0)  # the noise the rule removes
    np.testing.assert_array_equal(grad[~third], raw[~third])
    np.testing.assert_array_equal(losses.dlr(z, y), formula(z))  # the value is unchanged


def test_dlr_stays_finite_when_the_top_logits_tie():
    z = jnp.zeros((2, 5))
    y = jnp.array([0, 3])
    assert np.isfinite(losses.dlr(z, y)).all()
    assert np.isfinite(losses.targeted_dlr(z, y, jnp.array([1, 2]))).all()


# --------------------------------------------------------------------------- norms, project
@pytest.mark.parametrize("norm,order", [("Linf", np.inf), ("L2", 2), ("L1", 1)])
def test_per_sample_norm_and_normalize(norm, order):
    v = np.random.default_rng(1).normal(size=(5, 4, 3, 2)).astype(np.float32)
    want = np.linalg.norm(v.reshape(5, -1).astype(np.float64), ord=order, axis=1)
    np.testing.assert_allclose(geometry.per_sample_norm(jnp.asarray(v), norm), want, rtol=1e-5)
    unit = geometry.normalize(jnp.asarray(v), norm)
    np.testing.assert_allclose(geometry.per_sample_norm(unit, norm), np.ones(5), rtol=1e-5)


def test_norm_functions_name_a_bad_norm():
    with pytest.raises(ValueError, match="norm must be one of"):
        geometry.per_sample_norm(jnp.ones((1, 2)), "L3")
    with pytest.raises(ValueError, match="Linf and L2"):
        geometry.project(jnp.ones((1, 1, 1, 1)), jnp.ones((1, 1, 1, 1)), 0.1, "L1")
    with pytest.raises(ValueError, match="norm must be one of"):
        geometry.sphere_start(jax.random.key(0), jnp.ones((1, 1, 1, 1)), 0.1, "L3")


def test_project_linf_is_the_exact_clip_into_ball_and_box_with_per_sample_eps():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, (4, 3, 3, 1)).astype(np.float32)
    x_adv = (x + rng.normal(0, 0.5, x.shape)).astype(np.float32)
    eps = np.array([0.01, 0.1, 0.3, 1.0], np.float32)
    e = eps[:, None, None, None]
    want = np.clip(np.clip(x_adv, x - e, x + e), 0, 1)
    got = geometry.project(jnp.asarray(x_adv), jnp.asarray(x), jnp.asarray(eps), "Linf")
    np.testing.assert_allclose(got, want, atol=1e-7)
    got_scalar = geometry.project(jnp.asarray(x_adv), jnp.asarray(x), 0.1, "Linf")
    np.testing.assert_allclose(got_scalar, np.clip(np.clip(x_adv, x - 0.1, x + 0.1), 0, 1))


def test_project_l2_rescales_onto_the_ball_keeps_inside_points_and_clips_to_the_box():
    x = np.full((3, 4, 4, 1), 0.5, np.float32)
    d = np.random.default_rng(3).normal(size=x.shape).astype(np.float32)
    d /= np.linalg.norm(d.reshape(3, -1), axis=1)[:, None, None, None]
    scale = np.array([0.05, 0.2, 3.0], np.float32)[:, None, None, None]
    x_adv = x + d * scale  # lengths 0.05 (inside), 0.2, 3.0 against eps = 0.1
    got = np.asarray(geometry.project(jnp.asarray(x_adv), jnp.asarray(x), 0.1, "L2"))
    np.testing.assert_allclose(got[0], x_adv[0], atol=1e-7)  # inside: unchanged
    # Outside, no box clipping at this radius: the same direction at length eps.
    np.testing.assert_allclose(got[1], x[1] + 0.1 * d[1], atol=1e-6)
    assert got.min() >= 0 and got.max() <= 1
    np.testing.assert_allclose(np.linalg.norm((got - x).reshape(3, -1), axis=1)[1], 0.1, rtol=1e-5)
    assert np.linalg.norm((got[2] - x[2]).ravel()) <= 0.1 + 1e-6


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_random_start_lies_on_the_sphere_inside_the_box(norm):
    x = jnp.full((6, 5, 5, 3), 0.5)
    x0 = geometry.sphere_start(jax.random.key(0), x, 0.1, norm)
    dist = np.asarray(geometry.per_sample_norm(x0 - x, norm))
    np.testing.assert_allclose(dist, np.full(6, 0.1), rtol=1e-5)
    if norm == "Linf":  # t uniform in [-1, 1]: coordinates spread, not all at the corners
        spread = np.abs(np.asarray(x0 - x)).ravel()
        assert 0.3 < np.mean(spread) / 0.1 < 0.7
    other = geometry.sphere_start(jax.random.key(1), x, 0.1, norm)
    assert not np.allclose(x0, other)
    # Near the box faces the start is clipped into [0, 1].
    edge = geometry.sphere_start(jax.random.key(0), jnp.zeros((2, 3, 3, 1)), 0.5, norm)
    assert float(edge.min()) >= 0 and float(edge.max()) <= 1


def test_correct_breaks_ties_to_the_lowest_index():
    z = jnp.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    np.testing.assert_array_equal(losses.correct(z, jnp.array([0, 2])), [True, False])


# ------------------------------------------------------------------------------ validate
def _ok():
    return np.full((2, 4, 4, 1), 0.5, np.float32), np.array([0, 1], np.int32)


def _classes(c):
    return lambda v: jnp.zeros((v.shape[0], c))


@pytest.mark.parametrize(
    "change,error,match",
    [
        (dict(norm="L3"), ValueError, "norm must be one of"),
        (dict(eps=0.0), ValueError, "eps must be a finite number > 0"),
        (dict(eps=float("nan")), ValueError, "eps must be a finite number > 0"),
        (dict(eps="0.1"), ValueError, "eps must be a finite number > 0"),
        (dict(eps=np.ones(3)), ValueError, r"one finite value > 0 per image, shape \(2,\)"),
        (dict(eps=np.array([0.1, -0.1])), ValueError, "one finite value > 0 per image"),
        (dict(x=np.full((2, 16), 0.5, np.float32)), ValueError, "NHWC"),
        (dict(x=np.full((2, 4, 4, 1), 128, np.uint8)), TypeError, "/ 255"),
        (dict(y=np.array([0, 1, 1])), ValueError, r"one label per image, shape \(2,\)"),
        (dict(y=np.array([0.0, 1.0])), TypeError, "integer class labels"),
        (dict(x=np.full((2, 4, 4, 1), 1.5, np.float32)), ValueError, r"images in \[0, 1\]"),
        (dict(x=np.full((2, 4, 4, 1), np.nan, np.float32)), ValueError, r"images in \[0, 1\]"),
        (dict(y=np.array([0, 7]), logits_fn=_classes(5)), ValueError, r"lie in \[0, 4\]"),
        (dict(norm="L1", allowed_norms=("Linf", "L2")), ValueError, "norm must be one of"),
        (dict(logits_fn=lambda v: v[:, 0, 0, 0]), ValueError, r"logits of shape \(2, num_"),
        (dict(judge_fn=_classes(3)), ValueError, "judge_fn must score the same 10 classes"),
        (dict(judge_fn=lambda v: v), ValueError, "judge_fn must map a batch of 2 images"),
    ],
)
def test_validate_names_the_problem(change, error, match):
    x, y = _ok()
    kwargs = dict(x=x, y=y, norm="Linf", eps=0.1, logits_fn=_classes(10), judge_fn=None) | change
    args = [kwargs.pop(k) for k in ("logits_fn", "judge_fn", "x", "y")]
    with pytest.raises(error, match=match):
        contract.validate(*args, **kwargs)


def test_validate_resolves_the_judge_and_eps_and_skips_value_checks_under_jit():
    x, y = _ok()
    loss, judge = _classes(2), _classes(2)
    checked = contract.validate(loss, None, x, y, norm="L2", eps=0.5)
    assert checked.judge_fn is loss and checked.num_classes == 2
    np.testing.assert_array_equal(checked.eps, [0.5, 0.5])
    per_sample = contract.validate(loss, judge, x, y, norm="L2", eps=np.array([0.1, 0.2]))
    assert per_sample.judge_fn is judge

    @jax.jit
    def traced(x, y):
        contract.validate(loss, None, x, y, norm="Linf", eps=0.1)
        return x

    traced(jnp.full((2, 4, 4, 1), 3.0), jnp.array([0, 9]))  # values unseen under tracing


def test_traced_logits_functions_carry_their_arrays_as_leaves():
    """A Partial's arrays become jit arguments; a closure is one static leaf; equal settings
    give equal tree structures (jit's cache key), other settings other ones."""
    w = jnp.ones((3, 2))
    apply = lambda w, v, scale=1.0: scale * v.reshape(v.shape[0], -1) @ w
    leaves, tree = jax.tree_util.tree_flatten(contract.traced(jax.tree_util.Partial(apply, w)))
    assert len(leaves) == 1 and leaves[0] is w
    other = jax.tree_util.tree_structure(contract.traced(jax.tree_util.Partial(apply, 2 * w)))
    assert other == tree
    scaled = jax.tree_util.Partial(apply, w, scale=2.0)
    assert jax.tree_util.tree_structure(contract.traced(scaled)) != tree
    closure = lambda v: apply(w, v)
    assert jax.tree_util.tree_leaves(contract.traced(closure)) == []
    out = jax.jit(lambda f, v: f(v))(contract.traced(scaled), jnp.ones((1, 3, 1, 1)))
    np.testing.assert_allclose(out, [[6.0, 6.0]])
    with pytest.raises(TypeError, match="unhashable"):
        contract.traced(jax.tree_util.Partial(apply, w, scale={1.0}))
    with pytest.raises(TypeError, match="must be callable"):
        contract.traced(w)
