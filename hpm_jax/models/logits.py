"""Logits functions of a model for the attacks: pytrees whose weights are traced, not baked in.

    from hpm_jax.models import logits_fn
    target = logits_fn(model, variables)                  # eval mode, the model's own output
    fc = logits_fn(model, variables, mode="fc")           # an HPM model's FC surrogate
    AutoAttack(target, eps=8 / 255).run(x, y, batch_size=500)
    apgd(fc, x, y, key=key, eps=8 / 255, judge_fn=target)  # gradient from fc, target judges

A logits function here is `jax.tree_util.Partial(apply, variables)`: a pytree whose leaves are
the arrays of `variables`, so every jitted attack takes the weights as arguments. Compiled
programs hold no copy of the model (a WRN-70-16 is ~1 GB), compile in the time the
architecture needs, and are reused for other variables of the same shapes: evaluating the
next checkpoint compiles nothing. `apply` is a small frozen dataclass of the model and mode,
so two logits functions of equal models and modes share compiled programs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax


@dataclasses.dataclass(frozen=True)
class _Apply:
    """model.apply in eval mode with a fixed head mode (None: the model's default)."""

    model: nn.Module
    mode: str | None

    def __call__(self, variables: Any, x: jax.Array) -> jax.Array:
        if self.mode is None:
            return self.model.apply(variables, x)
        return self.model.apply(variables, x, mode=self.mode)


def logits_fn(
    model: nn.Module, variables: Any, *, mode: str | None = None
) -> jax.tree_util.Partial:
    """x (B, H, W, C) in [0, 1] -> logits (B, C) of `model` in eval mode, as a pytree with
    `variables` as its leaves. `mode` picks a head mode ("hpm"/"ste", "fc", "ema_l2",
    "soft"; see `hpm_jax.models.heads`); None gives the model's own output."""
    if not isinstance(mode, str | None):
        raise TypeError(f"mode must be one head mode name or None, got {mode!r}.")
    return jax.tree_util.Partial(_Apply(model, mode), variables)
