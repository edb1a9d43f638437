"""Random-access data sources: `get_source(name, split)` -> records `{"image", "label"}`.

    source = get_source("cifar10", "train[:90%]", data_dir="~/tensorflow_datasets")
    len(source), source[0]["image"].shape        # 45000, (32, 32, 3) uint8 HWC
    dataset_info("cifar10").num_classes          # 10

Sources are TFDS datasets prepared as array_record, read with `tfds.data_source` (no
TensorFlow needed to read). Fashion-MNIST falls back to the Debian package
`dataset-fashion-mnist`. A dataset that is not on disk is downloaded and prepared only when
that can work (TensorFlow installed, network reachable); otherwise `DatasetNotFoundError`
comes at once, saying how to prepare it, instead of a blind download that hangs for minutes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hpm_jax.data import offline
from hpm_jax.runtime.extras import optional_import

tfds = optional_import("tensorflow_datasets", extra="data")

log = logging.getLogger(__name__)


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not prepared where we looked, and cannot be fetched from here."""


class Source(Protocol):
    """What the pipelines read: `len(source)` records `{"image": uint8 HWC, "label": int}`."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Facts about a dataset that models and programs need before reading it.

    `image_shape` is the HWC shape that reaches models: after the standard evaluation
    preprocessing for ImageNet (whose stored images vary in size), as stored otherwise.
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    train_split: str
    eval_split: str
    num_examples: dict[str, int]


_DATASETS = {
    info.name: info
    for info in [
        DatasetInfo("cifar10", 10, (32, 32, 3), "train", "test", {"train": 50000, "test": 10000}),
        DatasetInfo("cifar100", 100, (32, 32, 3), "train", "test", {"train": 50000, "test": 10000}),
        DatasetInfo(
            "imagenet2012",
            1000,
            (224, 224, 3),
            "train",
            "validation",
            {"train": 1281167, "validation": 50000},
        ),
        DatasetInfo("mnist", 10, (28, 28, 1), "train", "test", {"train": 60000, "test": 10000}),
        DatasetInfo(
            "fashion_mnist", 10, (28, 28, 1), "train", "test", {"train": 60000, "test": 10000}
        ),
    ]
}
KNOWN_DATASETS: tuple[str, ...] = tuple(_DATASETS)

# Hosts TFDS downloads each dataset from: reachable or not decides whether to try.
_DOWNLOAD_HOSTS = {
    "cifar10": ("www.cs.toronto.edu", 443),
    "cifar100": ("www.cs.toronto.edu", 443),
    "mnist": ("storage.googleapis.com", 443),
    "fashion_mnist": ("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80),
}


def dataset_info(name: str) -> DatasetInfo:
    """Number of classes, image shape, split names and sizes of a known dataset."""
    if name not in _DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; known datasets: {', '.join(KNOWN_DATASETS)}.")
    return _DATASETS[name]


class TfdsSource:
    """A `tfds.data_source` reduced to `{"image": uint8 HWC, "label": int}` records."""

    def __init__(self, name: str, split: str, tfds_source: Sequence[dict[str, Any]]):
        self.name, self.split = name, split
        self._source = tfds_source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self._source[index]
        return {"image": np.asarray(record["image"], np.uint8), "label": int(record["label"])}

    def raw(self, index: int) -> dict[str, Any]:
        """The whole TFDS record (e.g. CIFAR's `id`, ImageNet's `file_name`)."""
        return self._source[index]

    def __repr__(self) -> str:
        return f"TfdsSource({self.name!r}, split={self.split!r}, num_records={len(self)})"


class FirstRecords:
    """The first `n` records of a source (or all of a shorter one): prototype initialisation,
    monitoring and analyses need no full pass. Keeps the source's `name`, so "auto"
    augmentations still find it."""

    def __init__(self, source: Source, n: int):
        self._source, self._n = source, min(n, len(source))
        self.name = getattr(source, "name", None)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self._n:
            raise IndexError(index)
        return self._source[index]


def network_reachable(host: str, port: int = 443, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to `host` opens within `timeout` seconds (DNS included)."""
    result = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    # A thread bounds name resolution too, which create_connection's timeout does not cover.
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result)


def tensorflow_available() -> bool:
    """TFDS needs TensorFlow to prepare (encode) image datasets, though not to read them."""
    return importlib.util.find_spec("tensorflow") is not None


