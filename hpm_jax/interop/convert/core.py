"""PyTorch state dicts -> Flax variables for the models of `hpm_jax.models`.

    state_dict = load_state_dict("Carmon2019Unlabeled.pt")          # plain numpy arrays
    variables = torch_to_flax("wide_resnet", state_dict, depth=28, width=10)
    logits = get_model("wide_resnet", num_classes=10, depth=28, width=10).apply(variables, x)

Each architecture contributes one function, `rename(torch_module) -> flax_module | None`,
mapping a torch module path ("layer1.0.conv1") to its Flax path ("backbone/layer1_0/conv1"),
`None` for modules the forward pass never uses, or `NORMALIZATION` for a module whose
`mean`/`std` buffers must equal the constants the Flax model normalises with. The tensor
layouts (OIHW -> HWIO, Linear transposes, BatchNorm leaves) are handled here, once.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from hpm_jax.models import abstract_variables, get_model
from hpm_jax.models.export import CheckpointMismatchError

NORMALIZATION = "<normalization>"
Rename = Callable[[str], str | None]

# arch -> "module:function" giving its rename function (imported lazily).
RENAMES: dict[str, str] = {
    "small_cnn": "hpm_jax.interop.convert.resnet_names:rename_small_cnn",
    "resnet18": "hpm_jax.interop.convert.resnet_names:rename_resnet18",
    "preact_resnet18": "hpm_jax.interop.convert.resnet_names:rename_preact_resnet18",
    "wide_resnet": "hpm_jax.interop.convert.wide_resnet_names:rename_wide_resnet",
    "dm_wide_resnet": "hpm_jax.interop.convert.wide_resnet_names:rename_dm_wide_resnet",
    "resnet50": "hpm_jax.interop.convert.torchvision_names:rename_resnet50",
}

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "params")
_STRIPPED_PREFIXES = ("module.", "model.")
_IGNORED_SUFFIXES = ("num_batches_tracked",)


def unwrap_state_dict(obj: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A flat {torch key: float32 array} from a loaded file.

    Undoes RobustBench conventions: a `state_dict` (or `model`, `net`) wrapper and the
    `module.` (DataParallel) and `model.` prefixes.
    """
    while True:
        arrays = {k: v for k, v in obj.items() if hasattr(v, "shape")}
        wrappers = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        if arrays or not wrappers:
            break
        obj = obj[wrappers[0]]
    if not arrays:
        raise ValueError(
            f"No tensors found in the checkpoint (top-level keys: {sorted(obj)[:10]}). "
            "Pass a PyTorch state dict, possibly wrapped as {'state_dict': ...}."
        )
    out = {}
    for key, value in arrays.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _STRIPPED_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        out[key] = np.asarray(_to_numpy(value))
    return out


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; bfloat16 has no numpy twin, go via float32
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def get_rename(arch: str) -> Rename:
    if arch not in RENAMES:
        raise ValueError(f"No checkpoint conversion for {arch!r}; convertible: {sorted(RENAMES)}.")
    module_name, fn_name = RENAMES[arch].split(":")
    return getattr(importlib.import_module(module_name), fn_name)


def _split(key: str) -> tuple[str, str]:
    module, _, leaf = key.rpartition(".")
    return module, leaf


def _infer_num_classes(state_dict: Mapping[str, np.ndarray], rename: Rename) -> int | None:
    for key, value in state_dict.items():
        module, leaf = _split(key)
        if leaf == "weight" and rename(module) == "head/fc" and value.ndim == 2:
            return int(value.shape[0])
    return None


def _leaf_target(leaf: str, flax_module: str, targets: Mapping[str, Any]) -> str | None:
    """The Flax variable path a torch leaf (`weight`, `running_mean`, ...) goes to."""
    if leaf == "weight":
        for name in ("kernel", "scale"):
            if f"params/{flax_module}/{name}" in targets:
                return f"params/{flax_module}/{name}"
        return f"params/{flax_module}/kernel"
    return {
        "bias": f"params/{flax_module}/bias",
        "running_mean": f"batch_stats/{flax_module}/mean",
        "running_var": f"batch_stats/{flax_module}/var",
    }.get(leaf)


