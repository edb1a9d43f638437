"""Flax Linen models: backbones of the robust-model zoo composed with swappable heads.

    from hpm_jax.models import get_model
    model = get_model("wide_resnet", num_classes=10, depth=28, width=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    logits = model.apply(variables, x)                             # eval mode
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    feats = model.apply(variables, x, method="features")           # penultimate features
    fn = logits_fn(model, variables, mode="fc")    # for the attacks: weights traced (logits.py)
    fns = logits_fns(model, variables, ("fc", "hpm", "ste"))   # "ste" shares "hpm"'s function
    head_modes(model), judge_mode(model)           # the modes its head has; its own output
    out, updates = forward(model, variables, x, y, train=True, modes=("hpm", "fc"),
                           mutable=("batch_stats", "prototypes"))   # the training forward
    hpm = get_model("small_cnn", num_classes=10, head="hpm", mixing="count")  # HPM head

This package is the only place Flax modules live; everything else sees `apply`.
"""

from hpm_jax.models.classifier import (
    Classifier,
    abstract_variables,
    check_mode,
    head_modes,
    is_coupled,
    judge_mode,
)
from hpm_jax.models.heads import MIXINGS, MODES, PROTOTYPES, FCHead, HPMHead, L2Head
from hpm_jax.models.logits import forward, head_logits_fn, logits_fn, logits_fns
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
    "check_mode",
    "forward",
    "get_backbone",
    "get_model",
    "head_logits_fn",
    "head_modes",
    "is_coupled",
    "judge_mode",
    "logits_fn",
    "logits_fns",
]
