"""CIFAR ResNet-18: the architecture of AutoAttack's example model and of many AT papers.

    backbone = ResNet18()                         # 32x32x3 in [0, 1] -> 512 features
    model = get_model("resnet18", num_classes=10)

Layout as `pyautoattack/examples/resnet.py` (3x3 stem, no max-pool, no input
normalisation); the final 4x4 average pool is a global average pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hpm_jax.models.layers import Normalize, batch_norm, conv, global_avg_pool


def projection(
    x: jax.Array, features: int, stride: int, train: bool, dtype: Any, prefix: str
) -> jax.Array:
    """The 1x1 conv + BN shortcut, named `{prefix}_conv`/`{prefix}_bn` after the torch model."""
    x = conv(features, 1, stride=stride, dtype=dtype, name=f"{prefix}_conv")(x)
    return batch_norm(train, dtype=dtype, name=f"{prefix}_bn")(x)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a (projected when needed) identity shortcut.

    `shortcut_name` follows the torch model: "shortcut" (CIFAR), "downsample" (torchvision).
    """

    planes: int
    stride: int = 1
    dtype: Any = jnp.float32
    shortcut_name: str = "shortcut"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        out = conv(self.planes, 3, stride=self.stride, dtype=self.dtype, name="conv1")(x)
        out = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(out))
        out = conv(self.planes, 3, dtype=self.dtype, name="conv2")(out)
        out = batch_norm(train, dtype=self.dtype, name="bn2")(out)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.planes:
            shortcut = projection(
                x, self.planes, self.stride, train, self.dtype, self.shortcut_name
            )
        return nn.relu(out + shortcut)


class ResNet18(nn.Module):
    """CIFAR ResNet-18 features (512-d). `mean`/`std` add input normalisation when set."""

    in_channels: int = 3
    image_size: int = 32
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.mean is not None:
            x = Normalize(self.mean, self.std)(x)
        x = conv(64, 3, dtype=self.dtype, name="conv1")(x.astype(self.dtype))
        x = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(x))
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(64 * 2**stage, stride, self.dtype, name=f"layer{stage + 1}_{block}")(
                    x, train=train
                )
        return global_avg_pool(x).astype(jnp.float32)
