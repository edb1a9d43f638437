"""Experiment configs: `configs/NAME.py` files whose `get_config(arg=None)` returns a
`ConfigDict` of plain values, overridable with dotted keys.

In a program (absl flags, as `--config=configs/fashion_mnist.py:local
--config.train.learning_rate=0.1`; `hpm_jax.cli.run` takes the `--config.*` arguments out
of argv before absl parses it):

    _CONFIG = cli.define_config_flag()
    def main(argv, overrides): config = load_config(_CONFIG.value, overrides)
    cli.run("hpm-train", main)

In Python (tests, notebooks):

    config = load_config("configs/fashion_mnist.py:local", ["train.num_steps=20"])

`:local` passes "local" to `get_config`, which returns the small laptop variant. Keys are
split at dots only, so names with hyphens override like any other:
`--config.evaluation.attack_options.apgd-ce.n_iter=10`; the identifier spelling `apgd_ce`
names the same key. A key that is not in the config is an error naming the keys that are
(`ConfigError`, also a KeyError: the one error type for config problems).

Why not `ml_collections.config_flags` (DEFINE_config_file): it parses `--config=path.py:arg`
and `--config.a.b=v` too, but it applies the overrides while absl parses the flags, to the
file's ConfigDict as it is, through paths that must be Python identifiers. The programs need
more than that: `hpm-evaluate` fills a config's missing evaluation knobs before applying
`--config.evaluation.*` (`hpm_jax.evaluate.load_evaluation_config`), the study and the zoo
apply override strings to configs built in code (study points, `hpm_jax.zoo.evaluation`),
attack names are keys with hyphens (`apgd-ce`: config_flags' path parser refuses them), a
whole section can be replaced by a dict literal (`--config.evaluation.attack_options={}`),
and every mistake is one line naming the key and the keys that are (config_flags reports an
unknown override as an unknown absl flag). So this module keeps its own small parser:
`split_overrides` (argv), `apply_overrides` (the tree walk and its errors) and
`load_config`; the rest is ml_collections' own (ConfigDict's type checks and its int ->
float conversion on assignment).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import types
from collections.abc import Sequence
from typing import Any

import ml_collections

_PLAIN = (bool, int, float, str, type(None))


class ConfigError(KeyError, ValueError):
    """A config file, variant or override that cannot be used; the message names the fix."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def split_overrides(argv: Sequence[str], name: str = "config") -> tuple[list[str], list[str]]:
    """(argv without its `--NAME.KEY=VALUE` arguments, those as "KEY=VALUE" strings in order).

    Also `--NAME.KEY VALUE`, and a bare `--NAME.KEY` / `--noNAME.KEY` for True / False."""
    rest, overrides = [], []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        for prefix, bare in ((f"--{name}.", "True"), (f"-{name}.", "True"),
                             (f"--no{name}.", "False")):  # fmt: skip
            if arg.startswith(prefix):
                key, sep, value = arg[len(prefix) :].partition("=")
                if (
                    not sep
                    and bare == "True"
                    and i + 1 < len(args)
                    and not args[i + 1].startswith("-")
                ):
                    value, sep = args[i + 1], "="
                    i += 1
                overrides.append(f"{key}={value if sep else bare}")
                break
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def load_module(path: str, relative_to: str | None = None) -> types.ModuleType:
    """The config file `path` run as a module (configs/ is not a package: files are read by
    path). `relative_to`: a file whose directory `path` is relative to, so that a config can
    build on another experiment: `load_module("fashion_mnist.py", relative_to=__file__)`."""
    if relative_to is not None:
        path = os.path.join(os.path.dirname(os.path.abspath(relative_to)), path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No config file {path!r}; see configs/.")
    module_spec = importlib.util.spec_from_file_location("_hpm_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """`get_config(arg)` of the file in `spec` ("path.py" or "path.py:arg"), then overrides."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No config file {path!r} (from {spec!r}); see configs/.")
    module = load_module(path)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config(arg=None).")
    try:
        config = module.get_config(arg or None)
    except ValueError as e:  # the file's own check of its variants
        raise ConfigError(f"{spec}: {e}") from e
    check_plain(config)
    apply_overrides(config, overrides)
    return config


def parse_variants(arg: str | None, known: Sequence[str]) -> frozenset[str]:
    """The variants in a config file's `:arg` ("local,hpm"; None or "" = none), each one of
    `known`; an unknown one is a ValueError naming it and the known ones (`load_config`
    prefixes the spec). Whitespace around names and empty names are ignored."""
    variants = frozenset(v.strip() for v in (arg or "").split(",")) - {""}
    unknown = sorted(variants - set(known))
    if unknown:
        example = ",".join(known[:2])
        offer = f"its variants are {', '.join(known)}, e.g. :{example}" if known else "it has none"
        raise ValueError(f"Unknown variant(s) {unknown} of this config; {offer}.")
    return variants


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Apply "a.b=value" strings; values are Python literals, or bare strings."""
    for override in overrides:
        key, sep, text = override.removeprefix("--config.").partition("=")
        if not sep:
            raise ConfigError(f"Override {override!r} must look like train.learning_rate=0.1.")
        parts = key.split(".")
        node = config
        for depth, part in enumerate(parts):
            if isinstance(node, ml_collections.ConfigDict) and part not in node:
                parts[depth] = part = _hyphenated(node, part)
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise ConfigError(_unknown_key(config, parts, depth, override))
            if depth < len(parts) - 1:
                node = node[part]
        leaf, current = parts[-1], node[parts[-1]]
        value = _parse_value(text)
        if isinstance(current, ml_collections.ConfigDict) and isinstance(value, dict):
            node[leaf] = ml_collections.ConfigDict(value)  # a whole section, as a dict literal
            continue
        if isinstance(current, ml_collections.ConfigDict):
            raise ConfigError(
                f"Override {override!r}: config.{key} is a section; set one of its keys "
                f"({', '.join(sorted(current)) or 'none'}) or give a dict, e.g. "
                f"--config.{key}.{next(iter(sorted(current)), 'KEY')}=... or --config.{key}={{}}"
            )
        try:
            node[leaf] = value
        except TypeError:
            raise ConfigError(
                f"Override {override!r}: config.{key} holds a {type(current).__name__} "
                f"({current!r}), not a {type(value).__name__}."
            ) from None


def _unknown_key(config: ml_collections.ConfigDict, parts: list[str], depth: int, override):
    """The message for parts[depth], which is not in the config at parts[:depth]."""
    where = "config" + "".join(f".{p}" for p in parts[:depth])
    node = config
    for part in parts[:depth]:
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict):
        return f"Override {override!r}: {where} is a value, not a section."
    kind = "section" if depth < len(parts) - 1 else "key"
    hint = ""
    if depth == 0 and parts[0] == "evaluation":
        hint = (
            " This config file has no evaluation section: add one (see configs/fashion_mnist.py"
            " and hpm_jax.config_sections.evaluation)."
        )
    return (
        f"Override {override!r}: {where} has no {kind} {parts[depth]!r}; its keys are "
        f"{', '.join(sorted(node)) or '(none)'}.{hint}"
    )


def _hyphenated(node: ml_collections.ConfigDict, part: str) -> str:
    """`part`, or the key of `node` it spells as an identifier (apgd_ce for apgd-ce: the
    spelling ml_collections.config_flags would need)."""
    hyphenated = part.replace("_", "-")
    return hyphenated if hyphenated in node else part


def _parse_value(text: str) -> Any:
    """A Python literal, or a bare string (dataset=cifar10). An int given to a float key
    becomes a float when set: ConfigDict converts it."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


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
