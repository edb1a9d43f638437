"""DeepMind's WideResNet (Gowal et al. 2020, Rebuffi et al. 2021, Wang et al. 2023).

    backbone = DMWideResNet(depth=28, width=10)    # 32x32x3 in [0, 1] -> 640 features
    model = get_model("dm_wide_resnet", num_classes=100, depth=70, width=16,
                      mean=CIFAR100_MEAN, std=CIFAR100_STD)

Layout as RobustBench's `architectures/dm_wide_resnet.py` (DeepMind's PyTorch port of their
Haiku model). It differs from the TRADES `WideResNet` in ways that change the numbers:

* the input is normalised inside the model (CIFAR-10 statistics by default) after an
  optional zero `padding` of the raw image;
* Swish (= SiLU) activations in every RobustBench checkpoint (the torch class defaults to
  ReLU; `activation="relu"` gives that);
* TensorFlow "SAME" padding in the first conv of a stride-2 block: one row/column of zeros
  at the bottom/right only, where torch's padding=1 would pad both sides. The 1x1 shortcut
  is unpadded, so it samples the even pixels, one to the top-left of the 3x3 windows' centres.

Batch norm is torch's default (eps 1e-5, momentum 0.1) in the port, as in `layers.batch_norm`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hpm_jax.models.layers import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    Normalize,
    batch_norm,
    conv,
    global_avg_pool,
    kaiming_fan_out,
)
from hpm_jax.models.wide_resnet import blocks_per_group

# The port's CIFAR-10 constants equal layers.CIFAR10_MEAN/STD, so they are shared.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "swish": nn.swish,
    "silu": nn.swish,  # RobustBench uses both names for x * sigmoid(x)
    "relu": nn.relu,
}


class DMBlock(nn.Module):
    """BN-act-conv3x3-BN-act-conv3x3; a 1x1 projection of the activated input if channels change."""

    out_planes: int
    stride: int = 1
    activation: str = "swish"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        pre = act(batch_norm(train, dtype=self.dtype, name="batchnorm_0")(x))
        # "SAME" for a 3x3 kernel: (1, 1) at stride 1, (0, 1) at stride 2 (even input sizes).
        pad = (1, 1) if self.stride == 1 else (0, 1)
        out = nn.Conv(
            self.out_planes,
            (3, 3),
            strides=(self.stride, self.stride),
            padding=(pad, pad),
            use_bias=False,
            kernel_init=kaiming_fan_out,
            dtype=self.dtype,
            name="conv_0",
        )(pre)
        out = act(batch_norm(train, dtype=self.dtype, name="batchnorm_1")(out))
        out = conv(self.out_planes, 3, dtype=self.dtype, name="conv_1")(out)
        if x.shape[-1] == self.out_planes:
            return x + out
        shortcut = conv(
            self.out_planes, 1, stride=self.stride, padding=0, dtype=self.dtype, name="shortcut"
        )(pre)
        return shortcut + out


class DMWideResNet(nn.Module):
    """DeepMind WRN-`depth`-`width` features (64 * `width` channels)."""

    in_channels: int = 3
    image_size: int = 32
    depth: int = 28
    width: int = 10
    mean: Sequence[float] = CIFAR10_MEAN
    std: Sequence[float] = CIFAR10_STD
    activation: str = "swish"
    padding: int = 0  # zeros around the raw image, before normalisation (as the port)
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        blocks_per_group(self.depth)
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}."
            )
        if self.mean is None or self.std is None:
            raise ValueError("DMWideResNet always normalises its input: pass mean= and std=.")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.padding > 0:
            p = self.padding
            x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        x = Normalize(self.mean, self.std)(x)
        x = conv(16, 3, dtype=self.dtype, name="init_conv")(x.astype(self.dtype))
        n = blocks_per_group(self.depth)
        for group, channels in enumerate((16, 32, 64)):
            for block in range(n):
                x = DMBlock(
                    channels * self.width,
                    stride=2 if group > 0 and block == 0 else 1,
                    activation=self.activation,
                    dtype=self.dtype,
                    name=f"layer{group}_{block}",
                )(x, train=train)
        x = ACTIVATIONS[self.activation](batch_norm(train, dtype=self.dtype, name="batchnorm")(x))
        return global_avg_pool(x).astype(jnp.float32)
