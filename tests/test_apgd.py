"""APGD: schedules recomputed from the rule, the L1 projection against independent solvers,
trajectories against the reference (pyautoattack) from the same start point, known answers on
linear models and a ReLU MLP (closed-form minimal perturbations), APGD-T's targets, the judge
contract, restarts, EOT, 1 vs 4 devices, no recompiles for new eps, and input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from platform_support import take_devices
from toys import APGD_B as B
from toys import APGD_C as C
from toys import APGD_MODEL as MODEL
from toys import APGD_SHAPE as SHAPE
from toys import ApgdLinear, apgd_batch

from hpm_jax.attacks import apgd_steps as steps
from hpm_jax.attacks import driver, geometry
from hpm_jax.attacks.apgd_attack import apgd, apgd_targeted
from hpm_jax.attacks.apgd_steps import checkpoints, l1_checkpoints, largereps_schedule
from hpm_jax.runtime.sharding import data_sharding, make_mesh

ORD = {"Linf": np.inf, "L2": 2, "L1": 1}


def _norms(v, norm):
    v = np.asarray(v, np.float64)
    return np.linalg.norm(v.reshape(v.shape[0], -1), ord=ORD[norm], axis=1)


def _gap_eps(dmin):
    """Per-sample eps that puts every point on a known side with a 25% gap: even points get
    eps = dmin / 0.75 (must break), odd ones eps = dmin / 1.25 (cannot break)."""
    must_break = np.arange(len(dmin)) % 2 == 0
    return jnp.asarray(np.where(must_break, dmin / 0.75, dmin / 1.25), jnp.float32), must_break


def _assert_valid(res, x, eps, norm):
    x_adv = np.asarray(res.x_adv)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    # float32 rounding of x_adv = x + delta: ~1e-7 per coordinate, summed over 48 for L1.
    assert np.all(_norms(x_adv - np.asarray(x), norm) <= np.asarray(eps) + 1e-5)
    robust = np.asarray(res.robust)
    assert np.all(x_adv[robust] == np.asarray(x)[robust])  # robust points come back as x


# ---------------------------------------------------------------- schedules


def _reference_counters(n_iter):
    """The reference's counter3 / k bookkeeping, replayed: iterations done at each check."""
    k, size_decr = max(int(0.22 * n_iter), 1), max(int(0.03 * n_iter), 1)
    n_min, marks, counter = max(int(0.06 * n_iter), 1), [], 0
    for i in range(n_iter):
        counter += 1
        if counter == k:
            marks.append(i + 1)
            counter, k = 0, max(k - size_decr, n_min)
    return marks


def test_schedules():
    # 22% of 100, each next interval 3 shorter, never under 6: 22 19 16 13 10 7 6 6.
    assert checkpoints(100) == list(np.cumsum([22, 19, 16, 13, 10, 7, 6, 6]))
    for n in (1, 5, 10, 37, 250, 1000):
        assert checkpoints(n) == _reference_counters(n)
    assert l1_checkpoints(100) == list(range(4, 101, 4))
    assert l1_checkpoints(20) == list(range(1, 21))
    assert largereps_schedule(100) == [(3.0, 30), (2.0, 30), (1.0, 40)]
    assert largereps_schedule(7) == [(3.0, 3), (2.0, 3), (1.0, 1)]


# ---------------------------------------------------------------- L1 geometry

_project = jax.jit(geometry.project_l1)


def _np_project_l1(x_adv, x, eps):
    """Independent: bisection on the multiplier of the L1 constraint in float64."""
    y = x_adv - x
    room = np.where(y >= 0, 1 - x, x)

    def at(lam):
        return np.clip(np.abs(y) - lam, 0, room)

    if at(0.0).sum() <= eps:
        return x + np.sign(y) * at(0.0)
    lo, hi = 0.0, np.abs(y).max()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if at(mid).sum() > eps else (lo, mid)
    return x + np.sign(y) * at(hi)


