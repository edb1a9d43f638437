"""Pre-activation ResNet-18 (He et al. 2016): the CIFAR backbone of many robust-training papers.

    backbone = PreActResNet18()                   # 32x32x3 in [0, 1] -> 512 features
    model = get_model("preact_resnet18", num_classes=10)
    # RobustBench's Andriushchenko2020Understanding / Wong2020Fast layout:
    model = get_model("preact_resnet18", num_classes=10, bn_before_fc=False, out_shortcut=False)

Layout and names as RobustBench's `architectures/resnet.py` (`conv1`, `layerS.B.{bn1, conv1,
bn2, conv2, shortcut.0}`, `bn`, `linear`). Two options of that file change the computation
without changing the checkpoint's keys other than `bn`, so they must be set to match:

    checkpoint                              bn_before_fc  out_shortcut
    Rice2020Overfitting (L2, CIFAR-100),        True          True      (the defaults)
    Kireev2021Effectiveness
    Andriushchenko2020Understanding,            False         False
    Wong2020Fast

(`PreActBlockV2` is `PreActBlock` with `out_shortcut=True`.) The final 4x4 average pool is a
global average pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hpm_jax.models.layers import Normalize, batch_norm, conv, global_avg_pool


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice, plus a shortcut (a strided 1x1 conv when the shape changes).

    `out_shortcut`: the projection reads the pre-activated input relu(bn1(x)) instead of x.
    An identity shortcut always adds the raw x.
    """

    planes: int
    stride: int = 1
    out_shortcut: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        out = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(x))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.planes:
            shortcut = conv(
                self.planes, 1, stride=self.stride, dtype=self.dtype, name="shortcut_conv"
            )(out if self.out_shortcut else x)
        out = conv(self.planes, 3, stride=self.stride, dtype=self.dtype, name="conv1")(out)
        out = nn.relu(batch_norm(train, dtype=self.dtype, name="bn2")(out))
        out = conv(self.planes, 3, dtype=self.dtype, name="conv2")(out)
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreActResNet-18 features (8 * `width` = 512-d). `mean`/`std` add input normalisation.

    `width` and `stage_sizes` exist for small test models; checkpoints use the defaults.
    """

    in_channels: int = 3
    image_size: int = 32
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    bn_before_fc: bool = True
    out_shortcut: bool = True
    width: int = 64
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.mean is not None:
            x = Normalize(self.mean, self.std)(x)
        x = conv(self.width, 3, dtype=self.dtype, name="conv1")(x.astype(self.dtype))
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                x = PreActBlock(
                    self.width * 2**stage,
                    stride=2 if stage > 0 and block == 0 else 1,
                    out_shortcut=self.out_shortcut,
                    dtype=self.dtype,
                    name=f"layer{stage + 1}_{block}",
                )(x, train=train)
        if self.bn_before_fc:
            # Without it the features are a sum of un-normalised residuals (RobustBench's default).
            x = nn.relu(batch_norm(train, dtype=self.dtype, name="bn")(x))
        return global_avg_pool(x).astype(jnp.float32)
