"""Experiment configs: `configs/NAME.py` files whose `get_config(arg=None)` returns a
`ConfigDict` of plain values, overridable with dotted keys.

In a program (absl flags, as `--config=configs/fashion_mnist.py:local --config.train.lr=0.1`):

    _CONFIG = config_lib.define_config_flag()
    def main(argv): config = _CONFIG.value

In Python (tests, notebooks):

    config = load_config("configs/fashion_mnist.py:local", ["train.num_steps=20"])

`:local` passes "local" to `get_config`, which returns the small laptop variant.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

_PLAIN = (bool, int, float, str, type(None))


def define_config_flag(name: str = "config", help_string: str = "Config file.") -> flags.FlagHolder:
    """The `--config=path.py[:arg]` flag with `--config.a.b=value` overrides (absl programs)."""
    return config_flags.DEFINE_config_file(name, None, help_string, lock_config=True)


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """`get_config(arg)` of the file in `spec` ("path.py" or "path.py:arg"), then overrides."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No config file {path!r} (from {spec!r}); see configs/.")
    module_spec = importlib.util.spec_from_file_location("_hpm_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} defines no get_config(arg=None).")
    config = module.get_config(arg or None)
    check_plain(config)
    apply_overrides(config, overrides)
    return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Apply "a.b=value" strings; values are Python literals, or bare strings."""
    for override in overrides:
        key, sep, text = override.removeprefix("--config.").partition("=")
        if not sep:
            raise ValueError(f"Override {override!r} must look like train.lr=0.1.")
        parent, _, leaf = key.rpartition(".")
        node = config
        for part in parent.split(".") if parent else []:
            if part not in node:
                raise KeyError(f"Override {override!r}: no config key {key!r}.")
            node = node[part]
        if leaf not in node:
            raise KeyError(f"Override {override!r}: no config key {key!r}.")
        node[leaf] = _parse_value(text, node[leaf])


def _parse_value(text: str, current: Any) -> Any:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # a bare string, e.g. dataset=cifar10
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return value


def check_plain(config: ml_collections.ConfigDict, prefix: str = "") -> None:
    """Raise if any value is not a plain value (configs hold no objects or functions)."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            check_plain(value, f"{name}.")
        elif isinstance(value, (tuple, list)):
            if not all(isinstance(v, _PLAIN) for v in value):
                raise TypeError(f"Config value {name} holds non-plain items: {value!r}")
        elif not isinstance(value, _PLAIN):
            raise TypeError(f"Config value {name} is a {type(value).__name__}, not a plain value.")