def test_l1_projection_against_bisection_reference_and_optimality():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (6, *SHAPE)).astype(np.float32)
    x[0, 0, 0] = [0.0, 1.0, 0.5]  # coordinates on the box faces
    z = (x + rng.normal(0, 0.5, x.shape) * (rng.uniform(size=x.shape) < 0.7)).astype(np.float32)
    z[1] = x[1] + 1e-3  # already inside the ball: only the box may bind
    eps = np.array([0.5, 2.0, 4.0, 1.0, 0.1, 30.0], np.float32)  # the last: the box alone
    p = np.asarray(_project(jnp.asarray(z), jnp.asarray(x), jnp.asarray(eps)), np.float64)
    for i in range(len(x)):
        want = _np_project_l1(z[i].astype(np.float64).ravel(), x[i].astype(np.float64).ravel(),
                              float(eps[i]))  # fmt: skip
        np.testing.assert_allclose(p[i].ravel(), want, atol=2e-6)
    # Storing p = x + delta in float32 rounds each of the 48 coordinates: ~1e-7 each.
    assert np.all(_norms(p - x, "L1") <= eps + 1e-5) and p.min() >= 0 and p.max() <= 1
    # Optimality without any solver: the projection p of z onto a convex set K satisfies
    # (z - p)·(q - p) <= 0 for every q in K; check random feasible q, some on the sphere.
    for i in range(len(x)):
        q = rng.uniform(0, 1, (2000, x[i].size)) - x[i].ravel()
        q = x[i].ravel() + q * np.minimum(1, eps[i] / np.abs(q).sum(1, keepdims=True))
        assert np.all((q - p[i].ravel()) @ (z[i] - p[i]).ravel() <= 1e-5)
    torch = pytest.importorskip("torch")
    reference = pytest.importorskip("pyautoattack.autopgd_base")
    # Both sides compute in float32: each threshold is a sum over at most n = 48 coordinates
    # of |z - x|, off by at most n u ||z - x||_1 (u = 2^-24), and so is every coordinate.
    u, n = np.finfo(np.float32).eps / 2, x[0].size
    for i, e in enumerate(eps):  # the reference takes one radius per call
        delta = reference.L1_projection(torch.tensor(x[i : i + 1]), torch.tensor(z - x)[i : i + 1],
                                        float(e)).numpy()  # fmt: skip
        bound = 2 * n * u * np.abs(z[i] - x[i]).sum() + 2 * u  # both sides, + storing x + delta
        np.testing.assert_allclose(p[i], (z[i] + delta[0]), atol=bound)


def test_sparse_direction_keeps_the_top_fraction():
    grad = jnp.asarray(np.random.default_rng(1).normal(size=(3, *SHAPE)), jnp.float32)
    topk = jnp.asarray([0.2, 0.5, 1.0])
    out = np.asarray(jax.jit(geometry.sparse_direction)(grad, topk)).reshape(3, -1)
    g = np.asarray(grad).reshape(3, -1)
    for i, frac in enumerate([0.2, 0.5, 1.0]):
        n_kept = g.shape[1] - int(np.floor((1 - frac) * g.shape[1]))
        kept = np.argsort(-np.abs(g[i]))[:n_kept]
        want = np.zeros_like(g[i])
        want[kept] = np.sign(g[i][kept]) / n_kept
        np.testing.assert_allclose(out[i], want, rtol=1e-6)


# ---------------------------------------------------------------- the reference trajectory


