"""What every attack shares: the contract, input checks, per-sample norms, projections.

    from hpm_jax.attacks import common
    common.check_inputs(x, y, norm="Linf", eps=8 / 255)       # clear errors, host side
    x0 = common.random_start(key, x, eps, "Linf")             # as the reference AutoAttack
    x1 = common.project(x0 + step, x, eps, "Linf")            # back into ball ∩ [0, 1]^d

The contract: `attack(logits_fn, x, y, *, key, norm, eps, ..., judge_fn=None)`, where
`logits_fn` maps a batch of NHWC images in [0, 1] to logits (it supplies the loss and the
gradient) and `judge_fn` (default `logits_fn`) decides which points are broken and which
iterate is kept. `judge_fn` is always called on the whole batch at once, so a
batch-dependent model (HPM) is judged in batch context. Attacks return `AttackResult`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NORMS = ("Linf", "L2", "L1")
LogitsFn = Callable[[jax.Array], jax.Array]

# Added to norms before dividing, as the reference does, so zero vectors stay finite.
TINY = 1e-12


class AttackResult(NamedTuple):
    """x_adv: (B, H, W, C) in [0, 1] within eps of x. robust: (B,) bool, True where the judge
    still classifies x_adv as y (a point the judge gets wrong on x counts as not robust)."""

    x_adv: jax.Array
    robust: jax.Array


def check_norm(norm: str, allowed: tuple[str, ...] = NORMS) -> None:
    if norm not in allowed:
        raise ValueError(f"norm must be one of {allowed}, got {norm!r}.")


def check_inputs(
    x: jax.Array,
    y: jax.Array,
    *,
    norm: str,
    eps: float,
    num_classes: int | None = None,
    allowed_norms: tuple[str, ...] = NORMS,
) -> None:
    """Raise a clear error for inputs no attack can use. Value checks need concrete arrays
    and are skipped under tracing (call this outside `jit`, as the public entry points do)."""
    check_norm(norm, allowed_norms)
    if not np.isscalar(eps) or not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}.")
    if x.ndim != 4:
        raise ValueError(
            f"x must be a batch of NHWC images (4 dimensions), got shape {tuple(x.shape)}."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"x must be floating point in [0, 1], got {x.dtype}; use x.astype('float32') / 255."
        )
    if y.shape != (x.shape[0],):
        raise ValueError(
            f"y must hold one label per image, shape ({x.shape[0]},), got {tuple(y.shape)}."
        )
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"y must be integer class labels, got {y.dtype}.")
    if isinstance(x, jax.core.Tracer) or isinstance(y, jax.core.Tracer):
        return
    lo, hi = float(jnp.min(x)), float(jnp.max(x))
    if lo < 0 or hi > 1:
        raise ValueError(
            f"x must be images in [0, 1], got values in [{lo:.4g}, {hi:.4g}]. Pass raw images "
            "and put any normalisation inside logits_fn (the models do it themselves)."
        )
    if num_classes is not None and x.shape[0] > 0:
        y_lo, y_hi = int(jnp.min(y)), int(jnp.max(y))
        if y_lo < 0 or y_hi >= num_classes:
            raise ValueError(
                f"labels must lie in [0, {num_classes - 1}], got values in [{y_lo}, {y_hi}]."
            )


def per_sample_norm(v: jax.Array, norm: str) -> jax.Array:
    """The Linf, L2 or L1 norm of each sample of a batch: (B, ...) -> (B,)."""
    flat = v.reshape(v.shape[0], -1)
    if norm == "Linf":
        return jnp.max(jnp.abs(flat), axis=1)
    if norm == "L2":
        return jnp.sqrt(jnp.sum(flat * flat, axis=1))
    if norm == "L1":
        return jnp.sum(jnp.abs(flat), axis=1)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")


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
