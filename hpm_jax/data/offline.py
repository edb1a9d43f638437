"""Datasets read from files already on this machine, with no TFDS preparation and no network.

Today that is Fashion-MNIST from the Debian package `dataset-fashion-mnist`
(`apt-get install dataset-fashion-mnist`), gzip'd idx files under
/usr/share/datasets/fashion-mnist:

    source = debian_fashion_mnist("train[:90%]")      # the first 54000 training images
    record = source[0]                                # {"image": uint8 (28, 28, 1), "label": int}
    len(debian_fashion_mnist("test"))                 # 10000

Split strings follow TFDS: a split name, optionally sliced by example counts or
percentages (`"train[:1000]"`, `"train[90%:]"`, `"test[-500:]"`), joined with `+`.
"""

from __future__ import annotations

import functools
import gzip
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# Split name -> (images file, labels file), as the Debian package (and the original release)
# names them.
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# idx type codes (third byte of the magic number) -> numpy dtype; idx stores big-endian.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Reads an idx file (the MNIST format), gzip'd or not, into an array of its stored shape."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number {raw[:4].hex()}).")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype, count=int(np.prod(shape)), offset=4 + 4 * ndim)
    return data.reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def fashion_mnist_files_present(directory: str | Path | None = None) -> bool:
    """Whether all four Fashion-MNIST idx files are in `directory` (default: Debian's)."""
    directory = Path(directory or DEBIAN_FASHION_MNIST_DIR)
    return all((directory / f).is_file() for pair in _FASHION_MNIST_FILES.values() for f in pair)


@functools.cache
def _read_idx_cached(path: Path) -> np.ndarray:
    # Cached: decompressing the 60000 training images takes a noticeable fraction of a second,
    # and a program typically asks for train and validation slices of the same split.
    array = read_idx(path)
    array.flags.writeable = False  # shared by every source made from this file
    return array


def _fashion_mnist_labels(directory: Path, split: str) -> np.ndarray:
    return _read_idx_cached(directory / _FASHION_MNIST_FILES[split][1])


def _fashion_mnist_images(directory: Path, split: str) -> np.ndarray:
    images = _read_idx_cached(directory / _FASHION_MNIST_FILES[split][0])
    if len(images) != len(_fashion_mnist_labels(directory, split)):
        raise ValueError(f"{directory}: the {split} images and labels differ in number.")
    return images[..., None]  # (N, 28, 28) -> HWC, a view


def parse_split(spec: str, sizes: Mapping[str, int]) -> list[tuple[str, int, int]]:
    """TFDS-style split string -> [(split name, start, stop)] with absolute, clipped bounds.

    Percent bounds round to the closest example, as TFDS does by default.
    """
    pieces = []
    for part in spec.split("+"):
        match = re.fullmatch(r"\s*(\w+)\s*(?:\[\s*([^:\]]*)\s*:\s*([^\]]*)\s*\])?\s*", part)
        if match is None:
            raise ValueError(f"Cannot parse split {spec!r}: expected e.g. 'train', 'train[:90%]'.")
        name, start, stop = match.groups()
        if name not in sizes:
            raise ValueError(f"Unknown split {name!r} in {spec!r}; known splits: {sorted(sizes)}.")
        n = sizes[name]
        begin = _bound(start, n, spec, default=0)
        end = _bound(stop, n, spec, default=n)
        begin, end, _ = slice(begin, end).indices(n)
        pieces.append((name, begin, max(begin, end)))
    return pieces


def _bound(text: str | None, n: int, spec: str, *, default: int) -> int:
    if text is None or not text.strip():
        return default
    text = text.strip()
    try:
        if text.endswith("%"):
            return round(float(text[:-1]) * n / 100)
        return int(text)
    except ValueError:
        raise ValueError(f"Bad slice bound {text!r} in split {spec!r}.") from None


class ArraySource:
    """Random access over in-memory arrays: record i is `{"image": images[i], "label": int}`."""

    def __init__(self, name: str, split: str, images: np.ndarray, labels: np.ndarray):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels.")
        self.name, self.split = name, split
        self._images, self._labels = images, labels

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> dict:
        return {"image": self._images[index], "label": int(self._labels[index])}

    def __repr__(self) -> str:
        return f"ArraySource({self.name!r}, split={self.split!r}, num_records={len(self)})"


def debian_fashion_mnist(split: str, *, directory: str | Path | None = None) -> ArraySource:
    """Fashion-MNIST from the Debian package's idx files; `split` as in TFDS ("train[:90%]")."""
    directory = Path(directory or DEBIAN_FASHION_MNIST_DIR)
    if not fashion_mnist_files_present(directory):
        raise FileNotFoundError(
            f"Fashion-MNIST idx files not found in {directory}; "
            "install them with `apt-get install dataset-fashion-mnist`."
        )
    # Sizes from the small label files, so asking for "test" never decompresses the train images.
    sizes = {s: len(_fashion_mnist_labels(directory, s)) for s in _FASHION_MNIST_FILES}
    parts = [
        (
            _fashion_mnist_images(directory, name)[begin:end],
            _fashion_mnist_labels(directory, name)[begin:end],
        )
        for name, begin, end in parse_split(split, sizes)
    ]
    if len(parts) == 1:
        images, labels = parts[0]  # a view: no copy of the cached arrays
    else:
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
    return ArraySource("fashion_mnist", split, images, labels)