# L2 shares the schedule, momentum and restarts with Linf (only the step direction and the
# projection differ) and has its known-answer test; its float64 compile is left out for time.
@pytest.mark.slow
@pytest.mark.parametrize("norm,eps", [("Linf", 0.05), ("L1", 0.5)])
def test_single_run_matches_reference_from_the_same_start(norm, eps, loss="ce"):
    """The reference's attack_single_run from our start point, 100 iterations: momentum,
    checkpoints, step halving, restarts from the best point and the L1 sparsity schedule must
    all agree. float64 on both sides (the reference's L1 projection is float32 inside, so L1
    compares float32 runs)."""
    torch = pytest.importorskip("torch")
    reference = pytest.importorskip("pyautoattack.autopgd_base")
    wide = norm != "L1"
    model, n = ApgdLinear(1), 16
    x = np.random.default_rng(2).uniform(0.3, 0.7, (n, *SHAPE))
    y = np.argmax(model.np_logits(x), 1)
    dtype = np.float64 if wide else np.float32
    with jax.enable_x64(wide):
        xj, yj = jnp.asarray(x, dtype), jnp.asarray(y)
        w, b = jnp.asarray(model.W, dtype), jnp.asarray(model.b, dtype)
        key = jax.random.key(3)
        if norm == "L1":
            x0 = geometry.project_l1(xj + jax.random.normal(key, xj.shape, dtype), xj, eps)
        else:
            x0 = geometry.sphere_start(key, xj, eps, norm)
        linear = lambda v: v.reshape(n, -1) @ w + b
        config = steps.ApgdConfig(norm=norm, loss=loss)
        grad_fn, wrong_fn = steps.objective(linear, linear, yj, None, config)
        eps_b, rho = jnp.full((n,), eps, dtype), jnp.asarray(0.75, dtype)
        is_check, window = (jnp.asarray(a) for a in steps.schedule(100, norm))

        @jax.jit
        def run(x0):  # the reference's attack_single_run from x0: init, then 100 steps
            state = steps.init_state(xj, x0, eps_b, key, grad_fn=grad_fn, wrong_fn=wrong_fn,
                                     norm=norm, sparsity_from_start=True)  # fmt: skip
            state = jax.lax.fori_loop(0, 100, lambda i, s: steps.step(
                i, s, xj, eps_b, rho, key, is_check[i], window[i], grad_fn=grad_fn,
                wrong_fn=wrong_fn, norm=norm), state)  # fmt: skip
            return state["x_best"], state["broken"], state["adv"]

        best, broken, adv = (np.asarray(a) for a in run(x0))
        x0 = np.asarray(x0)

    torch_dtype = torch.float64 if wide else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)  # the reference allocates its buffers in it
    try:
        wt, bt = torch.tensor(model.W, dtype=torch_dtype), torch.tensor(model.b, dtype=torch_dtype)
        attack = reference.APGDAttack(lambda v: v.reshape(n, -1) @ wt + bt, n_iter=100,
                                      norm=norm, eps=eps, loss=loss, device="cpu")  # fmt: skip
        xt = torch.tensor(x, dtype=torch_dtype)
        attack.init_hyperparam(xt)
        ref = attack.attack_single_run(xt, torch.tensor(y), x_init=torch.tensor(x0))
        ref_best, ref_acc, _, ref_adv = (t.detach().numpy() for t in ref)
    finally:
        torch.set_default_dtype(previous)

    np.testing.assert_array_equal(broken, ~ref_acc)
    assert 0 < broken.sum() < n  # a real mix of outcomes
    # (L2, checked once: the flat end of a run has best-loss ties to 1e-12 in loss, picked
    # among iterates 1e-7 apart; x_best agreed to 1e-6 and the flags exactly.)
    atol = {"Linf": 1e-12, "L1": 1e-5}[norm]
    np.testing.assert_allclose(best, ref_best, atol=atol)
    np.testing.assert_allclose(adv, ref_adv, atol=atol)


# ---------------------------------------------------------------- known answers


# Linf CE gets the same known answer in test_judge_decides_success_on_the_whole_batch and L1
# CE is compared with the reference above.
@pytest.mark.parametrize("norm,loss", [("Linf", "dlr"), ("L2", "ce"), ("L1", "dlr")])
def test_linear_model_breaks_exactly_the_points_within_eps(norm, loss):
    # L1: the box binds, accounted for
    x = apgd_batch(3) if norm != "L1" else apgd_batch(3, 0.0, 1.0)
    y = MODEL.labels(x)
    if norm == "L1":
        dmin = MODEL.min_perturbation(x, y, norm)
    else:  # x in [0.3, 0.7]: the minimal perturbations must fit in the box
        dmin, largest = MODEL.min_perturbation(x, y, norm, reach=True)
        assert np.all(largest < 0.3)
    eps, must_break = _gap_eps(dmin)
    res = apgd(MODEL, x, y, key=jax.random.key(0), norm=norm, eps=eps, loss=loss)
    np.testing.assert_array_equal(np.asarray(res.robust), ~must_break)
    _assert_valid(res, x, eps, norm)
    wrong = np.argmax(MODEL.np_logits(res.x_adv), 1) != np.asarray(y)
    np.testing.assert_array_equal(wrong, must_break)


