"""A small, fast CNN for 28x28x1 (MNIST, Fashion-MNIST) and 32x32x3 (CIFAR) images.

    backbone = SmallCNN(in_channels=1, image_size=28)        # -> 256 features
    model = get_model("small_cnn", num_classes=10, in_channels=1, image_size=28)

Three 3x3 conv + batch-norm + ReLU stages (32, 64, 128 channels; the last two stride 2),
global average pooling and a 256-unit hidden layer: adversarially trainable on a 2-core
CPU in minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hpm_jax.models.layers import batch_norm, conv, global_avg_pool


class SmallCNN(nn.Module):
    in_channels: int = 1
    image_size: int = 28
    channels: Sequence[int] = (32, 64, 128)
    num_features: int = 256
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = x.astype(self.dtype)
        for i, width in enumerate(self.channels):
            x = conv(width, 3, stride=1 if i == 0 else 2, dtype=self.dtype, name=f"conv{i + 1}")(x)
            x = nn.relu(batch_norm(train, dtype=self.dtype, name=f"bn{i + 1}")(x))
        x = global_avg_pool(x)
        x = nn.relu(nn.Dense(self.num_features, dtype=self.dtype, name="fc1")(x))
        return x.astype(jnp.float32)
