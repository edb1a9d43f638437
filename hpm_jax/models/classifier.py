"""A classifier = a backbone that maps images to penultimate features + a swappable head.

    model = Classifier(backbone=ResNet18(), head=HPMHead(10))
    logits = model.apply(variables, x)                        # x: float32 NHWC in [0, 1]
    features = model.apply(variables, x, method="features")
    logits = model.apply(variables, features, method="head_logits")   # the head alone
    out, updates = model.apply(variables, x, y, train=True, mode=("hpm", "fc"),
                               mutable=["batch_stats", "prototypes"])   # {"hpm": .., "fc": ..}
    head_modes(model)        # ("fc", "ema_l2", "soft", "hpm"): the logits the head really has
    judge_mode(model)        # "hpm": the model's own output (mode=None), which judges attacks
    is_coupled(model, "hpm") # True: a row's logits depend on the whole batch

Parameters live under `params/backbone/...` and `params/head/...`, so a head can be
replaced while the backbone's (converted, pretrained) weights stay where they are.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hpm_jax.models.heads import Logits, Mode, canonical_mode, parse_modes


def check_images(x: jax.Array, in_channels: int, name: str) -> None:
    """Static checks on an image batch: NHWC, floating point, `in_channels` channels.

    Values are not checked here (that needs concrete arrays); data pipelines and attacks
    check the [0, 1] range at their boundaries.
    """
    if x.ndim != 4:
        raise ValueError(
            f"{name} expects a batch of NHWC images (4 dimensions), got shape {x.shape}. "
            "Add a batch axis with x[None] for a single image, and put channels last."
        )
    if x.shape[-1] != in_channels:
        raise ValueError(
            f"{name} expects {in_channels} channel(s) last (NHWC), got shape {x.shape}. "
            "Convert NCHW PyTorch batches with x.transpose(0, 2, 3, 1)."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name} expects floating-point images in [0, 1], got dtype {x.dtype}. "
            "Convert uint8 images with x.astype(jnp.float32) / 255."
        )


class Classifier(nn.Module):
    """Backbone (images -> features of size D) followed by a head (features -> logits).

    The backbone must take `(x, train=...)` and expose `in_channels`; the head takes
    `(features, labels, train=..., mode=...)` so that dynamic heads (HPM) can use labels
    in training and choose a surrogate `mode` at apply time: a mode name gives logits
    (B, C), a tuple of names a dict {mode: logits} from one backbone pass, None the head's
    own output (its `judge_mode`).
    """

    backbone: nn.Module
    head: nn.Module

    def features(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        check_images(x, self.backbone.in_channels, type(self.backbone).__name__)
        return self.backbone(x, train=train)

    def __call__(
        self,
        x: jax.Array,
        labels: jax.Array | None = None,
        *,
        train: bool = False,
        mode: Mode | None = None,
    ) -> Logits:
        return self.head(self.features(x, train=train), labels, train=train, mode=mode)

    def head_logits(
        self,
        features: jax.Array,
        labels: jax.Array | None = None,
        *,
        train: bool = False,
        mode: Mode | None = None,
    ) -> Logits:
        """The head alone: penultimate features (B, D) -> logits (`method="head_logits"`)."""
        return self.head(features, labels, train=train, mode=mode)


def _declared_head(model: nn.Module) -> nn.Module:
    """The head of a Classifier (or a head itself) that declares its modes."""
    head = model.head if isinstance(model, Classifier) else model
    if not all(hasattr(head, a) for a in ("logits_modes", "judge_mode", "coupled_modes")):
        raise ValueError(
            f"A {type(head).__name__} head does not declare its modes; give its class the "
            "attributes logits_modes, judge_mode and coupled_modes (see hpm_jax.models.heads)."
        )
    return head


def head_modes(model: nn.Module) -> tuple[str, ...]:
    """The logits modes the head of `model` (a Classifier, or a head) really has, aliases
    ("ste") left out: ("fc",), ("ema_l2",) or ("fc", "ema_l2", "soft", "hpm")."""
    return tuple(_declared_head(model).logits_modes)


def judge_mode(model: nn.Module) -> str:
    """The mode of the model's own output (what mode=None gives): "fc", "ema_l2" or "hpm"."""
    return _declared_head(model).judge_mode


def is_coupled(model: nn.Module, mode: str) -> bool:
    """Whether a row's logits in `mode` depend on the other rows of the batch (HPM's "hpm",
    "ste" and "soft"); ValueError for a mode the head does not have."""
    head = _declared_head(model)
    parse_modes(mode, head)
    return canonical_mode(mode) in head.coupled_modes


def check_mode(model: nn.Module, mode: Mode | None) -> None:
    """ValueError unless the head of `model` has `mode` (None: its own output, always)."""
    parse_modes(mode, _declared_head(model))


def abstract_variables(model: Classifier) -> Any:
    """The shapes and dtypes of `model`'s variables, computing nothing (restore targets)."""
    backbone = model.backbone
    size, channels = backbone.image_size, backbone.in_channels
    images = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