def _to_flax_layout(value: np.ndarray, target_path: str) -> np.ndarray:
    if target_path.endswith("/kernel"):
        if value.ndim == 4:  # conv: torch (out, in, kh, kw) -> flax (kh, kw, in, out)
            return value.transpose(2, 3, 1, 0)
        if value.ndim == 2:  # linear: torch (out, in) -> flax (in, out)
            return value.T
    return value


def torch_to_flax(
    arch: str, state_dict: Mapping[str, Any], **arch_kwargs: Any
) -> dict[str, dict[str, Any]]:
    """Flax variables (`params`, `batch_stats`) for `get_model(arch, **arch_kwargs)`.

    `num_classes` is read from the final linear layer when not given. Raises
    `CheckpointMismatchError` listing every missing, unexpected and mis-shaped key.
    """
    state_dict = unwrap_state_dict(state_dict)
    rename = get_rename(arch)
    if "num_classes" not in arch_kwargs:
        num_classes = _infer_num_classes(state_dict, rename)
        if num_classes is None:
            raise CheckpointMismatchError(
                arch,
                ["params/head/fc/kernel"],
                [],
                {},
                hint="No final linear layer found; is this the right architecture?",
            )
        arch_kwargs["num_classes"] = num_classes
    model = get_model(arch, **arch_kwargs)
    backbone = model.backbone
    shapes = abstract_variables(model)
    targets = {
        "/".join(path): leaf for path, leaf in traverse_util.flatten_dict(dict(shapes)).items()
    }

    converted: dict[str, np.ndarray] = {}
    unexpected: list[str] = []
    misshaped: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    reached: set[str] = set()  # target paths some torch key went to, fitting or not
    for key, value in state_dict.items():
        module, leaf = _split(key)
        if leaf in _IGNORED_SUFFIXES:
            continue
        flax_module = rename(module)
        if flax_module is None:
            continue
        if flax_module == NORMALIZATION:
            _check_normalization(arch, key, leaf, value, backbone)
            continue
        path = _leaf_target(leaf, flax_module, targets)
        if path is None or path not in targets:
            unexpected.append(key)
            continue
        reached.add(path)
        flax_value = _to_flax_layout(value, path)
        if flax_value.shape != tuple(targets[path].shape):
            misshaped[key] = (tuple(value.shape), tuple(targets[path].shape))
            continue
        converted[path] = flax_value.astype(targets[path].dtype)

    missing = sorted(p for p in targets if p not in reached)
    if missing or unexpected or misshaped:
        raise CheckpointMismatchError(
            arch,
            missing,
            sorted(unexpected),
            misshaped,
            hint=f"Checkpoint shapes are in torch layout. Check the options ({arch_kwargs}).",
        )
    nested = traverse_util.unflatten_dict({tuple(p.split("/")): v for p, v in converted.items()})
    return {col: nested.get(col, {}) for col in ("params", "batch_stats")}


def _check_normalization(arch: str, key: str, leaf: str, value: np.ndarray, backbone) -> None:
    expected = {"mean": "mean", "mu": "mean", "std": "std", "sigma": "std"}.get(leaf)
    constant = getattr(backbone, expected, None) if expected else None
    if constant is None:
        raise CheckpointMismatchError(
            arch, [], [key], {}, hint=f"{arch} does not normalise its input inside the model."
        )
    if not np.allclose(value.reshape(-1), np.asarray(constant), atol=1e-6):
        raise ValueError(
            f"The checkpoint normalises with {leaf}={value.reshape(-1).tolist()} but {arch} was "
            f"built with {expected}={list(constant)}; pass {expected}=... to match the checkpoint."
        )