@contextlib.contextmanager
def _quiet_tfds_probe():
    """Silence TFDS's warnings about unprepared folders while we only look for a dataset."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def get_source(name: str, split: str, *, data_dir: str | os.PathLike | None = None) -> Source:
    """A random-access source of `{"image": uint8 HWC, "label": int}` records.

    Args:
      name: one of `KNOWN_DATASETS` ("cifar10", "cifar100", "imagenet2012", "mnist",
        "fashion_mnist").
      split: a TFDS split string, e.g. "train", "test", "train[:90%]", "train[90%:]".
      data_dir: the TFDS data directory holding the prepared dataset (default: TFDS's,
        `$TFDS_DATA_DIR` or ~/tensorflow_datasets).

    Raises:
      ValueError: `name` is not a known dataset.
      DatasetNotFoundError: the dataset is not prepared and cannot be fetched from here; the
        message says how to prepare it.
    """
    dataset_info(name)  # validates the name
    data_dir = os.path.expanduser(os.fspath(data_dir)) if data_dir is not None else None
    try:
        with _quiet_tfds_probe():
            tfds_source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        return TfdsSource(name, split, tfds_source)
    except Exception as error:  # TFDS's errors for "not there" are misleading: decide below
        with _quiet_tfds_probe():
            builder = tfds.builder(name, data_dir=data_dir)
            prepared = builder.is_prepared()
        if prepared:
            if isinstance(error, NotImplementedError):  # prepared, but not as array_record
                raise DatasetNotFoundError(_convert_message(name, builder.data_dir)) from error
            raise  # e.g. a bad split string: the TFDS message says what is wrong
        data_root = Path(builder.data_dir_root)

    if name == "fashion_mnist" and offline.fashion_mnist_files_present():
        log.info("Reading Fashion-MNIST from %s.", offline.DEBIAN_FASHION_MNIST_DIR)
        return offline.debian_fashion_mnist(split)

    if (
        name in _DOWNLOAD_HOSTS
        and tensorflow_available()
        and network_reachable(*_DOWNLOAD_HOSTS[name])
    ):
        log.warning("%s is not in %s: downloading and preparing it with TFDS.", name, data_root)
        tfds_source = tfds.data_source(
            name,
            split=split,
            data_dir=data_dir,
            download=True,
            builder_kwargs={"file_format": "array_record"},
        )
        return TfdsSource(name, split, tfds_source)

    raise DatasetNotFoundError(_not_found_message(name, data_root))


def _build_command(name: str, data_root: Path, extra: str = "") -> str:
    return f"tfds build {name}{extra} --file_format=array_record --data_dir={data_root}"


def _not_found_message(name: str, data_root: Path) -> str:
    lines = [f"Dataset {name!r} is not prepared in {data_root} (no array_record copy found)."]
    if name == "imagenet2012":
        lines += [
            "ImageNet needs a manual download: register at https://image-net.org/download-images,",
            "put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in a folder MANUAL, then on",
            "a machine with TensorFlow (`pip install tensorflow tensorflow-datasets`) run",
            f"  {_build_command(name, data_root, ' --manual_dir=MANUAL')}",
        ]
    else:
        if name == "fashion_mnist":
            lines.append(
                "Offline: `apt-get install dataset-fashion-mnist` provides the files "
                f"(looked in {offline.DEBIAN_FASHION_MNIST_DIR})."
            )
        why = []
        if not tensorflow_available():
            why.append("TensorFlow is not installed (TFDS needs it to prepare, not to read)")
        elif name in _DOWNLOAD_HOSTS:
            why.append(f"the network ({_DOWNLOAD_HOSTS[name][0]}) is unreachable")
        lines += [
            f"It cannot be downloaded from here: {'; '.join(why)}." if why else "",
            "To prepare it, on a machine with network and TensorFlow "
            "(`pip install tensorflow tensorflow-datasets`) run",
            f"  {_build_command(name, data_root)}",
        ]
    lines.append(
        f"Built on another machine? Copy its <data_dir>/{name} folder to {data_root / name}. "
        f"Then get_source({name!r}, ...) finds it given data_dir={str(data_root)!r} "
        "(or with TFDS_DATA_DIR set to it)."
    )
    return "\n".join(line for line in lines if line)


def _convert_message(name: str, variant_dir: str) -> str:
    return (
        f"Dataset {name!r} is prepared in {variant_dir}, but not as array_record, which random "
        "access needs. Convert it (with TensorFlow installed):\n"
        f"  tfds convert_format --dataset_version_dir={variant_dir} "
        "--out_file_format=array_record"
    )
