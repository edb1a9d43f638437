"""The geometry every attack shares: norms, projections, random starts and per-row keys.

    from hpm_jax.attacks import geometry
    x0 = geometry.sphere_start(key, x, eps, "Linf")          # the reference's random start
    x1 = geometry.project(x0 + step, x, eps, "Linf")         # back into ball ∩ [0, 1]^d
    x1 = geometry.project_l1(x_adv, x, eps)                  # exact L1 ball ∩ box projection
    keys = geometry.row_keys(key, ids)                       # row i's key: fold_in(key, ids[i])

All functions are jittable, work per sample on (B, ...) batches, and take eps as a scalar or
per-sample (B,) array. L1 (Croce & Hein, "Mind the box", 2021): the exact projection onto the
L1 ball intersected with the box, and APGD-L1's sparse step direction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Added to norms before dividing, as the reference does, so zero vectors stay finite.
TINY = 1e-12


def per_sample_norm(v: jax.Array, norm: str) -> jax.Array:
    """The Linf, L2 or L1 norm of each sample of a batch: (B, ...) -> (B,)."""
    flat = v.reshape(v.shape[0], -1)
    if norm == "Linf":
        return jnp.max(jnp.abs(flat), axis=1)
    if norm == "L2":
        return jnp.sqrt(jnp.sum(flat * flat, axis=1))
    if norm == "L1":
        return jnp.sum(jnp.abs(flat), axis=1)
    raise ValueError(f"norm must be one of ('Linf', 'L2', 'L1'), got {norm!r}.")


def expand(per_sample: jax.Array, like: jax.Array) -> jax.Array:
    """(B,) -> (B, 1, 1, 1) for broadcasting against a batch shaped like `like`."""
    return per_sample.reshape((-1,) + (1,) * (like.ndim - 1))


def normalize(v: jax.Array, norm: str) -> jax.Array:
    """Each sample divided by its norm (plus TINY): unit Linf / L2 / L1 directions."""
    return v / (expand(per_sample_norm(v, norm), v) + TINY)


def project(x_adv: jax.Array, x: jax.Array, eps: jax.Array | float, norm: str) -> jax.Array:
    """Back into the eps-ball around x intersected with [0, 1]^d, for Linf and L2.

    Linf is the exact projection. L2 rescales the perturbation onto the ball and then clips
    to the box, as the reference does (exact for the ball, a close feasible point for the
    intersection). `eps` may be a scalar or per-sample (B,). L1 needs the sorting-based
    projection of APGD-L1 and is not handled here.
    """
    eps = expand(jnp.broadcast_to(jnp.asarray(eps, x.dtype), x.shape[:1]), x)
    delta = x_adv - x
    if norm == "Linf":
        delta = jnp.clip(delta, -eps, eps)
    elif norm == "L2":
        length = expand(per_sample_norm(delta, "L2"), x)
        delta = delta * jnp.minimum(1.0, eps / (length + TINY))
    else:
        raise ValueError(f"project handles Linf and L2, got {norm!r}.")
    return jnp.clip(x + delta, 0.0, 1.0)


def radius(eps: jax.Array | float, x: jax.Array) -> jax.Array:
    """eps, a number or (B,), as (B, 1, 1, 1) to broadcast against the batch x."""
    return expand(jnp.broadcast_to(jnp.asarray(eps, x.dtype), x.shape[:1]), x)


# ---------------------------------------------------------------------------- random starts
START_KINDS = ("sphere", "l1_ball", "uniform", "normal", "none")


def sphere_start(key: jax.Array, x: jax.Array, eps: jax.Array | float, norm: str) -> jax.Array:
    """The reference's random start at distance eps (a number or (B,)), clipped to [0, 1]:
    eps * t / ||t|| with t uniform in [-1, 1] for Linf, Gaussian for L2 and L1."""
    if norm == "Linf":
        t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
    elif norm in ("L2", "L1"):
        t = jax.random.normal(key, x.shape, x.dtype)
    else:
        raise ValueError(f"norm must be one of ('Linf', 'L2', 'L1'), got {norm!r}.")
    return jnp.clip(x + radius(eps, x) * normalize(t, norm), 0.0, 1.0)


def random_start(key: jax.Array, x: jax.Array, eps: jax.Array | float, norm: str,
                 kind: str = "sphere") -> jax.Array:  # fmt: skip
    """A first iterate inside the eps-ball around x and [0, 1]^d, by `kind`:
    "sphere" (`sphere_start`, AutoAttack's APGD for Linf / L2); "l1_ball" (a Gaussian step
    projected onto the L1 ball, APGD-L1); "uniform" (uniform in the Linf box, Madry et al.;
    for L2 a uniform direction and radius eps * U^(1/d)); "normal" (0.001 * N(0, 1), the
    TRADES reference: KL(p || p) has a zero gradient at x itself); "none" (x)."""
    if kind == "none":
        return x
    if kind == "sphere":
        return sphere_start(key, x, eps, norm)
    if kind == "l1_ball":
        return project_l1(x + jax.random.normal(key, x.shape, x.dtype), x, eps)
    if kind == "normal":
        return project(x + 0.001 * jax.random.normal(key, x.shape, x.dtype), x, eps, norm)
    if kind == "uniform":
        if norm == "Linf":
            r = radius(eps, x)
            delta = jax.random.uniform(key, x.shape, x.dtype, -r, r)
        else:
            direction_key, radius_key = jax.random.split(key)
            direction = normalize(jax.random.normal(direction_key, x.shape, x.dtype), "L2")
            u = jax.random.uniform(radius_key, x.shape[:1], x.dtype) ** (1.0 / x[0].size)
            delta = direction * expand(jnp.broadcast_to(eps, x.shape[:1]) * u, x)
        return project(x + delta, x, eps, norm)
    raise ValueError(f"random start must be one of {START_KINDS}, got {kind!r}.")


def row_keys(key: jax.Array, ids: jax.Array) -> jax.Array:
    """(B,) keys, row i's fold_in(key, ids[i]) with ids the rows' places in the attack's batch:
    a row's draws do not depend on which other rows share its bucket."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)


# ----------------------------------------------------------------------------------------- L1
def project_l1(x_adv: jax.Array, x: jax.Array, eps: jax.Array | float) -> jax.Array:
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


def project_l1_bisect(
    x_adv: jax.Array, x: jax.Array, eps: jax.Array | float, n_steps: int = 40
) -> jax.Array:
    """The projection of `project_l1`, with its multiplier found without sorting: `n_steps`
    bisection steps on lam (each one clip-and-sum over the image), then the exact lam by
    linear interpolation on the bracket, where g is linear unless a breakpoint lies closer
    than max|y| / 2^n_steps to the solution (far below float32 resolution at the default 40).
    Same answer as `project_l1` up to float rounding; several times faster on XLA:CPU, whose sort
    dominates `project_l1` for image-sized rows (Square L1 projects every proposal).
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
    return signs / (expand(per_sample_norm(signs, "L1"), signs) + 1e-10)
