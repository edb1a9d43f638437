"""Toy models and data shared by the attack tests (FAB and Square), with known answers; a
support module, not a test module, so that no test module imports another::

    from toys import MLP, closed_form, fab_linear_ratio, linear_problem, norms
    from toys import SQUARE_Q, SQUARE_X_LINF, SQUARE_Y_LINF, square_linear

Every array is built at import from fixed seeds, in a fixed order (the Square pool and batches
draw from one generator), so every importer sees the same values.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from hpm_jax.attacks import losses

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