def test_l1_largereps():
    x = apgd_batch(4, 0.0, 1.0)
    y = MODEL.labels(x)
    eps, must_break = _gap_eps(MODEL.min_perturbation(x, y, "L1"))
    res = apgd(MODEL, x, y, key=jax.random.key(1), norm="L1", eps=eps, use_largereps=True)
    np.testing.assert_array_equal(np.asarray(res.robust), ~must_break)
    _assert_valid(res, x, eps, "L1")  # the 3 eps and 2 eps stages never leak out


class Slab:
    """A ReLU MLP, 2 classes: z_0 = 0, z_1 = relu(s) + relu(-s) - t with s = w·x - c.
    Class 0 is the slab |s| < t: leaving it (or entering it) takes Linf distance
    | t - |s| | / ||w||_1, on either side: a non-convex decision region with a closed form."""

    def __init__(self, seed):
        rng = np.random.default_rng(seed)
        self.w = rng.normal(0, 1, int(np.prod(SHAPE)))
        self.c, self.t = self.w.sum() / 2, 0.25 * np.abs(self.w).sum() * 0.1
        self.hidden = jnp.asarray(np.stack([self.w, -self.w], 1), jnp.float32)
        self.bias = jnp.asarray([-self.c, self.c], jnp.float32)

    def __call__(self, x):
        h = jax.nn.relu(x.reshape(x.shape[0], -1) @ self.hidden + self.bias)
        z1 = h[:, 0] + h[:, 1] - self.t
        return jnp.stack([jnp.zeros_like(z1), z1], 1)

    def min_perturbation(self, x):
        s = np.asarray(x, np.float64).reshape(len(x), -1) @ self.w - self.c
        return np.abs(self.t - np.abs(s)) / np.abs(self.w).sum()


def test_relu_mlp_slab():
    model = Slab(5)
    x = apgd_batch(6, 0.4, 0.6, n=16)
    y = jnp.asarray(np.argmax(np.asarray(model(x)), 1), jnp.int32)
    assert 0 < int(y.sum()) < len(y)  # points inside and outside the slab
    dmin = model.min_perturbation(x)
    eps, must_break = _gap_eps(dmin)
    res = apgd(model, x, y, key=jax.random.key(2), eps=eps, n_iter=50)
    np.testing.assert_array_equal(np.asarray(res.robust), ~must_break)
    _assert_valid(res, x, eps, "Linf")


def test_apgd_targeted_linear_10_classes():
    x = apgd_batch(7)
    y = MODEL.labels(x)
    eps, must_break = _gap_eps(MODEL.min_perturbation(x, y, "Linf"))
    res = apgd_targeted(MODEL, x, y, key=jax.random.key(3), eps=eps)
    np.testing.assert_array_equal(np.asarray(res.robust), ~must_break)
    _assert_valid(res, x, eps, "Linf")


