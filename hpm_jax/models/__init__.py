"""Flax Linen models: backbones of the robust-model zoo composed with swappable heads.

    from hpm_jax.models import get_model
    model = get_model("wide_resnet", num_classes=10, depth=28, width=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    logits = model.apply(variables, x)                             # eval mode
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    feats = model.apply(variables, x, method="features")           # penultimate features
    fn = logits_fn(model, variables, mode="fc")    # for the attacks: weights traced (logits.py)
    hpm = get_model("small_cnn", num_classes=10, head="hpm", mixing="count")  # HPM head

This package is the only place Flax modules live; everything else sees `apply`.
"""

from hpm_jax.models.classifier import Classifier, abstract_variables
from hpm_jax.models.heads import MIXINGS, MODES, PROTOTYPES, FCHead, HPMHead, L2Head
from hpm_jax.models.logits import logits_fn
from hpm_jax.models.registry import BACKBONES, HEADS, get_backbone, get_model

__all__ = [
    "BACKBONES",
    "HEADS",
    "MIXINGS",
    "MODES",
    "PROTOTYPES",
    "Classifier",
    "FCHead",
    "HPMHead",
    "L2Head",
    "abstract_variables",
    "get_backbone",
    "get_model",
    "logits_fn",
]
