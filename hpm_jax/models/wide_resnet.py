"""WideResNet as in TRADES (Zhang et al. 2019) and most RobustBench WRN-28-10 / WRN-34-10 models.

    backbone = WideResNet(depth=34, width=10)      # 32x32x3 in [0, 1] -> 640 features
    model = get_model("wide_resnet", num_classes=10, depth=28, width=10)

Layout as RobustBench's `architectures/wide_resnet.py` (from the TRADES code): a 3x3 stem
with 16 channels, three groups of (depth - 4) / 6 pre-activation blocks with 16, 32, 64
times `width` channels, then BN-ReLU and global average pooling. Its quirk is kept: where
a block changes the number of channels, the pre-activation relu(bn1(x)) replaces x for
both branches, so the 1x1 projection shortcut reads the normalised input, not x.

No input normalisation by default; RobustBench models that normalise inside the model
(buffers `mu`/`sigma`) need `mean=..., std=...`. Dropout (`dropRate`) is not implemented:
the robust checkpoints are trained without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hpm_jax.models.layers import Normalize, batch_norm, conv, global_avg_pool


def blocks_per_group(depth: int) -> int:
    """(depth - 4) / 6: each block has 2 convs, plus the stem, the last layer, 2 projections."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(
            f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 28, 34...), got {depth}."
        )
    return (depth - 4) // 6


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity or 1x1-projection shortcut."""

    out_planes: int
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        pre = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(x))
        out = conv(self.out_planes, 3, stride=self.stride, dtype=self.dtype, name="conv1")(pre)
        out = nn.relu(batch_norm(train, dtype=self.dtype, name="bn2")(out))
        out = conv(self.out_planes, 3, dtype=self.dtype, name="conv2")(out)
        if x.shape[-1] == self.out_planes:  # TRADES' `equalInOut`: identity on the raw input
            return x + out
        shortcut = conv(
            self.out_planes,
            1,
            stride=self.stride,
            padding=0,
            dtype=self.dtype,
            name="shortcut_conv",
        )(pre)
        return shortcut + out


class WideResNet(nn.Module):
    """WRN-`depth`-`width` features (64 * `width` channels, 640 for width 10)."""

    in_channels: int = 3
    image_size: int = 32
    depth: int = 28  # RobustBench's default; TRADES-style checkpoints are often 34.
    width: int = 10
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        blocks_per_group(self.depth)  # fail at construction, not at the first init
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.mean is not None:
            x = Normalize(self.mean, self.std)(x)
        x = conv(16, 3, dtype=self.dtype, name="conv1")(x.astype(self.dtype))
        n = blocks_per_group(self.depth)
        for group, channels in enumerate((16, 32, 64)):
            for block in range(n):
                x = WideBlock(
                    channels * self.width,
                    stride=2 if group > 0 and block == 0 else 1,
                    dtype=self.dtype,
                    name=f"block{group + 1}_{block}",
                )(x, train=train)
        x = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(x))
        return global_avg_pool(x).astype(jnp.float32)
