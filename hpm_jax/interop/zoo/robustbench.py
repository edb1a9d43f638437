"""RobustBench models by leaderboard name, as hpm-jax Flax models.

    from hpm_jax.interop.zoo import load_robustbench
    model, variables = load_robustbench("Carmon2019Unlabeled")          # cifar10, Linf
    logits = model.apply(variables, x)          # x: float32 NHWC in [0, 1], 32x32x3
    model, variables = load_robustbench("Salman2020Do_R50", dataset="imagenet")

The checkpoint is read from `model_dir/<dataset>/<threat_model>/<name>.pt`, the file
RobustBench's own `load_model` caches, so an existing RobustBench `./models` directory is used
as is. A missing file is downloaded from RobustBench's source when the network is there;
without network the call fails within seconds, naming the path to place the file at.
Architecture, options and normalisation come from `hpm_jax.interop.zoo.robustbench_table`.
"""

from __future__ import annotations

import os

import jax

from hpm_jax.interop.zoo import download
from hpm_jax.interop.zoo.robustbench_table import RobustBenchModel, lookup
from hpm_jax.models import Classifier, get_model

_THREAT_MODELS = {"linf": "Linf", "l2": "L2"}


def entry(name: str, dataset: str = "cifar10", threat_model: str = "Linf") -> RobustBenchModel:
    """The table entry; `threat_model` is case-insensitive ("linf" == "Linf")."""
    return lookup(name, dataset.lower(), _THREAT_MODELS.get(threat_model.lower(), threat_model))


def checkpoint_path(info: RobustBenchModel, model_dir: str | os.PathLike = "./models") -> str:
    """Where RobustBench caches the checkpoint: `model_dir/<dataset>/<threat_model>/<name>.pt`."""
    return os.path.abspath(
        os.path.join(os.fspath(model_dir), info.dataset, info.threat_model, f"{info.name}.pt")
    )


def model_kwargs(info: RobustBenchModel) -> dict:
    """`get_model` keyword arguments (plain JSON values, as `save_model` records them)."""
    plain = {k: list(v) if isinstance(v, tuple | list) else v for k, v in info.kwargs.items()}
    return {"num_classes": info.num_classes, **plain}


def robustbench_variables(
    name: str,
    *,
    dataset: str = "cifar10",
    threat_model: str = "Linf",
    model_dir: str | os.PathLike = "./models",
    download_missing: bool = True,
) -> tuple[RobustBenchModel, dict]:
    """The table entry and the converted (numpy) variables of a RobustBench checkpoint."""
    # Imported here: the converter needs torch (the `torch` extra), the table does not.
    from hpm_jax.interop.convert import load_state_dict, torch_to_flax
    from hpm_jax.runtime.extras import optional_import

    info = entry(name, dataset, threat_model)
    optional_import("torch", extra="torch")  # before a download it could not read
    path = checkpoint_path(info, model_dir)
    what = f"RobustBench checkpoint {info.name} ({info.dataset}, {info.threat_model})"
    if not os.path.isfile(path) and not download_missing:
        raise download.CheckpointUnavailableError(
            f"{what} is not at {path} (downloads are off). Download it from "
            f"{download.source_page(info.source)} and place it at exactly that path."
        )
    download.fetch(info.source, path, what=what)
    state_dict = load_state_dict(path, key=info.checkpoint_key)
    return info, torch_to_flax(info.arch, state_dict, **model_kwargs(info))


def load_robustbench(
    name: str,
    *,
    dataset: str = "cifar10",
    threat_model: str = "Linf",
    model_dir: str | os.PathLike = "./models",
    download_missing: bool = True,
) -> tuple[Classifier, dict]:
    """(model, variables) of a RobustBench leaderboard model, with the FC head.

    `dataset` is "cifar10", "cifar100" or "imagenet"; `threat_model` "Linf" or "L2". Raises
    `ValueError` for a name not in the table (with close names), and
    `CheckpointUnavailableError` (a `FileNotFoundError`) when the file is missing and cannot
    be downloaded.
    """
    info, variables = robustbench_variables(
        name,
        dataset=dataset,
        threat_model=threat_model,
        model_dir=model_dir,
        download_missing=download_missing,
    )
    return get_model(info.arch, **model_kwargs(info)), jax.device_put(variables)
