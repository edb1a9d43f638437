"""Torch module names -> Flax module paths for torchvision's ImageNet ResNets.

    rename_resnet50("layer2.0.downsample.0")  ->  "backbone/layer2_0/downsample_conv"
    rename_resnet50("fc")                     ->  "head/fc"
    rename_resnet50("normalize")              ->  NORMALIZATION   (RobustBench's wrapper)

RobustBench's ImageNet files hold `normalize_model(resnet50(), mu, sigma)`: the buffers
`normalize.mean`/`normalize.std` and the network under `model.`, a prefix that
`unwrap_state_dict` strips before names reach this function.
"""

from __future__ import annotations

import re

from hpm_jax.interop.convert.core import NORMALIZATION

_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")
_DOWNSAMPLE = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}


def rename_resnet50(module: str) -> str | None:
    """torchvision `resnet*` names (`conv1`, `bn1`, `layerS.B.*`, `fc`), maybe normalised."""
    if module == "normalize":
        return NORMALIZATION
    if module == "fc":
        return "head/fc"
    if match := _BLOCK.match(module):
        stage, block, rest = match.groups()
        return f"backbone/layer{stage}_{block}/{_DOWNSAMPLE.get(rest, rest)}"
    return f"backbone/{module}"
