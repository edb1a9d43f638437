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
For Linf and L2, G(lam) = sum_i min(lam s_i, cap_i) is piecewise linear and increasing; for
L1 the filled set is {|w_i| > tau} for a threshold tau. Both are found by `N_STEPS` bisection
steps (each a compare-and-sum over the row; no sort, which dominates on XLA:CPU for
image-sized rows), then solved exactly on the bracket: lam by linear interpolation, the L1
coordinate(s) at the threshold filled in index order. Vectorised over the batch.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

PROJECTION_NORMS = ("Linf", "L2", "L1")
# Bisection steps: the bracket shrinks to 2^-30 of its width, below float32 resolution, so
# the exact solve on it sees a single linear piece (or exact ties).
N_STEPS = 30


def _bisect(pred, lo: jax.Array, hi: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(lo, hi), (B, 1) each, with pred(lo) true and pred(hi) false kept as invariants."""

    def step(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        ok = pred(mid)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    return jax.lax.fori_loop(0, N_STEPS, step, (lo, hi))


def _water_level(slope: jax.Array, cap: jax.Array, c: jax.Array) -> jax.Array:
    """The lam >= 0 solving G(lam) = sum_i min(lam slope_i, cap_i) = c, row by row; +inf where
    even G(inf) = sum cap < c (infeasible: everything moves to its face)."""
    c = c[:, None]
    breaks = jnp.where(slope > 0, cap / jnp.where(slope > 0, slope, 1.0), 0.0)

    def below(lam):  # G(lam) < c
        return jnp.sum(jnp.minimum(lam * slope, cap), axis=1, keepdims=True) < c

    lo, hi = _bisect(below, jnp.zeros_like(c), jnp.max(breaks, axis=1, keepdims=True))
    # On [lo, hi] the coordinates with breaks > lo grow at their slope, the others are capped.
    free = breaks > lo
    capped = jnp.sum(jnp.where(free, 0.0, cap), axis=1, keepdims=True)
    rate = jnp.sum(jnp.where(free, slope, 0.0), axis=1, keepdims=True)
    lam = jnp.clip((c - capped) / jnp.where(rate > 0, rate, 1.0), lo, hi)
    feasible = jnp.sum(cap, axis=1, keepdims=True) >= c
    return jnp.where(feasible, jnp.maximum(lam, 0.0), jnp.inf)[:, 0]


def _l1_amounts(aw: jax.Array, room: jax.Array, c: jax.Array) -> jax.Array:
    """Greedy L1 filling, the LP optimum: in decreasing |w| each coordinate takes what the
    demand left by the previous ones needs, clipped to its room. The coordinates above the
    threshold tau (where the filled mass reaches c) move fully, those at tau (one, or exact
    ties, taken in index order) share the rest, those below stay."""
    c = c[:, None]
    q = aw * room  # what each coordinate can lower f by

    def short(tau):  # the coordinates above tau cannot lower f by c alone
        return jnp.sum(jnp.where(aw > tau, q, 0.0), axis=1, keepdims=True) < c

    top = jnp.max(aw, axis=1, keepdims=True)
    lo, hi = _bisect(lambda tau: ~short(tau), jnp.zeros_like(c), top)
    full = aw > hi
    rest = c - jnp.sum(jnp.where(full, q, 0.0), axis=1, keepdims=True)
    group = (aw > lo) & ~full
    q_group = jnp.where(group, q, 0.0)
    need = rest - (jnp.cumsum(q_group, axis=1) - q_group)
    partial = jnp.clip(need / jnp.where(aw > 0, aw, 1.0), 0.0, room)
    amount = jnp.where(full, room, jnp.where(group, partial, 0.0))
    infeasible = jnp.sum(q, axis=1, keepdims=True) < c
    return jnp.where(infeasible | (c <= 0), jnp.where(c > 0, room, 0.0), amount)


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
        lam = _water_level(aw, aw * room, c)
        amount = jnp.minimum(lam[:, None], room)
    elif norm == "L2":
        lam = _water_level(aw * aw, aw * room, c)
        amount = jnp.minimum(lam[:, None] * aw, room)
    else:
        amount = _l1_amounts(aw, room, c)
    return jnp.where(aw > 0, direction * amount, 0.0)
