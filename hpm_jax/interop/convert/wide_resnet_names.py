"""Torch module names -> Flax module paths for the two WideResNet families of RobustBench.

rename_wide_resnet("block2.layer.0.convShortcut")   ->  "backbone/block2_0/shortcut_conv"
rename_wide_resnet("sub_block1.layer.0.conv1")      ->  None  (built, never used in forward)
rename_dm_wide_resnet("layer.1.block.0.conv_0")     ->  "backbone/layer1_0/conv_0"
rename_dm_wide_resnet("logits")                     ->  "head/fc"
"""

from __future__ import annotations

import re

from hpm_jax.interop.convert.core import NORMALIZATION

_WRN_BLOCK = re.compile(r"^block(\d+)\.layer\.(\d+)\.(.+)$")
_DM_BLOCK = re.compile(r"^layer\.(\d+)\.block\.(\d+)\.(.+)$")


def rename_wide_resnet(module: str) -> str | None:
    """TRADES / RobustBench `WideResNet`: `conv1`, `blockG.layer.B.*`, `bn1`, `fc`.

    Model-level `mu`/`sigma` buffers (RobustBench subclasses that normalise) are checked
    against the backbone's `mean`/`std`.
    """
    if module == "":
        return NORMALIZATION
    if module == "fc":
        return "head/fc"
    if module.startswith("sub_block1."):
        # Some checkpoints (sub_block1=True) carry a copy of block1 that forward() never calls.
        return None
    if match := _WRN_BLOCK.match(module):
        group, block, rest = match.groups()
        rest = "shortcut_conv" if rest == "convShortcut" else rest
        return f"backbone/block{group}_{block}/{rest}"
    return f"backbone/{module}"


def rename_dm_wide_resnet(module: str) -> str | None:
    """DeepMind's `DMWideResNet`: `init_conv`, `layer.G.block.B.*`, `batchnorm`, `logits`.

    Its `mean`/`std` buffers are not persistent in the current port, but older saved
    checkpoints may hold them; they are checked against the backbone's `mean`/`std`.
    """
    if module == "":
        return NORMALIZATION
    if module == "logits":
        return "head/fc"
    if match := _DM_BLOCK.match(module):
        group, block, rest = match.groups()
        return f"backbone/layer{group}_{block}/{rest}"
    return f"backbone/{module}"