def test_apgd_targeted_takes_targets_by_clean_logit_rank():
    """4 classes: w_1 = w_3 = w_0 with lower biases, so classes 1 (ranked 2nd) and 3 (4th)
    can never overtake class 0; class 2 (ranked 3rd) can. Targeting only the 2nd class finds
    nothing (its loss even pushes z_2 down); two targets break every point.

    Why no CPU can change the answer: every fact it rests on holds in float64 with a margin
    of 0.5 logits, against float32 rounding of these 768-term dot products of ~1e-4. The
    ranks are 1, 1.5 and 5 logits below z_0; the box [0, 1] cannot bind (x in [0.3, 0.7],
    eps < 0.05), so the best Linf step, x + eps sign(w_2 - w_0) (the first APGD step from any
    start reaches it: step 2 eps, then the projection), makes z_2 - z_0 exactly +0.5, and the
    targeted DLR loss of class 2 is monotone in z_2 - z_0 while the ranks of z_1, z_3 stay.
    Targeting class 1: while z_2 < z_1 the ascent lowers z_2 - z_0; if a random start put z_2
    above z_1, the loss would be -(z_0 - z_1) / (z_0 - (z_1 + z_3) / 2) = -1/3 with a zero
    gradient, and sign steps on its rounding noise wander (on 48 dimensions they once walked a
    point up to class 2, on one CPU's kernels and not another's). A start of the Linf sphere
    moves z_2 - z_0 by ~N(0, 0.06^2) on 768 dimensions: 8 standard deviations short of the
    0.5 that reaches z_1, and the draw is a fixed threefry stream, the same bits on every CPU.
    """
    shape = (16, 16, 3)
    rng = np.random.default_rng(8)
    d = int(np.prod(shape))
    w0, w2 = rng.normal(0, 1, d), rng.normal(0, 1, d)
    W = jnp.asarray(np.stack([w0, w0, w2, w0], 1), jnp.float32)
    x = apgd_batch(9, n=8, shape=shape)
    base = np.asarray(x).reshape(8, -1) @ np.stack([w0, w2], 1)
    gap = base[:, 0] - base[:, 1]  # z_0 - z_2 before the bias of class 2
    b2 = gap - 1.5  # z_0 - z_2 = 1.5 for every point: ranked 3rd, between z_1 and z_3
    bias = jnp.asarray(np.stack([np.zeros(8), -np.ones(8), b2, -5 * np.ones(8)], 1), jnp.float32)
    model = lambda v: v.reshape(v.shape[0], -1) @ W + bias
    y = jnp.zeros(8, jnp.int32)
    ranks = np.argsort(-np.asarray(model(x)), 1)
    np.testing.assert_array_equal(ranks, np.tile([0, 1, 2, 3], (8, 1)))
    eps = 1.5 / np.abs(w0 - w2).sum() / 0.75
    z64 = lambda v: (
        np.asarray(v, np.float64).reshape(len(v), -1) @ np.stack([w0, w0, w2, w0], 1)
        + np.asarray(bias, np.float64)
    )
    z = z64(x)
    assert np.all(z[:, 0] - z[:, 1] > 0.99) and np.all(z[:, 1] - z[:, 2] > 0.49)
    assert np.all(z[:, 2] - z[:, 3] > 3.4) and eps < 0.05  # the box cannot bind
    best = z[:, 2] - z[:, 0] + eps * np.abs(w2 - w0).sum()
    np.testing.assert_allclose(best, 0.5, atol=1e-5)
    one = apgd_targeted(model, x, y, key=jax.random.key(4), eps=eps, n_target_classes=1)
    two = apgd_targeted(model, x, y, key=jax.random.key(4), eps=eps, n_target_classes=2)
    assert np.all(np.asarray(one.robust)) and not np.any(np.asarray(two.robust))
    z_two = z64(two.x_adv)
    assert np.all(z_two[:, 2] - z_two[:, 0] > 0.25)  # broken with a margin, by class 2
    assert np.all(np.argmax(z_two, 1) == 2)


# ---------------------------------------------------------------- the judge contract


def test_judge_decides_success_on_the_whole_batch():
    x = apgd_batch(10)
    y = MODEL.labels(x)
    dmin = MODEL.min_perturbation(x, y, "Linf")
    eps, must_break = _gap_eps(dmin)
    shielded = np.arange(B) < B // 2  # the judge never errs on the first half
    seen = []

    def judge(v):
        seen.append(v.shape)
        return MODEL(v) + 100.0 * jax.nn.one_hot(y, C) * jnp.asarray(shielded)[:, None]

    res = apgd(MODEL, x, y, key=jax.random.key(0), eps=eps, judge_fn=judge)
    np.testing.assert_array_equal(np.asarray(res.robust), shielded | ~must_break)
    assert seen and all(s == x.shape for s in seen)  # always the whole batch

    # A judge that is always wrong: every point is misclassified on x and comes back as x.
    res = apgd(MODEL, x, y, key=jax.random.key(0), eps=eps,
               judge_fn=lambda v: -100.0 * jax.nn.one_hot(y, C) + 0 * MODEL(v))  # fmt: skip
    assert not np.any(np.asarray(res.robust))
    np.testing.assert_array_equal(np.asarray(res.x_adv), np.asarray(x))


