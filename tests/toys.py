"""Toy models and data shared by the attack tests (APGD, FAB, Square and the AutoAttack chain),
with known answers; a support module, not a test module, so that no test module imports
another::

    from toys import MLP, closed_form, fab_linear_ratio, linear_problem, norms
    from toys import SQUARE_Q, SQUARE_X_LINF, SQUARE_Y_LINF, square_linear
    from toys import APGD_MODEL, apgd_batch
    from toys import assert_same_report, chain_data, resume_chain, run_chain, shift_chain
    from toys import conv_net                   # a tiny ReLU conv net (pytree logits function)

Every array is built at import from fixed seeds, in a fixed order (the Square pool and batches
draw from one generator), so every importer sees the same values.
"""

import collections
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from hpm_jax.attacks import AttackSpec, AutoAttack, geometry, losses, types

# ---------------------------------------------------------------- FAB: linear models and an MLP

ORD = {"Linf": np.inf, "L2": 2, "L1": 1}
DUAL = {"Linf": 1, "L2": 2, "L1": np.inf}  # min ||d||_p with w·d = m is m / ||w||_dual


def norms(v, norm):
    """The per-row `norm` of v, in float64."""
    v = np.asarray(v, np.float64)
    return np.linalg.norm(v.reshape(v.shape[0], -1), ord=ORD[norm], axis=1)


def fab_linear_ratio(eta=1.05, beta=0.9, alpha_max=0.1, n_iter=100):
    """What FAB converges to on a linear model, in units of the minimal perturbation: every
    iterate stays on the ray from x through its projection, so the reference's update reduces
    to this scalar recursion (the reference itself returns 1.00521x, checked against it)."""
    s, best = 0.0, np.inf
    for _ in range(n_iter):
        d1, d2 = 1.0 - s, 1.0
        alpha = min(max(d1 / (d1 + d2), 0.0), alpha_max)
        s = (s + eta * d1) * (1 - alpha) + eta * alpha
        if s > 1:
            best, s = min(best, s), beta * s
    return best


def linear_problem(seed, d=12, c=5, scale=0.1):
    """(w, b, model): a linear model on d inputs with c classes, model(x) = x w + b."""
    rng = np.random.default_rng(seed)
    w = jnp.asarray(rng.normal(size=(d, c)) * scale, jnp.float32)
    b = jnp.asarray(rng.normal(size=c) * 0.02, jnp.float32)
    return w, b, (lambda x: x.reshape(x.shape[0], -1) @ w + b)


def closed_form(w, b, x, y, norm):
    """(B, C): m_t / ||w_y - w_t||_dual for every class t (inf for t = y)."""
    w, x, y = (
        np.asarray(w, np.float64),
        np.asarray(x, np.float64).reshape(len(y), -1),
        np.asarray(y),
    )
    z = x @ w + np.asarray(b, np.float64)
    out = np.full(z.shape, np.inf)
    for i, t in itertools.product(range(len(y)), range(w.shape[1])):
        if t != y[i]:
            dw = w[:, y[i]] - w[:, t]
            out[i, t] = (z[i, y[i]] - z[i, t]) / np.linalg.norm(dw, DUAL[norm])
    return out, z


def mlp_params(seed, hidden=16, classes=3):
    """The float64 weights and biases of relu_mlp(seed), as numpy arrays."""
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(2, hidden)) * 3,
        rng.normal(size=hidden),
        rng.normal(size=(hidden, hidden)) / 4,
        rng.normal(size=hidden) * 0.5,
        rng.normal(size=(hidden, classes)),
        rng.normal(size=classes) * 0.1,
    ]


def relu_mlp(seed):
    """A ReLU MLP on 1 x 2 pixel images with 3 classes."""
    p = [jnp.asarray(a, jnp.float32) for a in mlp_params(seed)]

    def mlp(x):
        h = x.reshape(x.shape[0], -1)
        h = jax.nn.relu(h @ p[0] + p[1])
        h = jax.nn.relu(h @ p[2] + p[3])
        return h @ p[4] + p[5]

    return mlp


