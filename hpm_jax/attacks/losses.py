"""Per-example attack losses. Sign: every loss here is one the attacker MAXIMISES.

    loss = cross_entropy(logits, y)                       # (B,)
    loss = dlr(logits, y)                                 # Croce & Hein's DLR, scale-free
    loss = targeted_dlr(logits, y, target)                # APGD-T's loss
    m = margin(logits, y)                                 # z_y - max_{c != y} z_c (> 0 correct)
    kl = kl_divergence(logits, clean_logits)              # TRADES' KL to the clean output

All take logits (B, C) and integer labels (B,) and return (B,) float arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_DLR_EPS = 1e-12  # keeps DLR finite when the top logits tie, as in the reference


def _take(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Softmax cross-entropy of the true class (higher = further from being correct)."""
    return jax.nn.logsumexp(logits, axis=1) - _take(logits, y)


def margin(logits: jax.Array, y: jax.Array) -> jax.Array:
    """z_y - max_{c != y} z_c: positive where the prediction is y. NOT a maximised loss;
    attacks maximise `-margin`."""
    others = jnp.where(jax.nn.one_hot(y, logits.shape[1], dtype=bool), -jnp.inf, logits)
    return _take(logits, y) - jnp.max(others, axis=1)


def dlr(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Difference of logits ratio: -(z_y - max_{c != y} z_c) / (z_pi1 - z_pi3), with z_pi the
    logits sorted in decreasing order. Invariant to shifting and scaling the logits."""
    top = jax.lax.top_k(logits, 3)[0]
    value = -margin(logits, y) / (top[:, 0] - top[:, 2] + _DLR_EPS)
    # Where y ranks third, numerator and denominator are both z_pi1 - z_y: DLR is 1 on a
    # plateau and its gradient is exactly 0. Computed through both paths it is rounding noise
    # (cotangents of +-1 ulp), which a sign (Linf) or normalised (L2) step blows up to a full
    # step in a direction that depends on how XLA compiled the program (the lax and host
    # loops moved such points apart by ~1e-2). The gradient is set to its exact value, 0.
    plateau = _take(logits, y) == top[:, 2]
    return jnp.where(plateau, jax.lax.stop_gradient(value), value)


def targeted_dlr(logits: jax.Array, y: jax.Array, target: jax.Array) -> jax.Array:
    """APGD-T's loss: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2). Needs >= 4 classes."""
    top = jax.lax.top_k(logits, 4)[0]
    scale = top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _DLR_EPS
    return -(_take(logits, y) - _take(logits, target)) / scale


def kl_divergence(logits: jax.Array, reference_logits: jax.Array) -> jax.Array:
    """(B,) KL(softmax(reference) || softmax(logits)), >= 0; the attacker maximises it."""
    log_p = jax.nn.log_softmax(reference_logits, axis=-1)
    log_q = jax.nn.log_softmax(logits, axis=-1)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


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
