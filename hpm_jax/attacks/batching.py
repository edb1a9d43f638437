"""Batching: fixed batches, bucket sizes, and the rows of a batch a model call sees.

    sizes = bucket_sizes(batch_size=250, num_devices=4)   # (252, 220, 192, ..., 20, 16)
    sizes = bucket_sizes(500, 1, step=ladder_step(jax.devices()))  # GPU/TPU: 500, 252, ... 32
    batches = batch_slices(10_000, 250)                    # the dataset's fixed batches
    rows = compact(np.array([3, 17, 40]), sizes)           # 3 points padded to 16 rows
    xb = rows.take(x)                                      # (16, H, W, C), rows 3.. repeat
    rows.real                                              # the real rows: [3, 17, 40]
    rows = select(todo, attack_sizes(x))                   # inside an attack: the todo rows
    best = rows.put(best, best_b)                          # real rows back, padding dropped
    to_host(robust)                                        # one sync, any sharding

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

The ladder depends on the backend of the batch's devices (`ladder_step`): 7/8 on the CPU,
where a padded row costs its full compute and a compile a few seconds; halving on GPU and
TPU, where a compile of a large model's attack programs costs tens of seconds to minutes
(convolution autotuning) and padding rows of an underused device costs little. Batch 500
gives 23 sizes on the CPU and 5 (500, 252, 128, 64, 32) on a GPU (benchmarks/RESULTS.md
counts the programs of a standard run for both).

The chain (`autoattack`) hands each attack a bucket of the points still robust; inside an
attack (`driver`), points keep breaking and the rows still to attack are re-bucketed into the
smallest of the same sizes that holds them, always chosen from the rows of the attack's own
batch. `compact=False` keeps every row in every model call (batch-coupled judges, MSA): then
`Rows.full` is used throughout and `take` / `put` do nothing.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from hpm_jax.runtime.sharding import put as put_host


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


# Each bucket size over the next larger, per backend; halving on every other backend.
LADDER_STEPS = {"cpu": 7 / 8}
ACCELERATOR_STEP = 1 / 2


def ladder_step(devices) -> float:
    """The bucket ladder's step for a batch on `devices` (jax Devices): `LADDER_STEPS` of
    their platform where they all share one, else `ACCELERATOR_STEP`."""
    platforms = {d.platform for d in devices}
    if len(platforms) == 1:
        return LADDER_STEPS.get(platforms.pop(), ACCELERATOR_STEP)
    return ACCELERATOR_STEP


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


def pick_size(n: int, sizes: tuple[int, ...]) -> int:
    """The smallest bucket size that holds n points."""
    fitting = [s for s in sizes if s >= n]
    if not fitting:
        raise ValueError(f"{n} points do not fit in any bucket of {sizes}.")
    return min(fitting)


def batch_slices(num_examples: int, batch_size: int) -> list[np.ndarray]:
    """The dataset's fixed batches as index arrays: [0, bs), [bs, 2 bs), ... (the last may be
    shorter). The batching never depends on which points are robust, so an attack's
    randomness can be keyed by (attack, batch) and a resumed run repeats it exactly."""
    return [
        np.arange(start, min(start + batch_size, num_examples), dtype=np.int64)
        for start in range(0, num_examples, batch_size)
    ]


def devices_of(x) -> list[jax.Device]:
    """The devices the batch `x` lies on (jax's default devices for host arrays)."""
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
        return list(x.sharding.device_set)
    return jax.devices()


def num_devices(x) -> int:
    """The number of devices the batch `x` is spread over (1 for host arrays)."""
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
        return len(x.sharding.device_set)
    return 1


def attack_sizes(x, sizes: Sequence[int] | None = None) -> tuple[int, ...]:
    """The bucket sizes an attack may shrink its batch `x` into: `sizes` (the chain's, or
    `bucket_sizes(B, devices)` with the ladder of x's backend by default) below the batch
    size, largest first."""
    batch, n_dev = int(x.shape[0]), num_devices(x)
    if sizes is None:
        sizes = bucket_sizes(batch, n_dev, step=ladder_step(devices_of(x)))
    uneven = [int(s) for s in sizes if int(s) % n_dev]
    if uneven:
        raise ValueError(
            f"bucket sizes {uneven} do not split evenly over the {n_dev} devices of the batch."
        )
    return tuple(sorted({int(s) for s in sizes if int(s) < batch}, reverse=True))


@jax.jit
def _take(a: jax.Array, index: jax.Array) -> jax.Array:
    return jnp.take(a, index, axis=0)


@jax.jit
def _put(full: jax.Array, part: jax.Array, index: jax.Array) -> jax.Array:
    return full.at[index].set(part, mode="drop")


def _like(a: jax.Array):
    """The sharding of a batch-sharded array for any number of rows."""
    if not isinstance(a, jax.Array) or isinstance(a, jax.core.Tracer) or not a.committed:
        return None  # uncommitted: jit places it beside the other arguments
    sharding = a.sharding
    if isinstance(sharding, NamedSharding):
        spec = sharding.spec
        return NamedSharding(sharding.mesh, PartitionSpec(spec[0] if len(spec) else None))
    return sharding if len(sharding.device_set) == 1 else None


@dataclasses.dataclass(frozen=True)
class Rows:
    """Rows of a batch of `batch` rows (an attack's batch, or the dataset): index (size,) of
    which the first n are real (in their order in the batch), the rest repeat them as padding.
    index None: the whole batch, as it is."""

    batch: int
    index: np.ndarray | None = None
    n: int = 0

    @classmethod
    def full(cls, batch: int) -> Rows:
        return cls(int(batch), None, int(batch))

    @property
    def is_full(self) -> bool:
        return self.index is None

    @property
    def size(self) -> int:
        return self.batch if self.index is None else int(self.index.shape[0])

    @property
    def real(self) -> np.ndarray:
        return np.arange(self.batch) if self.index is None else self.index[: self.n]

    def take(self, tree: Any) -> Any:
        """The rows of every array of `tree` (each (batch, ...)), sharded over the batch's
        devices as it was."""
        if self.index is None:
            return tree
        index = jnp.asarray(self.index, jnp.int32)

        def one(a):
            out, sharding = _take(a, index), _like(a)
            return out if sharding is None else jax.device_put(out, sharding)

        return jax.tree_util.tree_map(one, tree)

    def put(self, full: Any, part: Any) -> Any:
        """`full` (arrays (batch, ...)) with the real rows of `part` (size, ...) written back."""
        if self.index is None:
            return part
        target = jnp.asarray(np.where(np.arange(self.size) < self.n, self.index, self.batch),
                             jnp.int32)  # fmt: skip

        def one(f, p):
            out, sharding = _put(f, p, target), _like(f)
            return out if sharding is None else jax.device_put(out, sharding)

        return jax.tree_util.tree_map(one, full, part)

    def real_mask(self, like: jax.Array) -> jax.Array:
        """(size,) bool on the devices of `like`: True on the real rows, False on padding."""
        return place_like(np.arange(self.size) < self.n, like)


def select(todo: np.ndarray, sizes: tuple[int, ...]) -> Rows | None:
    """The rows where `todo` (host (batch,) bool) in the smallest of `sizes` (all below the
    batch size) that holds them; the whole batch if none does; None if nothing is to do."""
    todo = np.asarray(todo, bool)
    index = np.flatnonzero(todo)
    if index.size == 0:
        return None
    if not [s for s in sizes if s >= index.size]:
        return Rows.full(todo.shape[0])
    return compact(index, sizes, batch=todo.shape[0])


def compact(indices: np.ndarray, sizes: tuple[int, ...], *, batch: int = 0) -> Rows:
    """The rows `indices` (non-empty, 1-D, of a batch of `batch` rows) padded to the smallest
    of `sizes` that holds them (`pick_size`).

    Padding repeats real rows rather than adding blank images, so that a model whose output
    depends on the rest of the batch still sees images from the data; its results are
    discarded all the same.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 1 or indices.size == 0:
        raise ValueError(f"compact needs a non-empty 1-D index array, got shape {indices.shape}.")
    size = pick_size(indices.size, sizes)
    return Rows(int(batch), indices[np.arange(size) % indices.size], int(indices.size))


def exact(indices: np.ndarray, *, batch: int = 0) -> Rows:
    """The rows `indices` as they are, no padding."""
    indices = np.asarray(indices, dtype=np.int64)
    return Rows(int(batch), indices, int(indices.size))


def place_like(a: np.ndarray, like: jax.Array) -> jax.Array:
    """The host array `a` (batch, ...) on the devices of the batch `like`, split as it is
    (`like` over several processes' devices: each puts its own parts, `put_host`)."""
    target = _like(like)
    return jnp.asarray(a) if target is None else put_host(a, target)


def to_host(a: jax.Array) -> np.ndarray:
    """A (possibly sharded) device array on the host; one sync."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)
