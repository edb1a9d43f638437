"""Model registry: names of the robust-model zoo -> Flax modules.

    model = get_model("dm_wide_resnet", num_classes=10, depth=28, width=10)
    backbone = get_backbone("small_cnn", in_channels=1)

Backbones are imported lazily so that asking for one model does not import them all.
"""

from __future__ import annotations

import importlib
from typing import Any

import flax.linen as nn

from hpm_jax.models.classifier import Classifier
from hpm_jax.models.heads import FCHead

# name -> "module:Class". Each class maps NHWC images in [0, 1] to penultimate features.
BACKBONES: dict[str, str] = {
    "small_cnn": "hpm_jax.models.small_cnn:SmallCNN",
    "resnet18": "hpm_jax.models.resnet:ResNet18",
    "preact_resnet18": "hpm_jax.models.preact_resnet:PreActResNet18",
    "wide_resnet": "hpm_jax.models.wide_resnet:WideResNet",
    "dm_wide_resnet": "hpm_jax.models.dm_wide_resnet:DMWideResNet",
    "resnet50": "hpm_jax.models.imagenet_resnet:ResNet50",
}

HEADS: dict[str, type[nn.Module]] = {"fc": FCHead}


def _unknown(kind: str, name: str, known: list[str]) -> ValueError:
    return ValueError(f"Unknown {kind} {name!r}; choose one of {sorted(known)}.")


def get_backbone(name: str, **kwargs: Any) -> nn.Module:
    """The backbone called `name`, built with `kwargs` (e.g. `depth`, `width`)."""
    if name not in BACKBONES:
        raise _unknown("model", name, list(BACKBONES))
    module_name, class_name = BACKBONES[name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    try:
        return cls(**kwargs)
    except TypeError as e:
        fields = [f for f in cls.__dataclass_fields__ if f not in ("parent", "name")]
        raise TypeError(f"{name}: {e}. Its options are {fields}.") from None


def get_model(name: str, *, num_classes: int, head: str = "fc", **kwargs: Any) -> Classifier:
    """A classifier: backbone `name` (built with `kwargs`) and a head with `num_classes`."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}.")
    if head not in HEADS:
        raise _unknown("head", head, list(HEADS))
    return Classifier(backbone=get_backbone(name, **kwargs), head=HEADS[head](num_classes))
