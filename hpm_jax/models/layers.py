"""Building blocks with PyTorch's conventions, so converted checkpoints compute the same thing.

    x = Normalize(mean=CIFAR10_MEAN, std=CIFAR10_STD)(x)
    x = conv(64, 3, stride=2, name="conv1")(x)          # padding (1, 1) like torch, not "SAME"
    x = batch_norm(train, name="bn1")(x)

PyTorch pads symmetrically (`padding=k // 2`); Flax's "SAME" pads asymmetrically when the
stride is 2, so convolutions here always take explicit padding. Batch norm uses torch's
epsilon (1e-5), momentum (0.1, i.e. Flax momentum 0.9) and two-pass variance. One difference
remains: Flax updates the running variance with the biased batch variance, torch with the
unbiased one (a factor n / (n - 1), n = batch x height x width: negligible in practice).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# He-normal on fan_out: torchvision's and the WRN papers' init for convolutions.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(
    features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int | None = None,
    use_bias: bool = False,
    dtype: Any = jnp.float32,
    name: str | None = None,
) -> nn.Conv:
    """A square convolution with torch-style symmetric padding (default `kernel_size // 2`)."""
    pad = kernel_size // 2 if padding is None else padding
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=use_bias,
        kernel_init=kaiming_fan_out,
        dtype=dtype,
        name=name,
    )


def batch_norm(train: bool, *, dtype: Any = jnp.float32, name: str | None = None) -> nn.BatchNorm:
    """BatchNorm with torch's defaults: batch statistics in training, running ones in eval.

    The variance is computed in two passes, E[(x - E[x])^2], as torch does: Flax's default
    E[x^2] - E[x]^2 loses enough float32 precision to put train-mode gradients ~1e-3 off.
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        use_fast_variance=False,
        dtype=dtype,
        name=name,
    )


class Normalize(nn.Module):
    """(x - mean) / std per channel: constants, not parameters (they are never trained)."""

    mean: Sequence[float]
    std: Sequence[float]

    def __call__(self, x: jax.Array) -> jax.Array:
        mean = jnp.asarray(self.mean, x.dtype)
        std = jnp.asarray(self.std, x.dtype)
        return (x - mean) / std


def global_avg_pool(x: jax.Array) -> jax.Array:
    """NHWC -> NC by averaging over space."""
    return jnp.mean(x, axis=(1, 2))


relu = nn.relu
