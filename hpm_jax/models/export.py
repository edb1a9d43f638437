"""Orbax checkpoints of model variables, with the model's description beside them.

    save_model("/tmp/rn18", variables, arch="resnet18", num_classes=10)
    save_model("/tmp/hpm", variables, arch="resnet18", num_classes=10, head="hpm", mixing="convex")
    model, variables = load_model("/tmp/rn18")           # rebuilt from model.json
    logits = model.apply(variables, x)

`DIR/model.json` records the registry name and keyword arguments (head and head options
included); `DIR/variables` is an Orbax checkpoint of every collection (`params`,
`batch_stats`, `prototypes`) restored against `jax.eval_shape` of the model's init, so a
checkpoint that does not fit the architecture fails with a clear message, not deep inside
Orbax. `save_model` checks the same before writing anything.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp

from hpm_jax.models import Classifier, abstract_variables, get_model
from hpm_jax.runtime import integrity

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
        self.hint = hint

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
    """Write `variables` and the description `get_model(arch, **model_kwargs)`; returns DIR.

    `model_kwargs` must be JSON values and describe the model `variables` belong to (e.g.
    `head="hpm", mixing="convex"` for HPM variables); both are checked before writing.
    """
    directory = os.path.abspath(directory)
    target = os.path.join(directory, VARIABLES)
    if os.path.exists(target):
        raise FileExistsError(f"{target} exists; choose a new --out directory or delete it.")
    try:
        spec = json.dumps({"arch": arch, "kwargs": model_kwargs}, indent=2)
    except TypeError as e:
        raise TypeError(
            f"save_model: model options must be JSON values (str, number, bool, list): {e}."
        ) from None
    wanted = _shapes(abstract_variables(get_model(arch, **model_kwargs)))
    _check_fits(
        arch,
        _shapes(variables),
        wanted,
        hint=f"pass the options of the model these variables belong to, e.g. head='hpm' "
        f"(given: {model_kwargs}).",
    )
    os.makedirs(directory, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(target, variables)
    checkpointer.wait_until_finished()
    # The description goes last, atomically: a directory with model.json always has whole
    # variables, and a prefix of model.json never parses (no checksum inside: it is part of
    # an evaluation's model identity, and other tools read it).
    integrity.write_bytes(os.path.join(directory, MODEL_SPEC), spec.encode())
    return directory


def model_from_spec(directory: str) -> tuple[Classifier, dict[str, Any]]:
    path = os.path.join(directory, MODEL_SPEC)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{directory} is not an hpm-jax model checkpoint (no {MODEL_SPEC}); write one with "
            "`python -m hpm_jax.convert` or hpm_jax.models.export.save_model."
        )
    spec = integrity.read_json(
        path,
        fix="write the model again (hpm_jax.train resumes from its checkpoints) or restore it",
    )
    return get_model(spec["arch"], **spec["kwargs"]), spec


def load_model(directory: str) -> tuple[Classifier, dict[str, Any]]:
    """The model described in DIR/model.json and its variables restored from DIR/variables."""
    directory = os.path.abspath(directory)
    model, spec = model_from_spec(directory)
    target = abstract_variables(model)
    checkpointer = ocp.StandardCheckpointer()
    path = os.path.join(directory, VARIABLES)
    with _readable(path):
        stored = checkpointer.metadata(path).item_metadata
        if not _shapes(stored):  # a zeroed _METADATA reads as an empty tree, not an error
            raise ValueError("it lists no arrays")
    hint = f"{directory}/{MODEL_SPEC} describes another model than the one saved there."
    _check_fits(spec["arch"], _shapes(stored), _shapes(target), hint)
    # Restore onto one local device: the stored shardings may name devices of another run
    # (e.g. a multi-process training job), which Orbax would refuse as a topology mismatch.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), target)
    with _readable(path):
        return model, checkpointer.restore(path, target)


@contextlib.contextmanager
def _readable(path: str):
    """Orbax's errors on a torn or missing variables checkpoint (a ValueError, OSError or
    whatever its readers raise, deep inside tensorstore) as one DamagedFileError naming it."""
    try:
        yield
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise integrity.DamagedFileError(
            path, f"Orbax cannot read it: {type(e).__name__}: {first}",
            "copy the model directory again from where it was made, or re-run the stage that "
            "saved it",
        ) from e  # fmt: skip


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _check_fits(arch: str, stored: Mapping, wanted: Mapping, hint: str) -> None:
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
            hint=hint,
        )
