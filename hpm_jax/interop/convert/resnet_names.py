"""Torch module names -> Flax module paths for the CIFAR ResNets and the small CNN.

rename_resnet18("layer2.0.shortcut.0")  ->  "backbone/layer2_0/shortcut_conv"
rename_resnet18("linear")               ->  "head/fc"
"""

from __future__ import annotations

import re

from hpm_jax.interop.convert.core import NORMALIZATION

_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")
_SHORTCUT = {"shortcut.0": "shortcut_conv", "shortcut.1": "shortcut_bn"}


def _rename_cifar_resnet(module: str) -> str | None:
    if module in ("linear", "fc"):
        return "head/fc"
    if match := _BLOCK.match(module):
        stage, block, rest = match.groups()
        return f"backbone/layer{stage}_{block}/{_SHORTCUT.get(rest, rest)}"
    return f"backbone/{module}"


def rename_resnet18(module: str) -> str | None:
    """AutoAttack's example ResNet-18 (`conv1`, `bn1`, `layerS.B.*`, `linear`)."""
    return _rename_cifar_resnet(module)


def rename_small_cnn(module: str) -> str | None:
    """The PyTorch twin of `SmallCNN`: `conv1..3`, `bn1..3`, `fc1`, then `linear` (or `fc`)."""
    return "head/fc" if module in ("linear", "fc") else f"backbone/{module}"


def rename_preact_resnet18(module: str) -> str | None:
    """RobustBench's `PreActResNet` (`conv1`, `layerS.B.{bn1,conv1,bn2,conv2,shortcut.0}`,
    `bn`, `linear`); model-level `mu`/`sigma` buffers are checked against `mean`/`std`."""
    if module == "":
        return NORMALIZATION
    return _rename_cifar_resnet(module)