# One function object: compiled once per shape and configuration across the tests.
MLP = relu_mlp(3)  # three classes in the box; FAB, as the reference, stops at local minima

# ---------------------------------------------------------------- a tiny convolutional net

CONV_KERNEL = 3  # every layer's kernel side


def _conv_logits(params, x):
    """Two 3x3 ReLU convolutions (the second with stride 2) and a dense layer; NHWC in [0, 1]."""
    h = x - 0.5
    for i, stride in enumerate((1, 2)):
        h = jax.lax.conv_general_dilated(h, params[f"conv{i}"], (stride, stride), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
        h = jax.nn.relu(h + params[f"bias{i}"])
    return h.reshape(h.shape[0], -1) @ params["dense"] + params["bias"]


def _randomized_conv_logits(params, x, key):
    return _conv_logits(params, x + 0.02 * jax.random.normal(key, x.shape, x.dtype))


def conv_net(seed=0, *, channels=(4, 8), classes=10, size=8, in_channels=3, randomized=False,
             jitter=0.0):  # fmt: skip
    """A tiny ReLU conv net as a pytree logits function (its weights traced by the attacks).
    Its last bias centres the logits of uniform random images, so every class is predicted
    somewhere. randomized: f(x, key), Gaussian input noise (sigma 0.02). jitter: the weights
    of net `seed` times (1 + jitter * N(0, 1)): a second model that mostly agrees with it."""
    rng = np.random.default_rng(seed)
    params, c_in = {}, in_channels
    for i, c_out in enumerate(channels):
        fan_in = CONV_KERNEL * CONV_KERNEL * c_in
        shape = (CONV_KERNEL, CONV_KERNEL, c_in, c_out)
        params[f"conv{i}"] = rng.normal(size=shape) * 2 / np.sqrt(fan_in)
        params[f"bias{i}"] = rng.normal(size=c_out) * 0.1
        c_in = c_out
    features = c_in * (size // 2) ** 2
    params["dense"] = rng.normal(size=(features, classes)) * 3 / np.sqrt(features)
    params["bias"] = np.zeros(classes)
    if jitter:
        noise = np.random.default_rng(seed + 1000)
        params = {k: v * (1 + jitter * noise.normal(size=v.shape)) for k, v in params.items()}
    params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
    pool = jnp.asarray(rng.uniform(0, 1, (256, size, size, in_channels)), jnp.float32)
    params["bias"] = -jnp.mean(_conv_logits(params, pool), axis=0)
    fn = _randomized_conv_logits if randomized else _conv_logits
    return jax.tree_util.Partial(fn, params)


# ---------------------------------------------------------------- Square: a linear model on images

SQUARE_H = SQUARE_W = 8
SQUARE_C, SQUARE_K, SQUARE_B = 3, 4, 16
SQUARE_Q = 60  # queries per test run: enough for the linear model's breakable points (<= ~40)

# A linear model whose class differences keep one sign per channel across pixels, so that
# squares of one sign per channel make progress (the minimal perturbations are known exactly).
_square_rng = np.random.default_rng(0)
SQUARE_WEIGHTS = (
    _square_rng.uniform(0.5, 1.5, (SQUARE_H, SQUARE_W))[:, :, None, None]
    * _square_rng.normal(size=(SQUARE_K, SQUARE_C)).T
)
_SQUARE_W32 = jnp.asarray(SQUARE_WEIGHTS, jnp.float32)


def square_linear(x):
    """The logits of the Square tests' linear model on (B, H, W, C) images."""
    return jnp.einsum("bhwc,hwck->bk", x, _SQUARE_W32)


def square_min_ratio(x, y, eps, norm):
    """Per sample: the smallest perturbation (Linf or L2) that makes another class win, over
    eps, in float64. A vertex delta = -eps * sign(w_y - w_c) lowers z_y - z_c by exactly
    eps * ||w_y - w_c||_1 (Linf); no L2 (L1) delta of norm eps lowers it by more than
    eps * ||w_y - w_c||_2 (eps * ||w_y - w_c||_inf)."""
    w = SQUARE_WEIGHTS.reshape(-1, SQUARE_K)
    z = np.asarray(x, np.float64).reshape(len(x), -1) @ w
    dual = {"Linf": 1, "L2": 2, "L1": np.inf}[norm]
    out = []
    for zi, yi in zip(z, np.asarray(y), strict=True):
        out.append(
            min(
                (zi[yi] - zi[c]) / (eps * np.linalg.norm(w[:, yi] - w[:, c], dual))
                for c in range(SQUARE_K)
                if c != yi
            )
        )
    return np.asarray(out)


def _square_pool(n=400):
    x = _square_rng.uniform(0.2, 0.8, (n, SQUARE_H, SQUARE_W, SQUARE_C)).astype(np.float32)
    y = np.asarray(jnp.argmax(square_linear(jnp.asarray(x)), axis=1))
    return x, y


def _square_pick(r, low, high):
    """8 points with r < low and 8 with r > high, in that order."""
    lo, hi = np.flatnonzero(r < low), np.flatnonzero(r > high)
    assert len(lo) >= 8 and len(hi) >= 8, (len(lo), len(hi))
    return np.concatenate([lo[:8], hi[:8]])


_POOL_X, _POOL_Y = _square_pool()
# Linf: at eps 0.05 the first 8 need < 0.5 eps; the last 8 need > 0.55 * 0.05 / 0.015 > 1.8 eps
# at eps 0.015.
_LINF_IDX = _square_pick(square_min_ratio(_POOL_X, _POOL_Y, 0.05, "Linf"), 0.5, 0.55)
SQUARE_X_LINF, SQUARE_Y_LINF = jnp.asarray(_POOL_X[_LINF_IDX]), jnp.asarray(_POOL_Y[_LINF_IDX])
# L2: at eps 0.5 the first 8 need < 0.1 eps; the last 8 need > 0.7 * 0.5 / 0.3 > 1.1 eps at 0.3.
_L2_IDX = _square_pick(square_min_ratio(_POOL_X, _POOL_Y, 0.5, "L2"), 0.1, 0.7)
SQUARE_X_L2, SQUARE_Y_L2 = jnp.asarray(_POOL_X[_L2_IDX]), jnp.asarray(_POOL_Y[_L2_IDX])
# L1: at eps 2 the first 8 need < 0.1 eps; the last 8 need > 0.7 * 2 / 1.2 > 1.1 eps at 1.2.
_L1_IDX = _square_pick(square_min_ratio(_POOL_X, _POOL_Y, 2.0, "L1"), 0.1, 0.7)
SQUARE_X_L1, SQUARE_Y_L1 = jnp.asarray(_POOL_X[_L1_IDX]), jnp.asarray(_POOL_Y[_L1_IDX])
# Images over the whole box, with exact 0 and 1 pixels, so that clipping is exercised.
SQUARE_X_BOX = jnp.asarray(
    np.clip(
        _square_rng.uniform(-0.2, 1.2, (SQUARE_B, SQUARE_H, SQUARE_W, SQUARE_C)), 0.0, 1.0
    ).astype(np.float32)
)
SQUARE_Y_BOX = jnp.argmax(square_linear(SQUARE_X_BOX), axis=1)


def square_margins(x, y):
    """The margin loss of square_linear at (x, y), as numpy."""
    return np.asarray(losses.margin(square_linear(x), y))


# ---------------------------------------------------------------- APGD: a linear model on images

APGD_SHAPE = (4, 4, 3)
APGD_B, APGD_C = 32, 10


class ApgdLinear:
    """z = flatten(x) @ W + b on APGD_SHAPE images, with float64 NumPy copies for the closed
    forms. One instance (APGD_MODEL) shared by the tests reuses the jit cache: the model is a
    static argument hashed by identity."""

    def __init__(self, seed, n_classes=APGD_C, scale=1.0):
        rng = np.random.default_rng(seed)
        d = int(np.prod(APGD_SHAPE))
        self.W = rng.normal(0, scale, (d, n_classes))
        self.b = rng.normal(0, 0.1, n_classes)
        self.Wj, self.bj = jnp.asarray(self.W, jnp.float32), jnp.asarray(self.b, jnp.float32)

    def __call__(self, x):
        return x.reshape(x.shape[0], -1) @ self.Wj + self.bj

    def np_logits(self, x):
        return np.asarray(x, np.float64).reshape(len(x), -1) @ self.W + self.b

    def labels(self, x):
        return jnp.asarray(np.argmax(self.np_logits(x), 1), jnp.int32)

    def min_perturbation(self, x, y, norm, reach=False):
        """Closed form without the box: min over c != y of m_c / ||w_y - w_c||_dual (Linf,
        L2); for L1 with the box, the fractional knapsack: spend the budget on the
        coordinates of largest |w_y - w_c| first, each up to its room in the helpful
        direction (the exact LP optimum). reach=True (Linf, L2) also returns the largest
        coordinate of that minimal perturbation: where it is below the distance of x to the
        box faces, the box does not bind."""
        z, y = self.np_logits(x), np.asarray(y)
        xf = np.asarray(x, np.float64).reshape(len(x), -1)
        best, largest = np.full(len(y), np.inf), np.zeros(len(y))
        for i, yi in enumerate(y):
            for c in range(self.W.shape[1]):
                if c == yi:
                    continue
                margin, dw = z[i, yi] - z[i, c], self.W[:, yi] - self.W[:, c]
                if norm != "L1":
                    size = margin / np.linalg.norm(dw, DUAL[norm])
                    if size < best[i]:  # the L2 optimum is size * dw / ||dw||_2
                        best[i] = size
                        largest[i] = size * (1 if norm == "Linf" else np.abs(dw).max()
                                             / np.linalg.norm(dw))  # fmt: skip
                    continue
                room = np.where(dw > 0, xf[i], 1 - xf[i])  # decreasing dw·x moves x against dw
                cost = 0.0
                for j in np.argsort(-np.abs(dw)):
                    use = min(room[j], margin / abs(dw[j]))
                    cost, margin = cost + use, margin - use * abs(dw[j])
                    if margin <= 1e-12:
                        best[i] = min(best[i], cost)
                        break
        return (best, largest) if reach else best


APGD_MODEL = ApgdLinear(0)


def apgd_batch(seed, lo=0.3, hi=0.7, n=APGD_B, shape=APGD_SHAPE):
    """n images of `shape`, uniform in [lo, hi) from `seed`."""
    return jnp.asarray(np.random.default_rng(seed).uniform(lo, hi, (n, *shape)), jnp.float32)


# ---------------------------------------------------------------- AutoAttack chain: shift attacks
# Attacks of known outcome (x_adv = x - frac * eps) against a model that thresholds the mean
# intensity: every flag and image of a chain's report can be predicted exactly.

CHAIN_EPS = 0.1
CHAIN_SIZES = (8, 4)


def mean_model(x):
    """Class 0 where the mean intensity exceeds 0.5, else class 1."""
    t = x.reshape(x.shape[0], -1).mean(1)
    return 10.0 * jnp.stack([t - 0.5, 0.5 - t], axis=1)


CHAIN_TRACES = collections.Counter()  # (frac, noise, bucket size) -> times traced
CHAIN_SPY: list | None = None  # when a list, shift_attack appends (frac, bucket images)
CHAIN_FAIL_AT: dict = {}  # {"frac": f, "call": k}: raise on the k-th call with that frac


class ChainInterrupt(Exception):
    """Raised by shift_attack where CHAIN_FAIL_AT says."""


@functools.partial(jax.jit, static_argnames=("logits_fn", "judge_fn", "frac", "noise"))
def shift_step(logits_fn, x, y, key, eps, *, judge_fn, frac, noise):
    CHAIN_TRACES[(frac, noise, x.shape[0])] += 1  # runs only while tracing: counts compilations
    step = frac * eps
    if noise:  # a random step per point: the outcome depends on the key and the layout
        step = step * jax.random.uniform(key, (x.shape[0], 1, 1, 1))
    x_adv = jnp.clip(x - step, 0.0, 1.0)
    judge = logits_fn if judge_fn is None else judge_fn
    robust = losses.correct(judge(x), y) & losses.correct(judge(x_adv), y)
    return types.AttackResult(jnp.where(geometry.expand(robust, x), x, x_adv), robust)


def shift_attack(logits_fn, x, y, *, key, norm, eps, judge_fn=None, frac=1.0, noise=False):
    """Follows the attack contract: x_adv = x - frac * eps (times a uniform draw if noise)."""
    assert norm == "Linf"
    if CHAIN_FAIL_AT.get("frac") == frac:
        CHAIN_FAIL_AT["call"] -= 1
        if CHAIN_FAIL_AT["call"] == 0:
            raise ChainInterrupt("interrupted inside an attack")
    if CHAIN_SPY is not None:
        CHAIN_SPY.append((frac, np.asarray(x)))
    return shift_step(logits_fn, x, y, key, eps, judge_fn=judge_fn, frac=frac, noise=noise)


CHAIN_FRACS = (0.3, 0.6, 1.0)


def shift_chain(noise=False, fracs=CHAIN_FRACS):
    """The chain of shift attacks, one per frac."""
    return [
        AttackSpec(f"shift-{i}", shift_attack, {"frac": f, "noise": noise})
        for i, f in enumerate(fracs)
    ]


def chain_data(n, seed=0):
    """Images of constant intensity t (plus a zero-mean id pattern, so every image is unique),
    labels mostly 0 where t > 0.5; a few wrong labels (clean errors) and class-1 points."""
    rng = np.random.default_rng(seed)
    u = 0.05 + 0.1 * rng.integers(0, 15, n)  # distance above 0.5 in units of eps
    t = 0.5 + CHAIN_EPS * u
    y = np.zeros(n, np.int32)
    y[rng.random(n) < 0.1] = 1  # clean errors: t > 0.5 predicts 0
    below = rng.random(n) < 0.15  # class-1 points below 0.5: moving down never breaks them
    t[below], y[below] = 0.5 - CHAIN_EPS * u[below], 1
    x = np.repeat(t[:, None], 4, axis=1)
    ids = 1e-4 * np.arange(n)
    x[:, 0] += ids
    x[:, 1] -= ids
    return x.reshape(n, 2, 2, 1).astype(np.float32), y, t


def chain_ids(images, x):
    """Dataset indices of a batch of (possibly shifted) images, from their id pattern."""
    d = images.reshape(len(images), -1)
    ids = np.rint((d[:, 0] - d[:, 1]) / 2e-4).astype(int)
    np.testing.assert_allclose(x.reshape(len(x), -1)[ids, 0] - x.reshape(len(x), -1)[ids, 1],
                               d[:, 0] - d[:, 1], atol=1e-5)  # fmt: skip
    return ids


def run_chain(x, y, *, chain=None, log=None, mesh=None, state_path=None, **kw):
    """AutoAttack of mean_model with `chain` (default shift_chain()) at CHAIN_EPS."""
    batch_size = kw.pop("batch_size", 8)
    aa = AutoAttack(
        mean_model,
        eps=CHAIN_EPS,
        version=chain or shift_chain(),
        bucket_sizes=kw.pop("bucket_sizes", CHAIN_SIZES),
        mesh=mesh,
        log=log,
        run_checks=kw.pop("run_checks", False),
        **kw,
    )
    return aa.run(x, y, batch_size=batch_size, state_path=state_path)


def assert_same_report(a, b):
    """Two AutoAttack reports agree on every flag, image and accuracy."""
    np.testing.assert_array_equal(a.robust, b.robust)
    np.testing.assert_array_equal(a.x_adv, b.x_adv)
    assert a.robust_accuracy_after == b.robust_accuracy_after
    assert (a.clean_accuracy, a.robust_accuracy) == (b.clean_accuracy, b.robust_accuracy)


def resume_chain(state_path=None, on_progress=None, log=None):
    """The noisy chain on 45 points, seed 7: the run that the resume tests kill and resume."""
    x, y, _ = chain_data(45, seed=1)
    return run_chain(
        x, y, chain=shift_chain(noise=True), state_path=state_path, on_progress=on_progress,
        log=log, seed=7,
    )  # fmt: skip
