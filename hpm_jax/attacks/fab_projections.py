"""FAB's projection: the smallest step onto a linearised decision boundary inside [0, 1]^n.

    from hpm_jax.attacks.fab_projections import boundary_step
    # t: (B, n) points in [0, 1], w: (B, n) gradients of f, f: (B,) values of f at t
    d = boundary_step(t, w, f, "Linf")      # (B, n): f + w·d = 0, t + d in [0, 1]^n, ||d|| minimal

The linearisation of a classifier's margin f around t is f(t + d) ≈ f + w·d, so FAB steps to
the hyperplane {f + w·d = 0} intersected with the image box, by the minimum Linf, L2 or L1
step. Where the box makes the hyperplane unreachable, the step goes as far towards it as the
box allows (every coordinate with w_i != 0 to the face that lowers |f|), as the reference does.

All three norms are one water-filling problem. After flipping signs so that f >= 0, each
coordinate may move against w_i by an amount in [0, u_i], with u_i its room to the box face
in that direction, and the amounts must lower f by exactly c = |f|:
  Linf: amount_i = min(lam, u_i)         sum_i |w_i| amount_i = c, lam = ||d||_inf
  L2:   amount_i = min(lam |w_i|, u_i)   (the KKT solution, lam the Lagrange multiplier)
  L1:   fill the coordinates in decreasing |w_i| (the cheapest per unit of f) one by one.
For Linf and L2 the left-hand side is piecewise linear and increasing in lam with kinks at
the sorted breakpoints, so one sort, two cumulative sums and a count locate lam exactly:
no bisection loop, vectorised over the batch.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

PROJECTION_NORMS = ("Linf", "L2", "L1")


def _water_level(breaks: jax.Array, slope: jax.Array, cap: jax.Array, c: jax.Array) -> jax.Array:
    """The lam >= 0 solving G(lam) = c for G(lam) = sum_{breaks_i <= lam} cap_i +
    lam * sum_{breaks_i > lam} slope_i, row by row; +inf where even G(max breaks) < c
    (infeasible: everything moves to its face). breaks may hold +inf where slope is 0."""
    order = jnp.argsort(breaks, axis=1)
    b = jnp.take_along_axis(breaks, order, axis=1)
    s = jnp.take_along_axis(slope, order, axis=1)
    q = jnp.take_along_axis(cap, order, axis=1)
    capped = jnp.cumsum(q, axis=1) - q  # sum of caps strictly before position k
    # Suffix sums computed directly (not total - prefix) so small tails keep their precision.
    free = jnp.flip(jnp.cumsum(jnp.flip(s, axis=1), axis=1), axis=1)
    # G at each breakpoint; an infinite breakpoint only has zero slope behind it (no NaN).
    g_at_breaks = capped + jnp.where(free > 0, b * free, 0.0)
    k = jnp.sum(g_at_breaks < c[:, None], axis=1)  # G is monotone: the first kink with G >= c
    kk = jnp.minimum(k, b.shape[1] - 1)[:, None]
    a_k = jnp.take_along_axis(capped, kk, axis=1)[:, 0]
    s_k = jnp.take_along_axis(free, kk, axis=1)[:, 0]
    lam = jnp.where(s_k > 0, (c - a_k) / jnp.where(s_k > 0, s_k, 1.0), 0.0)
    lam = jnp.maximum(lam, 0.0)
    return jnp.where(k >= b.shape[1], jnp.inf, lam)


def _l1_amounts(aw: jax.Array, room: jax.Array, c: jax.Array) -> jax.Array:
    """Greedy L1 filling: in decreasing |w|, each coordinate takes what the demand left by the
    previous ones needs, clipped to its room; this is the LP optimum (a vertex with at most one
    coordinate strictly inside its range)."""
    order = jnp.argsort(-aw, axis=1)
    a = jnp.take_along_axis(aw, order, axis=1)
    r = jnp.take_along_axis(room, order, axis=1)
    q = a * r
    before = jnp.cumsum(q, axis=1) - q
    need = c[:, None] - before
    amount = jnp.where(a > 0, jnp.clip(need / jnp.where(a > 0, a, 1.0), 0.0, r), 0.0)
    rows = jnp.arange(aw.shape[0])[:, None]
    return jnp.zeros_like(amount).at[rows, order].set(amount)


def boundary_step(t: jax.Array, w: jax.Array, f: jax.Array, norm: str) -> jax.Array:
    """Minimum-norm d with f + w·d = 0 and t + d in [0, 1]^n, per row.

    t: (B, n) points in [0, 1]; w: (B, n) normals; f: (B,) the affine function's value at t
    (the hyperplane {z : w·z = b} has f = w·t - b). Returns d: (B, n). Coordinates with
    w_i = 0 never move. Where the box cannot reach the hyperplane, d moves every coordinate
    with w_i != 0 to the face that brings f closest to 0.
    """
    chex.assert_rank([t, w, f], [2, 2, 1])
    chex.assert_equal_shape([t, w])
    chex.assert_equal_shape_prefix([t, f], 1)
    if norm not in PROJECTION_NORMS:
        raise ValueError(f"norm must be one of {PROJECTION_NORMS}, got {norm!r}.")
    # Flip so that f >= 0: then every coordinate moves against sign(w) to lower f by c.
    sign = jnp.where(f >= 0, 1.0, -1.0).astype(t.dtype)
    ws = w * sign[:, None]
    c = f * sign
    aw = jnp.abs(ws)
    direction = -jnp.sign(ws)
    room = jnp.where(ws > 0, t, 1.0 - t)  # distance to the face that lowers f
    room = jnp.where(aw > 0, jnp.maximum(room, 0.0), 0.0)
    if norm == "Linf":
        lam = _water_level(room, aw, aw * room, c)
        amount = jnp.minimum(lam[:, None], room)
    elif norm == "L2":
        breaks = jnp.where(aw > 0, room / jnp.where(aw > 0, aw, 1.0), jnp.inf)
        lam = _water_level(breaks, aw * aw, aw * room, c)
        amount = jnp.minimum(lam[:, None] * aw, room)
    else:
        amount = _l1_amounts(aw, room, c)
    return jnp.where(aw > 0, direction * amount, 0.0)
