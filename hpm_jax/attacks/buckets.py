"""Compaction: the still-robust points of a batch, padded to one of a few fixed sizes.

    sizes = bucket_sizes(batch_size=250, num_devices=4)   # (252, 220, 192, ..., 20, 16)
    bucket = compact(np.array([3, 17, 40]), sizes)            # the 3 points, padded to 16
    x_bucket = x[bucket.index]                                # (16, H, W, C), rows 3.. repeat
    ... attack x_bucket ...
    broken_ids = bucket.real_index[~robust[: bucket.n]]       # padding is never scattered back

A jitted attack compiles once per input shape. Attacking exactly the points still robust
would compile a new program for almost every batch; attacking the whole batch would spend
work on points already broken. Buckets sit between the two: a bucket holds only robust points
(padded by repeating them), and its size is the smallest of a short list, so an evaluation of
any length compiles at most `len(sizes)` programs per attack. Each size is about 7/8 of the
next, so padding wastes at most an eighth of a bucket, 6% on average (halving wasted up to
half: 181 robust points of a batch of 300 ran as 304 rows; steps of 3/4 up to a quarter, 14%
on average, and 36 robust points of 128 ran as 44 rows), for twice as many sizes as 3/4.
Sizes are multiples of the device count, so a bucket always shards evenly over the mesh, and
of 4, so they do not change between 1, 2 and 4 devices.
"""

from __future__ import annotations

import dataclasses
import fractions
import math

import numpy as np


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def bucket_sizes(
    batch_size: int,
    num_devices: int = 1,
    *,
    min_size: int | None = None,
    step: float = 7 / 8,
) -> tuple[int, ...]:
    """Decreasing bucket sizes: batch_size, then `step` of it, `step` of that, ... each
    rounded up to a multiple of lcm(4, num_devices), down to `min_size` (default:
    batch_size/16). A smaller `step` (3/4, 1/2) compiles fewer programs and pads more.

    Rounding to multiples of 4 rather than of the device count makes the sizes, hence the
    buckets and every random draw inside the attacks, the same on 1, 2 or 4 devices, so a
    seed gives the same report on each; a coarser multiple (8 was used before) pads a few
    dozen robust points by up to 8 rows (9 points ran as 16). The largest size is
    `batch_size` rounded up, so any batch size works on any mesh (the last rows of a full
    bucket are then padding). The floor keeps the number of compiled programs small: below
    it, padding costs less than compiling.
    """
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if not isinstance(num_devices, int | np.integer) or num_devices < 1:
        raise ValueError(f"num_devices must be a positive integer, got {num_devices!r}.")
    if not 0 < step < 1:
        raise ValueError(f"step must lie strictly between 0 and 1, got {step!r}.")
    fraction = fractions.Fraction(step).limit_denominator(1024)
    granule = math.lcm(4, int(num_devices))
    if min_size is None:
        min_size = batch_size // 16
    min_size = _round_up(max(int(min_size), 1), granule)
    sizes = []
    size = int(batch_size)
    while True:
        rounded = _round_up(size, granule)
        if not sizes or rounded < sizes[-1]:
            sizes.append(rounded)
        if rounded <= min_size:
            break
        size = min(math.ceil(size * fraction), size - 1)
    return tuple(sizes)


def check_bucket_sizes(sizes: tuple[int, ...], batch_size: int, num_devices: int) -> None:
    """Raise a clear error for user-given sizes that cannot hold a batch or shard evenly."""
    if not sizes:
        raise ValueError("bucket_sizes must not be empty; omit it to get the default halving.")
    if any(int(s) != s or s < 1 for s in sizes):
        raise ValueError(f"bucket_sizes must be positive integers, got {sizes}.")
    if max(sizes) < batch_size:
        raise ValueError(
            f"the largest bucket ({max(sizes)}) must hold a whole batch of {batch_size}; "
            f"add {_round_up(batch_size, num_devices)} to bucket_sizes."
        )
    uneven = [s for s in sizes if s % num_devices]
    if uneven:
        raise ValueError(
            f"bucket sizes {uneven} do not split evenly over the {num_devices} devices; "
            f"use multiples of {num_devices}."
        )


@dataclasses.dataclass(frozen=True)
class Bucket:
    """index: (size,) positions into the dataset; the first `n` are the real points (in
    their original order), the rest repeat them cyclically as padding."""

    index: np.ndarray
    n: int

    @property
    def size(self) -> int:
        return int(self.index.shape[0])

    @property
    def real_index(self) -> np.ndarray:
        return self.index[: self.n]


def pick_size(n: int, sizes: tuple[int, ...]) -> int:
    """The smallest bucket size that holds n points."""
    fitting = [s for s in sizes if s >= n]
    if not fitting:
        raise ValueError(f"{n} points do not fit in any bucket of {sizes}.")
    return min(fitting)


def compact(indices: np.ndarray, sizes: tuple[int, ...]) -> Bucket:
    """The bucket for the points at `indices` (non-empty, 1-D): padded to `pick_size`.

    Padding repeats real points rather than adding blank images, so that a model whose
    output depends on the rest of the batch still sees images from the data; its results
    are discarded all the same.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 1 or indices.size == 0:
        raise ValueError(f"compact needs a non-empty 1-D index array, got shape {indices.shape}.")
    size = pick_size(indices.size, sizes)
    return Bucket(index=indices[np.arange(size) % indices.size], n=int(indices.size))


def batch_slices(num_examples: int, batch_size: int) -> list[np.ndarray]:
    """The dataset's fixed batches as index arrays: [0, bs), [bs, 2 bs), ... (the last may be
    shorter). The batching never depends on which points are robust, so an attack's
    randomness can be keyed by (attack, batch) and a resumed run repeats it exactly."""
    return [
        np.arange(start, min(start + batch_size, num_examples), dtype=np.int64)
        for start in range(0, num_examples, batch_size)
    ]
