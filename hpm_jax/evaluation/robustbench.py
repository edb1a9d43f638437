"""Evaluate a RobustBench model the way RobustBench does: its eps, subsets, order and report.

    hpm-evaluate --robustbench Carmon2019Unlabeled --workdir /tmp/carmon_eval
    config = robustbench_config(entry("Carmon2019Unlabeled"))   # dataset + evaluation sections
    indices = robustbench_indices(source, "cifar10", 1000)      # records in RobustBench's order
    model_info(info, report)          # the model_info/<dataset>/<threat model>/<name>.json fields

Subsets and order (RobustBench's `load_cifar10` / `load_imagenet`, robustbench 1.1.1):

* CIFAR-10/100: the first n images of the test set in its original order (the order of
  `test_batch.bin` / `test`, which torchvision keeps). TFDS writes its splits shuffled by a
  hash of each record's key, so TFDS's first n are other images; its cifar10/cifar100 records
  carry the original position in `id` ("test_00042"), and the evaluation reads every id once
  to take the images in the original order. A source without ids (an .npz data file, the
  Debian Fashion-MNIST) is used in its own order, and the report says so.
* ImageNet: the 5000 validation images listed in RobustBench's
  `robustbench/helper_files/imagenet_test_image_ids.txt` (read from the installed
  `robustbench` package: `pip install --no-deps robustbench==1.1.1`), in that order, matched to
  TFDS imagenet2012 records by `file_name`; labels are the sorted-wnid indices in both.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import ml_collections
import numpy as np

from hpm_jax.interop.zoo.robustbench_table import RobustBenchModel

# RobustBench dataset -> (TFDS name, eval split, RobustBench's full evaluation size).
DATASETS = {
    "cifar10": ("cifar10", "test", 10000),
    "cifar100": ("cifar100", "test", 10000),
    "imagenet": ("imagenet2012", "validation", 5000),
}
IMAGENET_IDS = "helper_files/imagenet_test_image_ids.txt"  # inside the robustbench package
ORDERS = ("source", "robustbench")


class SubsetError(ValueError):
    """RobustBench's subset cannot be taken from this source."""


def robustbench_config(info: RobustBenchModel) -> ml_collections.ConfigDict:
    """A config with `dataset` and `evaluation` sections for a RobustBench entry: the
    leaderboard's eps and norm, RobustBench's subset size and order, AutoAttack standard."""
    name, split, n = DATASETS[info.dataset]
    config = ml_collections.ConfigDict()
    config.dataset = ml_collections.ConfigDict(
        {"name": name, "eval_split": split, "train_split": "train", "data_dir": ""}
    )
    config.evaluation = ml_collections.ConfigDict(
        {
            "norm": info.threat_model,
            "eps": float(info.eps),
            "num_examples": n,
            "batch_size": 200,
            "order": "robustbench",
        }
    )
    return config


def _ids(source) -> list[str] | None:
    raw = getattr(source, "raw", None)
    if raw is None:
        return None
    return [raw(i).get("id") for i in range(len(source))]


def robustbench_indices(source, dataset: str, n: int) -> tuple[np.ndarray, str]:
    """Indices into `source` of RobustBench's first `n` evaluation images, in its order, and a
    sentence saying which order that is."""
    if dataset.startswith("imagenet"):
        return _imagenet_indices(source, n)
    ids = _ids(source)
    prefix = "test_"
    if ids is None or not all(isinstance(i, str | bytes) for i in ids):
        return np.arange(n), "the source's order (it has no original ids to restore)"
    ids = [i.decode() if isinstance(i, bytes) else i for i in ids]
    try:
        original = np.asarray([int(i[len(prefix):]) for i in ids])  # fmt: skip
    except ValueError:
        return np.arange(n), "the source's order (its ids are not test_NNNNN)"
    where = np.full(len(ids), -1)
    where[original] = np.arange(len(ids))
    if (where[:n] < 0).any():
        raise SubsetError(f"the source lacks some of the first {n} original test images.")
    return where[:n], f"the first {n} of the original test set, in its original order"


def imagenet_ids() -> list[str]:
    """RobustBench's 5000 ImageNet validation ids ("n01440764/ILSVRC2012_val_00000293.JPEG")."""
    spec = importlib.util.find_spec("robustbench")  # not imported: its __init__ needs torchvision
    if spec is None or not spec.submodule_search_locations:
        raise SubsetError(
            "RobustBench's ImageNet subset is listed in the robustbench package: "
            "pip install --no-deps robustbench==1.1.1 (or --config.evaluation.order=source)."
        )
    path = os.path.join(next(iter(spec.submodule_search_locations)), IMAGENET_IDS)
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _imagenet_indices(source, n: int) -> tuple[np.ndarray, str]:
    if n > 5000:
        raise SubsetError(f"RobustBench evaluates ImageNet on at most 5000 images, not {n}.")
    raw = getattr(source, "raw", None)
    if raw is None:
        raise SubsetError("the ImageNet source gives no file names to match RobustBench's ids.")
    wanted = [i.split("/")[-1] for i in imagenet_ids()[:n]]
    names = {}
    for i in range(len(source)):
        name = raw(i).get("file_name")
        names[name.decode() if isinstance(name, bytes) else name] = i
    missing = [w for w in wanted if w not in names]
    if missing:
        raise SubsetError(f"{len(missing)} of RobustBench's ImageNet ids are not in the source "
                          f"(e.g. {missing[0]}).")  # fmt: skip
    return np.asarray([names[w] for w in wanted]), (
        f"RobustBench's first {n} listed ImageNet validation ids, in the listed order"
    )


def _fraction(eps: float) -> str:
    """RobustBench writes eps as "8/255" (Linf) or "0.5" (L2)."""
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and eps < 1 else f"{eps:g}"


def model_info(info: RobustBenchModel, report: dict[str, Any]) -> dict[str, Any]:
    """RobustBench's model_info fields (`robustbench.utils.ModelInfo`, as `update_json` writes
    them: accuracies as percent strings with two decimals) for this evaluation, plus the
    leaderboard's figures beside ours. `name` is the leaderboard's model name (RobustBench's
    JSONs hold the paper title there; our table does not carry titles or links)."""
    row = report["heads"]["fc"]
    return {
        "link": None,
        "name": info.name,
        "authors": None,
        "additional_data": None,
        "number_forward_passes": 1,
        "dataset": info.dataset,
        "venue": None,
        "architecture": f"{info.arch}({', '.join(f'{k}={v}' for k, v in info.kwargs.items())})",
        "eps": _fraction(float(report["threat_model"]["eps"])),
        "clean_acc": f"{round(100 * row['clean_accuracy'], 2)}",
        "reported": None,
        "autoattack_acc": f"{round(100 * row['autoattack']['robust_accuracy'], 2)}",
        "footnote": f"hpm-jax AutoAttack ({report['settings']['version']}) on "
        f"{report['num_examples']} points: {report['order']}.",
        "threat_model": info.threat_model,
        "leaderboard": {
            "clean_acc": info.clean_acc,
            "autoattack_acc": info.autoattack_acc,
            "external": info.external_acc,
            "eps": float(info.eps),
        },
    }
