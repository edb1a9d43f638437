"""L1 geometry of APGD-L1: the exact projection onto the L1 ball intersected with the box, and
the sparse gradient step of Croce & Hein ("Mind the box", 2021).

    from hpm_jax.attacks import l1
    x1 = l1.project(x_adv, x, eps)               # nearest point of the L1 ball ∩ [0, 1]^d
    x1 = l1.project_bisect(x_adv, x, eps)        # the same, without a sort (faster on CPU)
    direction = l1.sparse_direction(grad, topk)  # signs of the top-k fraction of |grad|, unit L1
    n_nonzero = l1.l0_norm(x_best - x)           # (B,) how many coordinates moved

All functions are jittable, work per sample on (B, ...) batches, and take `eps` / `topk` as a
scalar or per-sample (B,) array.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hpm_jax.attacks import common


def project(x_adv: jax.Array, x: jax.Array, eps: jax.Array | float) -> jax.Array:
    """Euclidean projection of x_adv onto {p : ||p - x||_1 <= eps, 0 <= p <= 1} (x in [0, 1]).

    With y = x_adv - x, the optimum is p = x + sign(y) * clip(|y| - lam, 0, room), where
    room is the distance to the box in the direction of y and lam >= 0 the multiplier of the
    L1 constraint (KKT of a separable problem). g(lam) = sum clip(|y| - lam, 0, room) is
    piecewise linear and decreasing, with breakpoints |y| - room (a coordinate stops being
    held by the box) and |y| (it reaches zero): sorting the 2d breakpoints gives g at each
    one by a cumulative sum, and lam is interpolated on the segment where g crosses eps.
    Same problem as the reference's `L1_projection`, solved without its bisection.
    """
    batch = x.shape[0]
    eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (batch,))
    xc = x.reshape(batch, -1)
    y = x_adv.reshape(batch, -1) - xc
    a = jnp.abs(y)
    room = jnp.where(y >= 0, 1.0 - xc, xc)
    in_box = jnp.minimum(a, room)  # lam = 0: only the box binds

    breaks = jnp.concatenate([a - room, a], axis=1)
    # Crossing |y| - room a coordinate joins the set that shrinks with lam; crossing |y| leaves.
    joins = jnp.concatenate([jnp.ones_like(a), -jnp.ones_like(a)], axis=1)
    breaks, joins = jax.lax.sort((breaks, joins), dimension=1, num_keys=1)
    active = jnp.cumsum(joins, axis=1)  # number of shrinking coordinates after each breakpoint
    drop = active[:, :-1] * jnp.diff(breaks, axis=1)
    total_room = jnp.sum(room, axis=1, keepdims=True)  # g below the smallest breakpoint
    g = total_room - jnp.concatenate([jnp.zeros((batch, 1), x.dtype), jnp.cumsum(drop, 1)], 1)

    # The last breakpoint with g >= eps starts the segment where g crosses eps.
    j = jnp.maximum(jnp.sum(g >= eps[:, None], axis=1) - 1, 0)[:, None]
    g_j = jnp.take_along_axis(g, j, axis=1)[:, 0]
    b_j = jnp.take_along_axis(breaks, j, axis=1)[:, 0]
    n_j = jnp.maximum(jnp.take_along_axis(active, j, axis=1)[:, 0], 1.0)
    lam = jnp.maximum(b_j + (g_j - eps) / n_j, 0.0)

    needs_ball = jnp.sum(in_box, axis=1) > eps
    magnitude = jnp.where(needs_ball[:, None], jnp.clip(a - lam[:, None], 0.0, room), in_box)
    return (xc + jnp.sign(y) * magnitude).reshape(x.shape)


def project_bisect(
    x_adv: jax.Array, x: jax.Array, eps: jax.Array | float, n_steps: int = 40
) -> jax.Array:
    """The projection of `project`, with its multiplier found without sorting: `n_steps`
    bisection steps on lam (each one clip-and-sum over the image), then the exact lam by
    linear interpolation on the bracket, where g is linear unless a breakpoint lies closer
    than max|y| / 2^n_steps to the solution (far below float32 resolution at the default 40).
    Same answer as `project` up to float rounding; several times faster on XLA:CPU, whose sort
    dominates `project` for image-sized rows (Square L1 projects every proposal).
    """
    batch = x.shape[0]
    eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (batch,))[:, None]
    xc = x.reshape(batch, -1)
    y = x_adv.reshape(batch, -1) - xc
    a = jnp.abs(y)
    room = jnp.where(y >= 0, 1.0 - xc, xc)

    def g(lam):  # (B, 1) -> (B, 1): the L1 norm after shrinking by lam, decreasing in lam
        return jnp.sum(jnp.clip(a - lam, 0.0, room), axis=1, keepdims=True)

    def step(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        above = g(mid) > eps
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    zero = jnp.zeros((batch, 1), x.dtype)
    lo, hi = jax.lax.fori_loop(0, n_steps, step, (zero, jnp.max(a, axis=1, keepdims=True)))
    # On [lo, hi] g falls by one per unit of lam for each coordinate strictly inside its range.
    mid = 0.5 * (lo + hi)
    shrinking = jnp.sum((a - mid > 0) & (a - mid < room), axis=1, keepdims=True)
    lam = lo + (g(lo) - eps) / jnp.maximum(shrinking, 1).astype(x.dtype)
    lam = jnp.clip(lam, lo, hi)
    needs_ball = g(zero) > eps
    magnitude = jnp.clip(a - jnp.where(needs_ball, lam, 0.0), 0.0, room)
    return (xc + jnp.sign(y) * magnitude).reshape(x.shape)


def l0_norm(v: jax.Array) -> jax.Array:
    """(B,) number of nonzero coordinates of each sample, as float (the reference's L0_norm)."""
    return jnp.sum(v.reshape(v.shape[0], -1) != 0, axis=1).astype(v.dtype)


def sparse_direction(grad: jax.Array, topk: jax.Array | float) -> jax.Array:
    """The reference's sparse L1 step direction: sign(grad) on the coordinates whose |grad| is
    at least the value of rank floor((1 - topk) * d) (ascending), divided by its L1 norm.

    topk is the kept fraction, per sample (B,) or scalar; ties at the threshold are kept.
    """
    batch = grad.shape[0]
    flat = jnp.abs(grad.reshape(batch, -1))
    d = flat.shape[1]
    topk = jnp.broadcast_to(jnp.asarray(topk, grad.dtype), (batch,))
    rank = jnp.floor(jnp.clip((1.0 - topk) * d, 0, d - 1)).astype(jnp.int32)
    threshold = jnp.take_along_axis(jnp.sort(flat, axis=1), rank[:, None], axis=1)
    signs = jnp.sign(grad) * (flat >= threshold).reshape(grad.shape)
    # The reference adds 1e-10 here (not TINY): an all-zero gradient gives a zero step.
    return signs / (common.expand(common.per_sample_norm(signs, "L1"), signs) + 1e-10)
