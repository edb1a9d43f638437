"""Classifier heads: they map penultimate features (B, D) to logits (B, C).

    head = FCHead(num_classes=10)
    logits = head.apply(variables, features, train=False)

Every head shares one call signature, `head(features, labels=None, *, train, mode)`, so
that dynamic heads can use labels in training and pick a surrogate mode at apply time.
"""

from __future__ import annotations

import flax.linen as nn
import jax


class FCHead(nn.Module):
    """The fully connected head of a standard classifier: z = f W + b (a Dense named `fc`)."""

    num_classes: int

    @nn.compact
    def __call__(
        self,
        features: jax.Array,
        labels: jax.Array | None = None,
        *,
        train: bool = False,
        mode: str = "fc",
    ) -> jax.Array:
        del labels, train, mode  # The FC head is static: one forward for every mode.
        return nn.Dense(self.num_classes, name="fc")(features)
