"""An obfuscation canary: a deliberately gradient-masked model that is not robust at all.

    from hpm_jax.attacks.canary import quantized
    masked_fn = quantized(logits_fn, levels=8)      # logits_fn(round(x * 7) / 7)
    AutoAttack(masked_fn, eps=0.1).run(x, y, batch_size=256)   # checks flag it; Square breaks it
    mixed_surrogate_attack(masked_fn, {"bpda": logits_fn}, x, y, eps=0.1, batch_size=256)

Rounding the input to a few grey levels makes the gradient zero almost everywhere, so a
gradient attack sees a flat loss and reports a non-robust network as robust: the classic
false sense of security (Athalye et al., 2018). An evaluation that deserves trust must
expose it: AutoAttack's zero-gradient check and Square (gradient-free) do, and so does MSA
with the network without the rounding as a surrogate (BPDA: the rounding is treated as the
identity in the backward pass). The test suite uses it to check that they all do.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def quantize(x: jax.Array, levels: int) -> jax.Array:
    """x in [0, 1] rounded to `levels` evenly spaced grey levels; zero gradient a.e."""
    return jnp.round(x * (levels - 1)) / (levels - 1)


def quantized(logits_fn: Callable[[jax.Array], jax.Array], *, levels: int = 8):
    """`logits_fn` behind input quantisation: the same predictions up to rounding, no gradient.

    With `levels` grey levels a pixel moves to the next level once perturbed across a
    rounding threshold, i.e. by at most 1 / (2 (levels - 1)); at eps = 0.1 and 8 levels most
    pixels can be moved, so the canary is about as fragile as `logits_fn` itself.
    """
    if not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an int >= 2, got {levels!r}.")

    def masked_logits(x: jax.Array) -> jax.Array:
        return logits_fn(quantize(x, levels))

    return masked_logits
