"""Optional dependencies, imported with an error that names the extra to install.

    tfds = optional_import("tensorflow_datasets", extra="data")
    Figure = optional_import("matplotlib.figure", extra="reports").Figure

`pip install hpm-jax` gives the models, heads, attacks and checkpoints. The extras of
pyproject.toml add the rest: `data` (TFDS, grain, Pillow), `train` (data + tensorboardX + tqdm),
`reports` (matplotlib), `torch` (PyTorch checkpoint import), `all`; and `cuda12` / `tpu`
for the accelerator builds of jax.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def optional_import(name: str, extra: str) -> ModuleType:
    """`importlib.import_module(name)`, or an ImportError saying `pip install 'hpm-jax[extra]'`."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        missing = e.name or name
        raise ImportError(
            f"{name} is not installed (missing module {missing!r}); it comes with hpm-jax's "
            f"'{extra}' extra: pip install 'hpm-jax[{extra}]' (or 'hpm-jax[all]')."
        ) from e