def test_useless_loss_with_a_correct_judge_only_finds_the_random_start():
    """logits_fn constant: zero gradient, so every iterate stays at the random start (on the
    Linf sphere). The judge (the real model) still decides: what breaks is truly broken,
    sits exactly at distance eps, and far fewer points break than with the real loss."""
    x = apgd_batch(11)
    y = MODEL.labels(x)
    dmin = MODEL.min_perturbation(x, y, "Linf")
    eps = float(np.median(dmin)) * 1.5
    useless = lambda v: jnp.zeros((v.shape[0], C)) + 0.0 * v.reshape(v.shape[0], -1)[:, :1]
    res = apgd(useless, x, y, key=jax.random.key(5), eps=eps, n_iter=20, judge_fn=MODEL)
    broken = ~np.asarray(res.robust)
    assert np.all(broken <= (dmin < eps))
    assert np.all(np.argmax(MODEL.np_logits(res.x_adv[broken]), 1) != np.asarray(y)[broken])
    np.testing.assert_allclose(_norms(res.x_adv - x, "Linf")[broken], eps, rtol=1e-5)
    real = apgd(MODEL, x, y, key=jax.random.key(5), eps=eps, n_iter=20)
    assert broken.sum() < (~np.asarray(real.robust)).sum() / 2


# ---------------------------------------------------------------- restarts, EOT, devices


def test_restarts_keep_earlier_breaks_and_only_add():
    """Linear models leave restarts nothing to find, so the judge here errs at random (2% of
    calls per point): each restart (fresh keys) adds breaks, and restart 0 is the same run
    whatever n_restarts, so its breaks and their x_adv must be kept."""
    x = apgd_batch(12)
    y = MODEL.labels(x)
    eps = float(np.median(MODEL.min_perturbation(x, y, "Linf"))) * 0.5
    onehot = jax.nn.one_hot(y, C)

    def judge(u, key):
        return MODEL(u) - 100.0 * onehot * (jax.random.uniform(key, (u.shape[0], 1)) < 0.02)

    # The judge reads its rows' labels by position: compact=False keeps every row in place.
    kw = dict(key=jax.random.key(6), eps=eps, n_iter=5, randomized=True, judge_fn=judge,
              compact=False)  # fmt: skip
    one = apgd(_ignore_key, x, y, n_restarts=1, **kw)
    three = apgd(_ignore_key, x, y, n_restarts=3, **kw)
    r1, r3 = np.asarray(one.robust), np.asarray(three.robust)
    assert np.all(r3 <= r1) and r3.sum() < r1.sum()
    np.testing.assert_array_equal(np.asarray(three.x_adv)[~r1], np.asarray(one.x_adv)[~r1])


def _ignore_key(u, key):
    return MODEL(u)


@pytest.mark.slow
def test_eot_averages_gradients_over_fresh_draws():
    """A randomized model whose gradient is drowned in noise: z_y gets a * (v·x) - a *
    stop_gradient(v·x) with a fresh a ~ N(0, 8^2) per call (logits unchanged, gradient
    noisy). One draw per step misses points; the mean of 20 fresh draws finds every one."""
    x = apgd_batch(13)
    y = MODEL.labels(x)
    eps, must_break = _gap_eps(MODEL.min_perturbation(x, y, "Linf"))
    v = jnp.asarray(np.random.default_rng(14).normal(0, 1, int(np.prod(SHAPE))), jnp.float32)
    onehot = jax.nn.one_hot(y, C)

    def noisy(u, key):
        a = 8.0 * jax.random.normal(key, (u.shape[0],))
        vx = u.reshape(u.shape[0], -1) @ v
        return MODEL(u) + (a * (vx - jax.lax.stop_gradient(vx)))[:, None] * onehot

    kw = dict(key=jax.random.key(7), eps=eps, randomized=True, judge_fn=_ignore_key, n_iter=50)
    eot = apgd(noisy, x, y, eot_iter=20, **kw)
    np.testing.assert_array_equal(np.asarray(eot.robust), ~must_break)
    single = apgd(noisy, x, y, eot_iter=1, **kw)
    assert np.asarray(single.robust)[must_break].sum() >= 3  # the noise does defeat one draw


@pytest.mark.slow
def test_one_and_four_devices_agree():
    x = apgd_batch(15)
    y = MODEL.labels(x)
    eps = float(np.median(MODEL.min_perturbation(x, y, "Linf")))
    kw = dict(key=jax.random.key(8), eps=eps, n_iter=20, n_restarts=2)
    single = apgd(MODEL, jax.device_put(x, jax.devices()[0]), y, **kw)
    sharding = data_sharding(make_mesh(take_devices(4)))
    sharded = apgd(MODEL, jax.device_put(x, sharding), jax.device_put(y, sharding), **kw)
    assert sharded.x_adv.sharding.is_equivalent_to(sharding, 4)
    np.testing.assert_array_equal(np.asarray(sharded.robust), np.asarray(single.robust))
    np.testing.assert_allclose(np.asarray(sharded.x_adv), np.asarray(single.x_adv), atol=1e-6)


