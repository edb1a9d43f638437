"""FAB-T: the boundary projection against independent solvers, known answers on linear models
(closed-form minimal perturbations), a ReLU MLP against a dense grid, the judge contract,
1 vs 4 devices, and input errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from platform_support import take_devices
from toys import (
    MLP,
    ORD,
    closed_form,
    fab_linear_ratio,
    linear_problem,
    mlp_params,
    norms,
    relu_mlp,
)

from hpm_jax.attacks import geometry
from hpm_jax.attacks.fab_attack import fab_targeted
from hpm_jax.attacks.fab_projections import boundary_step
from hpm_jax.runtime.sharding import data_sharding, make_mesh

# Jitted once per norm: eager dispatch would compile every op of it separately.
_step = jax.jit(boundary_step, static_argnames="norm")

# ---------------------------------------------------------------- the projection


def _bisect(fn, lo, hi, n=200):
    """Root of an increasing fn on [lo, hi] by plain bisection."""
    for _ in range(n):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if fn(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


def _reference_linf(t, w, f):
    """Smallest lam whose box [max(-lam, -t), min(lam, 1 - t)] lets f + w·d reach 0, found by
    bisection on lam; at that lam every coordinate sits at the bound that lowers |f|."""
    s = np.sign(f) if f != 0 else 1.0

    def d_at(lam):
        lo, hi = np.maximum(-lam, -t), np.minimum(lam, 1 - t)
        return np.where(s * w > 0, lo, np.where(s * w < 0, hi, 0.0))

    lam = _bisect(lambda lam: -s * (f + w @ d_at(lam)), 0.0, 1.0)
    return d_at(lam)


def _reference_l2(t, w, f):
    """KKT: d = clip(-mu w, -t, 1 - t) with the multiplier mu found by bisection."""

    def d_at(mu):
        return np.clip(-mu * w, -t, 1 - t)

    mu = _bisect(lambda mu: -(f + w @ d_at(mu)), -1e6, 1e6, n=400)
    return d_at(mu)


def _reference_l1(t, w, f):
    """Brute force over the LP's vertices: all coordinates but one at -t, 0 or 1 - t, the free
    one solved from the equality; the feasible vertex of least L1 norm."""
    n = len(t)
    best, best_d = np.inf, None
    for j in range(n):
        others = [i for i in range(n) if i != j]
        if w[j] == 0:
            continue
        for choice in itertools.product(range(3), repeat=n - 1):
            d = np.zeros(n)
            for i, c in zip(others, choice, strict=True):
                d[i] = (-t[i], 0.0, 1 - t[i])[c]
            d[j] = -(f + w @ d) / w[j]
            if -t[j] - 1e-12 <= d[j] <= 1 - t[j] + 1e-12 and np.abs(d).sum() < best:
                best, best_d = np.abs(d).sum(), d
    return best_d


REFERENCES = {"Linf": _reference_linf, "L2": _reference_l2, "L1": _reference_l1}


def _projection_cases(rng, n, rows):
    """Rows of (t, w, f): reachable hyperplanes, the box binding on some coordinates (the
    target point z sits on faces), zero weights, and f of both signs."""
    t = rng.uniform(0, 1, (rows, n))
    w = rng.normal(size=(rows, n))
    w[::3, 0] = 0.0
    z = np.clip(rng.uniform(-0.5, 1.5, (rows, n)), 0, 1)  # a reachable point of the box
    f = np.sum(w * (t - z), axis=1) * rng.uniform(0.05, 1.0, rows)
    return t, w, f


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_boundary_step_matches_an_independent_solver(norm):
    rng = np.random.default_rng(0)
    n = 5 if norm == "L1" else 7
    t, w, f = _projection_cases(rng, n, 24)
    d = np.asarray(_step(*(jnp.asarray(a, jnp.float32) for a in (t, w, f)), norm=norm))
    for i in range(len(t)):
        ref = REFERENCES[norm](t[i], w[i], f[i])
        assert abs(f[i] + w[i] @ d[i]) < 1e-4 * (1 + abs(f[i])), "not on the hyperplane"
        assert np.all(t[i] + d[i] >= -1e-6) and np.all(t[i] + d[i] <= 1 + 1e-6), "left the box"
        np.testing.assert_allclose(
            np.linalg.norm(d[i], ORD[norm]), np.linalg.norm(ref, ORD[norm]), rtol=1e-4, atol=1e-6
        )
        if norm != "L1":  # Linf and L2 minimisers are unique on coordinates with w != 0
            np.testing.assert_allclose(d[i][w[i] != 0], ref[w[i] != 0], atol=2e-5)
        assert np.all(d[i][w[i] == 0] == 0)


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_boundary_step_unreachable_hyperplane_goes_to_the_nearest_corner(norm):
    rng = np.random.default_rng(1)
    t = rng.uniform(0, 1, (6, 5))
    w = rng.normal(size=(6, 5))
    w[0, 2] = 0.0
    reach = np.sum(np.abs(w) * np.where(w > 0, t, 1 - t), axis=1)  # largest drop of f
    sign = np.array([1, -1, 1, -1, 1, -1.0])
    f = sign * reach * 1.5
    w = w * sign[:, None]  # with f < 0 the helpful direction flips with w
    d = np.asarray(_step(*(jnp.asarray(a, jnp.float32) for a in (t, w, f)), norm=norm))
    corner = np.where(w * sign[:, None] > 0, -t, np.where(w * sign[:, None] < 0, 1 - t, 0.0))
    np.testing.assert_allclose(d, corner, atol=1e-6)
    np.testing.assert_allclose(f + np.sum(w * d, axis=1), sign * reach * 0.5, rtol=1e-5)


def test_boundary_step_at_the_boundary_and_with_zero_gradient_does_not_move():
    t = jnp.full((3, 4), 0.5)
    w = jnp.array([[1.0, -2, 0, 3], [0, 0, 0, 0], [0, 0, 0, 0]])
    f = jnp.array([0.0, 0.0, 1.0])
    for norm in ("Linf", "L2", "L1"):
        d = _step(t, w, f, norm=norm)
        assert np.all(np.isfinite(d)) and np.all(np.asarray(d) == 0), norm


# ---------------------------------------------------------------- linear models


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_linear_model_one_target_hits_the_closed_form(norm):
    # Interior points and small weights so the box never binds (L1 moves one pixel: far less).
    w, b, model = linear_problem(0, scale=0.1 if norm != "L1" else 0.5)
    x = jnp.asarray(0.3 + 0.4 * np.random.default_rng(1).random((8, 1, 3, 4)), jnp.float32)
    y = jnp.argmax(model(x), 1)
    res = fab_targeted(model, x, y, key=jax.random.key(0), norm=norm, eps=10.0, n_target_classes=1)
    closed, z = closed_form(w, b, x, y, norm)
    second = np.argsort(z, 1)[:, -2]
    expected = closed[np.arange(8), second] * fab_linear_ratio()
    np.testing.assert_allclose(norms(res.x_adv - x, norm), expected, rtol=3e-4)
    assert not np.any(res.robust)
    assert np.all(np.argmax(model(res.x_adv), 1) != y)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_linear_model_several_targets_take_the_min_and_eps_decides(norm):
    w, b, model = linear_problem(2, d=12, c=5)
    x = jnp.asarray(0.3 + 0.4 * np.random.default_rng(3).random((16, 1, 3, 4)), jnp.float32)
    y = jnp.argmax(model(x), 1)
    closed, _ = closed_form(w, b, x, y, norm)
    found = closed.min(1) * fab_linear_ratio()
    # All 4 other classes (9 is capped at C - 1): the smallest of the per-target optima.
    res = fab_targeted(model, x, y, key=jax.random.key(0), norm=norm, eps=10.0)
    np.testing.assert_allclose(norms(res.x_adv - x, norm), found, rtol=3e-4)
    # A threshold between the points: below it broken (within eps), above it untouched.
    eps = float(np.median(found))
    res = fab_targeted(model, x, y, key=jax.random.key(0), norm=norm, eps=eps)
    robust, dist = np.asarray(res.robust), norms(res.x_adv - x, norm)
    broken, safe = found < eps * (1 - 1e-3), closed.min(1) > eps
    assert broken.sum() >= 4 and safe.sum() >= 4
    assert not robust[broken].any() and np.all(dist[broken] <= eps)
    assert robust[safe].all() and np.all(np.asarray(res.x_adv)[safe] == np.asarray(x)[safe])
    # One eps per image (traced: no recompilation): just above FAB's answer on even points,
    # just below the true minimum on odd ones.
    odd = np.arange(16) % 2 == 1
    eps = np.where(odd, 0.99 * closed.min(1), 1.001 * found)
    res = fab_targeted(model, x, y, key=jax.random.key(0), norm=norm, eps=jnp.asarray(eps))
    np.testing.assert_array_equal(res.robust, odd)
    assert np.all(norms(res.x_adv - x, norm) <= np.where(odd, 0.0, eps))


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_restarts_start_at_half_eps(norm):
    x = jnp.full((4, 3, 3, 1), 0.5)
    eps = jnp.array([0.1, 0.2, 0.3, 0.4])  # per image (B,)
    start = geometry.sphere_start(jax.random.key(0), x, 0.5 * eps, norm)
    np.testing.assert_allclose(norms(start - x, norm), [0.05, 0.1, 0.15, 0.2], rtol=1e-5)
    assert len(np.unique(np.asarray(start))) > 30  # random directions, not a fixed pattern


def test_restarts_keep_the_best_point():
    _, _, model = linear_problem(4)
    x = jnp.asarray(0.3 + 0.4 * np.random.default_rng(5).random((8, 1, 3, 4)), jnp.float32)
    y = jnp.argmax(model(x), 1)
    one = fab_targeted(model, x, y, key=jax.random.key(1), norm="L2", eps=10.0, n_iter=20)
    three = fab_targeted(
        model, x, y, key=jax.random.key(1), norm="L2", eps=10.0, n_iter=20, n_restarts=3
    )
    assert np.all(norms(three.x_adv - x, "L2") <= norms(one.x_adv - x, "L2") * (1 + 1e-6))
    # With no iterations nothing is found: x comes back, robust everywhere.
    none = fab_targeted(model, x, y, key=jax.random.key(1), norm="L2", eps=10.0, n_iter=0)
    assert np.all(np.asarray(none.x_adv) == np.asarray(x)) and np.all(none.robust)


# ---------------------------------------------------------------- a ReLU MLP in 2-D


# One function object (as toys.MLP): compiled once per shape and configuration across the tests.
GRID_MLP = relu_mlp(1)  # FAB's local search reaches the global minimum on its test points


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_relu_mlp_matches_a_dense_grid(norm):
    # Images of 1 x 2 pixels, so the minimal adversarial perturbation can be read off a grid.
    x = jnp.asarray(0.2 + 0.6 * np.random.default_rng(6).random((8, 1, 2, 1)), jnp.float32)
    y = jnp.argmax(GRID_MLP(x), 1)
    # compact=False: every target attacks every point, so the smallest norm over them is kept.
    res = fab_targeted(GRID_MLP, x, y, key=jax.random.key(0), norm=norm, eps=1.0, compact=False)
    h = 1e-3
    g = np.linspace(0, 1, 1001, dtype=np.float32)
    grid = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    pred = np.asarray(jax.jit(GRID_MLP)(jnp.asarray(grid))).argmax(1)
    dist = norms(res.x_adv - x, norm)
    assert not res.robust.any()
    assert np.all(np.asarray(GRID_MLP(res.x_adv)).argmax(1) != np.asarray(y))
    for i in range(len(y)):
        adv = pred != int(y[i])
        estimate = np.linalg.norm(grid[adv] - np.asarray(x[i]).ravel(), ORD[norm], axis=1).min()
        # The grid's best is an adversarial point, so the true minimum lies within
        # one cell of it; FAB's is a real adversarial point, so it cannot be much below.
        assert estimate - 2 * h <= dist[i] <= 1.02 * estimate + 1e-6, (i, dist[i], estimate)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_relu_mlp_agrees_with_the_reference_implementation(norm):
    """pyautoattack's FAB-T on the same MLP: its first run starts at x, so it is deterministic
    and the per-point results must agree, local minima included (one target: the reference
    stops at the first success within eps, we keep the best over targets)."""
    torch = pytest.importorskip("torch")
    fab_pt = pytest.importorskip("pyautoattack.fab_pt")
    p = [torch.tensor(a, dtype=torch.float32) for a in mlp_params(3)]

    def torch_mlp(x):
        h = x.reshape(x.shape[0], -1)
        h = torch.relu(h @ p[0] + p[1])
        h = torch.relu(h @ p[2] + p[3])
        return h @ p[4] + p[5]

    x = np.asarray(0.2 + 0.6 * np.random.default_rng(6).random((16, 1, 2, 1)), np.float32)
    y = np.asarray(jnp.argmax(MLP(jnp.asarray(x)), 1))
    ref = fab_pt.FABAttack_PT(
        torch_mlp, norm=norm, n_iter=100, eps=1.0, targeted=True, n_target_classes=1
    ).perturb(torch.tensor(x), torch.tensor(y))
    ours = fab_targeted(
        MLP, jnp.asarray(x), jnp.asarray(y), key=jax.random.key(0), norm=norm, eps=1.0,
        n_target_classes=1,
    )  # fmt: skip
    ref_robust = torch_mlp(ref).argmax(1).numpy() == y
    np.testing.assert_array_equal(ours.robust, ref_robust)
    assert 6 <= (~ref_robust).sum() < len(y)  # both outcomes occur
    # The projections agree to float32 precision; a point whose iterate lands exactly on the
    # boundary (z_t == z_y up to rounding) may branch differently, so allow a rare outlier.
    close = np.isclose(norms(ours.x_adv - x, norm), norms(ref.numpy() - x, norm), rtol=1e-3)
    assert close.sum() >= len(y) - 2, close


# ---------------------------------------------------------------- the judge contract


def test_judge_decides_success_on_the_whole_batch():
    _, _, model = linear_problem(7)
    x = jnp.asarray(0.3 + 0.4 * np.random.default_rng(8).random((8, 1, 3, 4)), jnp.float32)
    y = jnp.argmax(model(x), 1)
    seen = []
    bonus = np.zeros((8, 5), np.float32)
    bonus[0, int(y[0])] = 100.0  # the judge never lets sample 0 be fooled
    bonus[1, (int(y[1]) + 1) % 5] = 100.0  # and gets sample 1 wrong on the clean image
    bonus = jnp.asarray(bonus)

    def judge(xb):
        seen.append(xb.shape)
        return model(xb) + bonus

    # The bonus couples rows by position: compact=False keeps every row in its batch.
    kw = dict(key=jax.random.key(0), eps=10.0, n_iter=30, compact=False)
    plain = fab_targeted(model, x, y, **kw)
    judged = fab_targeted(model, x, y, judge_fn=judge, **kw)
    assert seen and all(s == x.shape for s in seen)
    robust = np.asarray(judged.robust)
    assert robust[0] and not robust[1] and not robust[2:].any()
    np.testing.assert_array_equal(judged.x_adv[:2], x[:2])  # not attacked / nothing found
    np.testing.assert_array_equal(judged.x_adv[2:], plain.x_adv[2:])


def test_batch_coupled_judge_verdict_is_on_the_returned_batch():
    _, _, model = linear_problem(9)
    x = jnp.asarray(0.3 + 0.4 * np.random.default_rng(10).random((8, 1, 3, 4)), jnp.float32)
    y = jnp.argmax(model(x), 1)

    def judge(xb):  # logits shifted by the batch mean: each verdict depends on the others
        z = model(xb)
        return z - 0.5 * jnp.mean(z, axis=0, keepdims=True)

    res = fab_targeted(model, x, y, key=jax.random.key(0), norm="L2", eps=0.5, judge_fn=judge)
    verdict = np.argmax(np.asarray(judge(res.x_adv)), 1) == np.asarray(y)
    np.testing.assert_array_equal(res.robust, verdict)
    moved = np.any(np.asarray(res.x_adv != x).reshape(8, -1), axis=1)
    assert moved.any() and np.all(norms(res.x_adv - x, "L2")[moved] <= 0.5)


# ---------------------------------------------------------------- devices and errors


@pytest.mark.slow
def test_one_and_four_devices_agree():
    x = jnp.asarray(0.2 + 0.6 * np.random.default_rng(11).random((8, 1, 2, 1)), jnp.float32)
    y = jnp.argmax(MLP(x), 1)
    kw = dict(key=jax.random.key(3), norm="Linf", eps=0.2, n_restarts=2, n_target_classes=2)
    out = []
    for devices in (take_devices(1), take_devices(4)):
        sharding = data_sharding(make_mesh(devices))
        xs, ys = jax.device_put(x, sharding), jax.device_put(y, sharding)
        out.append(fab_targeted(MLP, xs, ys, **kw))
    np.testing.assert_array_equal(out[0].robust, out[1].robust)
    np.testing.assert_allclose(out[0].x_adv, out[1].x_adv, atol=1e-6)
    assert (~np.asarray(out[0].robust)).any() and np.asarray(out[0].robust).any()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(norm="L3"), "norm must be one of"),
        (dict(eps=0.0), "eps must be"),
        (dict(eps=jnp.array([0.1, -0.1])), "one finite value > 0 per image"),
        (dict(eps=jnp.array([0.1, 0.1, 0.1])), "one finite value > 0 per image"),
        (dict(n_iter=-1), "n_iter must be an integer"),
        (dict(n_target_classes=0), "n_target_classes must be"),
        (dict(n_restarts=1.5), "n_restarts must be"),
        (dict(alpha_max=1.5), "alpha_max must lie"),
        (dict(beta=1.0), "beta"),
        (dict(eta=0.0), "eta"),
        (dict(y=jnp.array([0, 5])), r"labels must lie in \[0, 2\]"),
        (dict(y=jnp.array([0])), "one label per image"),
        (dict(x=jnp.full((2, 2, 1), 0.5)), "NHWC"),
        (dict(x=jnp.full((2, 1, 2, 1), 2.0)), r"\[0, 1\]"),
        (dict(logits_fn=lambda x: MLP(x)[:, 0]), r"logits of shape \(2, num_classes\)"),
        (dict(logits_fn=lambda x: MLP(x)[:, :1]), "at least 2 classes"),
        (dict(judge_fn=lambda x: MLP(x)[:, :2]), "same 3 classes"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, message):
    kw = dict(
        logits_fn=MLP, x=jnp.full((2, 1, 2, 1), 0.5), y=jnp.array([0, 1]), key=jax.random.key(0)
    )
    kw.update(eps=0.1)
    kw.update(change)
    logits_fn, x, y = kw.pop("logits_fn"), kw.pop("x"), kw.pop("y")
    with pytest.raises((ValueError, TypeError), match=message):
        fab_targeted(logits_fn, x, y, **kw)
