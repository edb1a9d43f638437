"""Prototype state of l2 / HPM heads: convert FC variables, fill P_ema with class means.

    from hpm_jax import data
    from hpm_jax.models.prototypes import init_prototypes, with_head

    model = get_model("wide_resnet", num_classes=10, head="hpm", depth=28, width=10)
    variables = with_head(fc_variables, model)     # backbone, fc, batch_stats kept; s = 1, P = 0
    batches = data.eval_iterator(train_source, batch_size=500, mesh=mesh)
    variables = init_prototypes(model, variables, batches)   # P_ema[c] = mean feature of class c

Fine-tuning starts from a pretrained FC model: its weights drop into the HPM head unchanged
(`params/head/fc` is the same path), and P_ema starts at the exact dataset class means of
the eval-mode features (docs/design.md, section 1), not at an EMA warm-up.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.core import unfreeze
from jax.sharding import NamedSharding, PartitionSpec

from hpm_jax.models import PROTOTYPES, Classifier, abstract_variables
from hpm_jax.models.export import CheckpointMismatchError
from hpm_jax.runtime.sharding import global_replicated, host_values

# Leaves a head conversion may create (fresh init) or drop (FC -> l2 has no `fc`).
_NEW_HEAD_STATE = (("params", "head", "log_scale"), (PROTOTYPES, "head"))
_DROPPABLE = (("params", "head", "fc"),)


def _under(path: tuple[str, ...], prefixes: tuple[tuple[str, ...], ...]) -> bool:
    return any(path[: len(p)] == p for p in prefixes)


def _flat(tree: Any) -> dict[tuple[str, ...], Any]:
    return traverse_util.flatten_dict(unfreeze(tree))


def with_head(variables: Mapping[str, Any], model: Classifier) -> dict[str, Any]:
    """`variables` of a model with another head, refitted to `model`'s head.

    Every leaf at a path `model` also has is kept (backbone parameters, `params/head/fc`,
    `batch_stats`, and `log_scale` / prototypes if present). What the new head adds is
    freshly initialised: `log_scale` = log(init_scale) and zero prototypes with `seen` 0 (fill
    them with `init_prototypes`). `params/head/fc` is dropped for an l2 head. Anything else
    missing, extra or mis-shaped raises `CheckpointMismatchError`.
    """
    target = _flat(abstract_variables(model))
    source = _flat(variables)
    fresh: dict[tuple[str, ...], Any] = {}
    if (PROTOTYPES, "head", "ema") in target:
        dim = target[(PROTOTYPES, "head", "ema")].shape[1]
        # Jitted: one compilation instead of one per op (seconds on a busy CPU).
        head_vars = jax.jit(model.head.init)(jax.random.key(0), jnp.zeros((1, dim), jnp.float32))
        fresh = {
            (collection, "head", *rest): leaf
            for (collection, *rest), leaf in _flat(head_vars).items()
        }
    out, missing, misshaped = {}, [], {}
    for path, want in target.items():
        key = "/".join(path)
        if path in source:
            have = tuple(np.shape(source[path]))
            if have != tuple(want.shape):
                misshaped[key] = (have, tuple(want.shape))
            out[path] = source[path]
        elif _under(path, _NEW_HEAD_STATE):
            out[path] = fresh[path]
        else:
            missing.append(key)
    unexpected = ["/".join(p) for p in source if p not in target and not _under(p, _DROPPABLE)]
    if missing or unexpected or misshaped:
        raise CheckpointMismatchError(
            f"{type(model.backbone).__name__} + {type(model.head).__name__}",
            sorted(missing),
            sorted(unexpected),
            misshaped,
            hint="with_head only swaps heads: the backbone and num_classes must be the same.",
        )
    return traverse_util.unflatten_dict(out)


def init_prototypes(
    model: Classifier, variables: Mapping[str, Any], batches: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """`variables` with P_ema[c] = the mean eval-mode feature of class c over `batches`.

    `batches` yield `{"image", "label"}` and optionally `"mask"` (False rows are padding and
    are left out), e.g. `hpm_jax.data.eval_iterator` over the training split. Means are exact
    global means (sums and counts over every device and batch, accumulated in one jitted
    step). `seen` becomes the per-class example count. Classes with no example keep their
    prototype and count, with a warning.
    """
    protos = variables.get(PROTOTYPES, {}).get("head")
    if protos is None:
        raise ValueError(
            f"init_prototypes needs a model whose head keeps prototypes (head='l2' or 'hpm'); "
            f"these variables have no `{PROTOTYPES}/head`. Convert FC variables first with "
            "hpm_jax.models.prototypes.with_head(variables, model)."
        )
    num_classes, dim = protos["ema"].shape

    def accumulate(variables, sums, counts, images, labels, mask):
        feats = model.apply(variables, images, method="features").astype(jnp.float32)
        weights = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * mask[:, None]
        sums = sums + jnp.matmul(weights.T, feats, precision=jax.lax.Precision.HIGHEST)
        return sums, counts + weights.sum(axis=0).astype(jnp.int32)

    step = jax.jit(accumulate, donate_argnums=(1, 2))
    sums, counts = jnp.zeros((num_classes, dim), jnp.float32), jnp.zeros(num_classes, jnp.int32)
    placed = False
    for batch in batches:
        images, labels = batch["image"], batch["label"]
        mask = batch.get("mask")
        mask = jnp.ones(labels.shape[0], bool) if mask is None else mask
        if not placed:  # replicate the state over the batches' mesh, once
            sharding = getattr(images, "sharding", None)
            if isinstance(sharding, NamedSharding):
                replicated = NamedSharding(sharding.mesh, PartitionSpec())
                # The mesh may span processes (multi-host training): not a device_put.
                variables, sums, counts = global_replicated((variables, sums, counts), replicated)
                protos = variables[PROTOTYPES]["head"]
            placed = True
        sums, counts = step(variables, sums, counts, images, labels, mask)
    if not placed:
        raise ValueError("init_prototypes got no batches; pass an iterator over the training data.")

    counts_host = host_values(counts)
    absent = np.flatnonzero(counts_host == 0)
    if absent.size:
        warnings.warn(
            f"init_prototypes: classes {absent.tolist()} had no example; their prototypes are "
            "unchanged (the first training batch with them sets them).",
            stacklevel=2,
        )
    present = counts > 0
    ema = jnp.where(present[:, None], sums / jnp.maximum(counts, 1)[:, None], protos["ema"])
    seen = jnp.where(present, counts, protos["seen"]).astype(protos["seen"].dtype)
    out = dict(variables)
    out[PROTOTYPES] = {**variables[PROTOTYPES], "head": {"ema": ema, "seen": seen}}
    return out
