"""The geometry every attack shares: per-sample norms, projections, random starts.

    from hpm_jax.attacks import common
    x0 = common.random_start(key, x, eps, "Linf")             # as the reference AutoAttack
    x1 = common.project(x0 + step, x, eps, "Linf")            # back into ball ∩ [0, 1]^d
    common.correct(logits, y)                                 # (B,) bool
    common.target_classes(logits, y, 9)                       # (B, 9) APGD-T / FAB-T targets

The attack contract (arguments, the judge, validation) is `contract`.
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


def random_start(key: jax.Array, x: jax.Array, eps: float, norm: str) -> jax.Array:
    """The reference's random start: on the Linf sphere (eps * t / ||t||_inf, t uniform in
    [-1, 1]) or the L2 sphere (normalised Gaussian), then clipped to [0, 1]."""
    if norm == "Linf":
        t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
    elif norm == "L2":
        t = jax.random.normal(key, x.shape, x.dtype)
    else:
        raise ValueError(f"random_start handles Linf and L2, got {norm!r}.")
    return jnp.clip(x + eps * normalize(t, norm), 0.0, 1.0)


def correct(logits: jax.Array, y: jax.Array) -> jax.Array:
    """(B,) bool: the argmax of `logits` (ties to the lowest index) equals y."""
    return jnp.argmax(logits, axis=-1) == y


def target_classes(logits: jax.Array, y: jax.Array, k: int) -> jax.Array:
    """(B, k): the k highest-ranked classes of `logits` other than y, best first: the targets
    of every targeted attack. The reference ranks only points its model classifies as y, where
    these are its 2nd..(k+1)th classes; a surrogate (or any gradient model) may rank another
    class above y, and then y itself must not become a target (its targeted loss is 0)."""
    not_y = jnp.where(jax.nn.one_hot(y, logits.shape[1], dtype=bool), -jnp.inf, logits)
    return jax.lax.top_k(not_y, k)[1]
