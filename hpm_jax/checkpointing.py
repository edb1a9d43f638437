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
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp

from hpm_jax.models import Classifier, abstract_variables, get_model

MODEL_SPEC = "model.json"
VARIABLES = "variables"
_MAX_LISTED = 25


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the architecture; lists missing, unexpected, mis-shaped keys."""

    def __init__(
        self,
        arch: str,
        missing: Sequence[str],
        unexpected: Sequence[str],
        misshaped: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]],
        hint: str = "",
    ):
        self.missing, self.unexpected, self.misshaped = list(missing), list(unexpected), misshaped

        def listing(title: str, items: list[str]) -> str:
            if not items:
                return ""
            shown = "\n    ".join(items[:_MAX_LISTED])
            extra = len(items) - _MAX_LISTED
            more = f"\n    ... and {extra} more" if extra > 0 else ""
            return f"\n  {title} ({len(items)}):\n    {shown}{more}"

        shapes = [f"{k}: checkpoint {a}, model {b}" for k, (a, b) in misshaped.items()]
        super().__init__(
            f"The checkpoint does not match architecture {arch!r}."
            + listing("missing from the checkpoint", self.missing)
            + listing("unexpected in the checkpoint", self.unexpected)
            + listing("mis-shaped", shapes)
            + (f"\n  {hint}" if hint else "")
        )


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
    model, spec = model_from_spec(directory)
    target = abstract_variables(model)
    checkpointer = ocp.StandardCheckpointer()
    path = os.path.join(directory, VARIABLES)
    stored = checkpointer.metadata(path).item_metadata
    _check_fits(spec["arch"], _shapes(stored), _shapes(target), directory)
    return model, checkpointer.restore(path, target)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _check_fits(arch: str, stored: Mapping, wanted: Mapping, directory: str) -> None:
    missing = sorted(set(wanted) - set(stored))
    unexpected = sorted(set(stored) - set(wanted))
    misshaped = {
        k: (stored[k], wanted[k]) for k in sorted(wanted) if stored.get(k, wanted[k]) != wanted[k]
    }
    if missing or unexpected or misshaped:
        raise CheckpointMismatchError(
            arch,
            missing,
            unexpected,
            misshaped,
            hint=f"{directory}/{MODEL_SPEC} describes another model than the one saved there.",
        )
