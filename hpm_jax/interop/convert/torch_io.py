"""Read checkpoint files safely: `torch.load(..., weights_only=True)` or safetensors.

    state_dict = load_state_dict("model.pt")       # {torch key: np.ndarray}, wrappers removed

No arbitrary unpickling: a file that needs it is refused with an explanation.
"""

from __future__ import annotations

import os

import numpy as np

from hpm_jax.interop.convert.core import unwrap_state_dict


def load_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, np.ndarray]:
    """The tensors of a `.pt`/`.pth`/`.ckpt` (PyTorch) or `.safetensors` file, as numpy.

    `key` selects one entry of a file holding several state dicts (RobustBench's
    Andriushchenko2020Understanding: {"last": ..., "best": ...}).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at {path!r}.")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return unwrap_state_dict(load_file(path))
    try:
        import torch
    except ImportError:
        raise ImportError(
            "Reading PyTorch checkpoints needs torch: pip install 'hpm-jax[torch]' "
            "(or convert the file to .safetensors elsewhere)."
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError and friends with long messages.
        raise ValueError(
            f"Could not read {path!r} as a weights-only PyTorch checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0]}). Files that pickle whole models or custom classes are "
            "refused for safety; re-save them with torch.save(model.state_dict(), path)."
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path!r} holds a {type(obj).__name__}, not a state dict.")
    if key is not None:
        if not isinstance(obj.get(key), dict):
            raise ValueError(f"{path!r} has no state dict under {key!r}; keys: {sorted(obj)[:10]}.")
        obj = obj[key]
    return unwrap_state_dict(obj)