def test_new_eps_values_do_not_recompile():
    x = apgd_batch(16)
    y = MODEL.labels(x)
    apgd(MODEL, x, y, key=jax.random.key(0), eps=0.01, n_iter=20)
    sizes = driver.compiled_programs()
    for eps in (0.02, 0.05, jnp.full((B,), 0.03)):
        apgd(MODEL, x, y, key=jax.random.key(0), eps=eps, n_iter=20)
    apgd(MODEL, x, y, key=jax.random.key(0), eps=0.02, n_iter=30)  # the schedule is traced too
    from_numpy = apgd(MODEL, np.asarray(x), np.asarray(y), key=jax.random.key(0), eps=0.02,
                      n_iter=30)  # fmt: skip
    assert driver.compiled_programs() == sizes
    again = apgd(MODEL, x, y, key=jax.random.key(0), eps=0.02, n_iter=30)
    np.testing.assert_array_equal(np.asarray(from_numpy.x_adv), np.asarray(again.x_adv))


@pytest.mark.parametrize("norm,kwargs", [("Linf", dict(n_restarts=2)),
                                         ("L1", dict(use_largereps=True))])  # fmt: skip
def test_lax_and_host_loops_agree(norm, kwargs):
    """The one-program run (GPU/TPU default) and the per-iteration host loop (CPU default)
    compute the same iterates: restarts, largereps stages and keys included."""
    x = apgd_batch(18, 0.0, 1.0)
    y = MODEL.labels(x)
    eps = float(np.median(MODEL.min_perturbation(x, y, norm))) * (1.0 if norm == "L1" else 0.8)
    kw = dict(key=jax.random.key(9), norm=norm, eps=eps, n_iter=12, **kwargs)
    lax_res, host = apgd(MODEL, x, y, loop="lax", **kw), apgd(MODEL, x, y, loop="host", **kw)
    np.testing.assert_array_equal(np.asarray(lax_res.robust), np.asarray(host.robust))
    assert 0 < np.asarray(host.robust).sum() < B
    np.testing.assert_allclose(np.asarray(lax_res.x_adv), np.asarray(host.x_adv), atol=1e-6)


# ---------------------------------------------------------------- errors


def test_clear_errors():
    x, y = apgd_batch(17, n=4), jnp.zeros(4, jnp.int32)
    key = jax.random.key(0)
    cases = [
        (dict(eps=0.0), "eps must be"),
        (dict(eps=-1.0), "eps must be"),
        (dict(eps=jnp.asarray([0.1, 0.1, 0.0, 0.1])), "eps must be"),
        (dict(eps=jnp.full((3,), 0.1)), "eps must be"),
        (dict(eps=0.1, norm="L3"), "norm must be"),
        (dict(eps=0.1, loss="hinge"), "loss must be"),
        (dict(eps=0.1, n_iter=0), "n_iter"),
        (dict(eps=0.1, rho=1.5), "rho"),
        (dict(eps=0.1, use_largereps=True), "use_largereps"),
        (dict(eps=0.1, loop="python"), "loop must be"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            apgd(MODEL, x, y, key=key, **kwargs)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        apgd(MODEL, x * 2, y, key=key, eps=0.1)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\]"):
        apgd(MODEL, x, y + 10, key=key, eps=0.1)
    three = lambda v: MODEL(v)[:, :3]
    with pytest.raises(ValueError, match="at least 4 classes"):
        apgd_targeted(three, x, y, key=key, eps=0.1)
    with pytest.raises(ValueError, match="at least 3 classes"):
        apgd(lambda v: MODEL(v)[:, :2], x, y, key=key, eps=0.1, loss="dlr")
    with pytest.raises(ValueError, match="n_target_classes"):
        apgd_targeted(MODEL, x, y, key=key, eps=0.1, n_target_classes=0)
