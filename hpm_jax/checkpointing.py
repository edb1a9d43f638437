"""Orbax checkpoints of model variables, with the model's description beside them.

    save_model("/tmp/rn18", variables, arch="resnet18", num_classes=10)
    model, variables = load_model("/tmp/rn18")           # rebuilt from model.json
    logits = model.apply(variables, x)

`DIR/model.json` records the registry name and keyword arguments; `DIR/variables` is an
Orbax checkpoint restored against `jax.eval_shape` of the model's init, so a checkpoint
that does not fit the architecture fails with a clear message, not deep inside Orbax.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from hpm_jax.models import Classifier, get_model

MODEL_SPEC = "model.json"
VARIABLES = "variables"


def save_model(directory: str, variables: Any, *, arch: str, **model_kwargs: Any) -> str:
    """Write `variables` and the description `get_model(arch, **model_kwargs)`; returns DIR."""
    directory = os.path.abspath(directory)
    target = os.path.join(directory, VARIABLES)
    if os.path.exists(target):
        raise FileExistsError(f"{target} exists; choose a new --out directory or delete it.")
    os.makedirs(directory, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(target, variables)
    checkpointer.wait_until_finished()
    # The description goes last: a directory with model.json always has whole variables.
    with open(os.path.join(directory, MODEL_SPEC), "w") as f:
        json.dump({"arch": arch, "kwargs": model_kwargs}, f, indent=2)
    return directory


def model_from_spec(directory: str) -> tuple[Classifier, dict[str, Any]]:
    path = os.path.join(directory, MODEL_SPEC)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{directory} is not an hpm-jax model checkpoint (no {MODEL_SPEC}); write one with "
            "`python -m hpm_jax.convert` or hpm_jax.checkpointing.save_model."
        )
    with open(path) as f:
        spec = json.load(f)
    return get_model(spec["arch"], **spec["kwargs"]), spec


def load_model(directory: str) -> tuple[Classifier, dict[str, Any]]:
    """The model described in DIR/model.json and its variables restored from DIR/variables."""
    directory = os.path.abspath(directory)
    model, _ = model_from_spec(directory)
    backbone = model.backbone
    dummy = jnp.zeros((1, backbone.image_size, backbone.image_size, backbone.in_channels))
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy))
    try:
        variables = ocp.StandardCheckpointer().restore(os.path.join(directory, VARIABLES), target)
    except (ValueError, KeyError) as e:
        raise ValueError(
            f"The variables in {directory} do not match the architecture in its {MODEL_SPEC}: "
            f"{str(e).splitlines()[0]}"
        ) from None
    return model, variables
