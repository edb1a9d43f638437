"""The straight-through one-hot: argmax forward, softmax gradient backward.

    from hpm_jax.ops import straight_through_onehot
    a = straight_through_onehot(logits, temperature=1.0)     # (..., C) one-hot of argmax
    # jax.grad flows through `a` as if it were softmax(logits / temperature).

HPM assigns each example to the class its FC head predicts (a hard, piecewise-constant
choice) but still needs a gradient for that choice; the straight-through estimator gives
it the gradient of the smooth relaxation softmax(logits / T).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, jax.core.Tracer):
        raise TypeError(
            "straight_through_onehot: temperature must be a static Python float, got a traced "
            "value. Pass a plain number (e.g. from the config), not an array under jit."
        )
    temperature = float(temperature)
    if not temperature > 0:  # also rejects NaN
        raise ValueError(
            f"straight_through_onehot: temperature must be > 0, got {temperature}. "
            "It divides the logits of the softmax whose gradient is used; use e.g. 1.0."
        )
    return temperature


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _straight_through(logits: jax.Array, temperature: float) -> jax.Array:
    # jnp.argmax returns the first maximal index, so ties go to the lowest class.
    return jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=logits.dtype)


def _forward(logits: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
    probs = jax.nn.softmax(logits / temperature, axis=-1)
    return _straight_through(logits, temperature), probs


def _backward(temperature: float, probs: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    # g^T J with J = (diag(p) - p p^T) / T, the Jacobian of softmax(z / T), without forming J.
    inner = jnp.sum(g * probs, axis=-1, keepdims=True)
    return (probs * (g - inner) / temperature,)


_straight_through.defvjp(_forward, _backward)


def straight_through_onehot(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """One-hot of argmax over the last axis (ties: lowest index), in the dtype of `logits`.

    The reverse-mode gradient is the VJP of `softmax(logits / temperature)`. `temperature`
    is static (a Python float > 0) and gets no gradient. Forward-mode differentiation
    (`jax.jvp`, `jax.jacfwd`) is not defined for this custom VJP; use `jax.jacrev`.
    """
    temperature = _check_temperature(temperature)
    logits = jnp.asarray(logits)
    if logits.ndim == 0:
        raise ValueError("straight_through_onehot expects logits with a class axis (last).")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(
            f"straight_through_onehot expects floating-point logits, got {logits.dtype}. "
            "Cast with logits.astype(jnp.float32)."
        )
    return _straight_through(logits, temperature)
