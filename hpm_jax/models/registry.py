"""Model registry: names of the robust-model zoo -> Flax modules.

    model = get_model("dm_wide_resnet", num_classes=10, depth=28, width=10)
    model = get_model("small_cnn", num_classes=10, head="hpm", mixing="convex", in_channels=1)
    backbone = get_backbone("small_cnn", in_channels=1)

Keyword arguments go to the head or the backbone by field name (`mixing` is an HPMHead
field, `in_channels` a SmallCNN one); a name that fits neither is an error listing both.

Backbones are imported lazily so that asking for one model does not import them all.
"""

from __future__ import annotations

import importlib
from typing import Any

import flax.linen as nn

from hpm_jax.models.classifier import Classifier
from hpm_jax.models.heads import FCHead, HPMHead, L2Head

# name -> "module:Class". Each class maps NHWC images in [0, 1] to penultimate features.
BACKBONES: dict[str, str] = {
    "small_cnn": "hpm_jax.models.small_cnn:SmallCNN",
    "resnet18": "hpm_jax.models.resnet:ResNet18",
    "preact_resnet18": "hpm_jax.models.preact_resnet:PreActResNet18",
    "wide_resnet": "hpm_jax.models.wide_resnet:WideResNet",
    "dm_wide_resnet": "hpm_jax.models.dm_wide_resnet:DMWideResNet",
    "resnet50": "hpm_jax.models.imagenet_resnet:ResNet50",
}

HEADS: dict[str, type[nn.Module]] = {"fc": FCHead, "l2": L2Head, "hpm": HPMHead}


def _unknown(kind: str, name: str, known: list[str]) -> ValueError:
    return ValueError(f"Unknown {kind} {name!r}; choose one of {sorted(known)}.")


def _fields(cls: type) -> list[str]:
    return [f for f in cls.__dataclass_fields__ if f not in ("parent", "name")]


def _backbone_class(name: str) -> type[nn.Module]:
    if name not in BACKBONES:
        raise _unknown("model", name, list(BACKBONES))
    module_name, class_name = BACKBONES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_backbone(name: str, **kwargs: Any) -> nn.Module:
    """The backbone called `name`, built with `kwargs` (e.g. `depth`, `width`)."""
    cls = _backbone_class(name)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise TypeError(f"{name}: {e}. Its options are {_fields(cls)}.") from None


def get_model(name: str, *, num_classes: int, head: str = "fc", **kwargs: Any) -> Classifier:
    """A classifier: backbone `name` and head `head` ("fc", "l2", "hpm") with `num_classes`.

    Each keyword argument goes to the head if it names one of the head's fields (e.g.
    `mixing`, `ema_decay`), else to the backbone (e.g. `depth`, `dtype`).
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}.")
    if head not in HEADS:
        raise _unknown("head", head, list(HEADS))
    head_cls, backbone_cls = HEADS[head], _backbone_class(name)
    head_fields = set(_fields(head_cls)) - {"num_classes"}
    backbone_fields = set(_fields(backbone_cls))
    if head_fields & backbone_fields:  # a registry bug: routing by name would be ambiguous
        raise TypeError(
            f"Options {sorted(head_fields & backbone_fields)} belong to both the {head!r} head "
            f"and the {name!r} backbone; rename one of the fields."
        )
    head_kwargs = {k: v for k, v in kwargs.items() if k in head_fields}
    backbone_kwargs = {k: v for k, v in kwargs.items() if k in backbone_fields}
    unknown = sorted(set(kwargs) - head_fields - backbone_fields)
    if unknown:
        raise TypeError(
            f"{name} with head {head!r}: unknown option(s) {unknown}. Its options are "
            f"{_fields(backbone_cls)} (backbone) and {sorted(head_fields)} (head)."
        )
    return Classifier(
        backbone=get_backbone(name, **backbone_kwargs),
        head=head_cls(num_classes, **head_kwargs),
    )
