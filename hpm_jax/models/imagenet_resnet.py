"""ImageNet ResNet-50 (torchvision's layout), the backbone of RobustBench's ImageNet models.

    backbone = ResNet50()                          # 224x224x3 in [0, 1] -> 2048 features
    model = get_model("resnet50", num_classes=1000)
    resnet18 = ResNet50(stage_sizes=(2, 2, 2, 2), bottleneck=False)    # 512 features

torchvision's ResNet v1.5: a 7x7 stride-2 stem with a 3x3 stride-2 max-pool, then four
stages of bottleneck blocks whose stride sits on the 3x3 convolution. Input normalisation
(ImageNet mean/std by default) happens inside the model, as in RobustBench's
`normalize_model(resnet50(), mu, sigma)`, so the model takes images in [0, 1].
Other depths (18/34/101/152) and the wide variant (`width_per_group=128`) are options.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hpm_jax.models.layers import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalize,
    batch_norm,
    conv,
    global_avg_pool,
)
from hpm_jax.models.resnet import BasicBlock, projection


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (strided, v1.5) -> 1x1 expand to `4 * planes` channels."""

    planes: int
    stride: int = 1
    width: int = 64  # channels of the inner convs: planes * width_per_group / 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        out_features = 4 * self.planes
        out = conv(self.width, 1, dtype=self.dtype, name="conv1")(x)
        out = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(out))
        out = conv(self.width, 3, stride=self.stride, dtype=self.dtype, name="conv2")(out)
        out = nn.relu(batch_norm(train, dtype=self.dtype, name="bn2")(out))
        out = conv(out_features, 1, dtype=self.dtype, name="conv3")(out)
        out = batch_norm(train, dtype=self.dtype, name="bn3")(out)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != out_features:
            shortcut = projection(x, out_features, self.stride, train, self.dtype, "downsample")
        return nn.relu(out + shortcut)


def torch_max_pool(x: jax.Array, window: int = 3, stride: int = 2, padding: int = 1) -> jax.Array:
    """`torch.nn.MaxPool2d(window, stride, padding)`: padded cells are -inf, never chosen.

    `nn.max_pool` pads with the reduction's identity (-inf), so explicit symmetric padding
    reproduces torch exactly (Flax's "SAME" would pad asymmetrically at stride 2).
    """
    pad = ((padding, padding), (padding, padding))
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pad)


class ResNet50(nn.Module):
    """torchvision ResNet features (2048-d for ResNet-50), ImageNet-normalised inside.

    Flax names follow torchvision's: `conv1`, `bn1`, `layer{S}_{B}/conv1..3`,
    `layer{S}_{B}/downsample_conv|bn`; the `fc` layer is the classifier's head.
    """

    in_channels: int = 3
    image_size: int = 224
    stage_sizes: Sequence[int] = (3, 4, 6, 3)  # (2,2,2,2) + bottleneck=False is ResNet-18
    bottleneck: bool = True
    width_per_group: int = 64  # 128: wide_resnet50_2
    mean: Sequence[float] | None = IMAGENET_MEAN
    std: Sequence[float] | None = IMAGENET_STD
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.mean is not None:
            x = Normalize(self.mean, self.std)(x)
        x = conv(64, 7, stride=2, dtype=self.dtype, name="conv1")(x.astype(self.dtype))
        x = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(x))
        x = torch_max_pool(x)
        if not self.bottleneck and self.width_per_group != 64:
            raise ValueError("width_per_group applies to bottleneck blocks only (as in torch).")
        for stage, num_blocks in enumerate(self.stage_sizes):
            planes = 64 * 2**stage
            for block in range(num_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                name = f"layer{stage + 1}_{block}"
                if self.bottleneck:
                    width = planes * self.width_per_group // 64
                    layer = Bottleneck(planes, stride, width, self.dtype, name=name)
                else:
                    layer = BasicBlock(planes, stride, self.dtype, "downsample", name=name)
                x = layer(x, train=train)
        # Heads see float32 features (bfloat16 compute is promoted); float64 stays float64, so
        # a float64 model is float64 end to end (the exactness tests rely on it).
        return global_avg_pool(x).astype(jnp.promote_types(self.dtype, jnp.float32))
