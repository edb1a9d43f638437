"""Shrinking an attack's working set between its runs: the rows still to attack, in a bucket.

    from hpm_jax.attacks import shrink
    sizes = shrink.attack_sizes(x, bucket_sizes=None)    # buckets under this batch, its mesh
    rows = shrink.Rows.full(x.shape[0])                  # every row of the attack's batch
    rows = shrink.select(np.asarray(todo), sizes)        # the todo rows, in the smallest bucket
    xb, yb = rows.take(x), rows.take(y)                  # (size, ...) padded by repeats
    best = rows.put(best, best_b)                        # the real rows back, padding dropped

The chain (`autoattack`) hands each attack a bucket of the points still robust; inside an
attack, points keep breaking: APGD between its restarts and targets, FAB-T and FAB between
runs, Square between queries. The reference shrinks its batch to the unbroken points each
time. Here an attack re-buckets its still-to-attack rows into the smallest of the same
bucket sizes (`buckets`) that holds them, so a program compiles once per bucket size and no
model call is spent on a broken point except as padding inside a bucket. The bucket is
always chosen from the rows of the attack's own batch (not from the previous bucket), and
sizes are multiples of 4, so the buckets and every draw are the same on 1, 2 or 4 devices.

`compact=False` in an attack keeps every row in its batch for every model call (the Mixed
Surrogate Attack's batch-coupled judge needs that); then `Rows.full` is used throughout and
`take` / `put` do nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from hpm_jax.attacks import buckets


def num_devices(x) -> int:
    """The number of devices the batch `x` is spread over (1 for host arrays)."""
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
        return len(x.sharding.device_set)
    return 1


def attack_sizes(x, bucket_sizes: Sequence[int] | None = None) -> tuple[int, ...]:
    """The bucket sizes an attack may shrink its batch `x` into: `bucket_sizes` (the chain's,
    or `buckets.bucket_sizes(B, devices)` by default) below the batch size, largest first."""
    batch, n_dev = int(x.shape[0]), num_devices(x)
    sizes = buckets.bucket_sizes(batch, n_dev) if bucket_sizes is None else bucket_sizes
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
    """Rows of an attack's batch of `batch` rows: index (size,) of which the first n are real
    (in their order in the batch), the rest repeat them. index None: the whole batch."""

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

    def take(self, a: jax.Array) -> jax.Array:
        """a's rows (a is (batch, ...)), sharded over the batch's devices as a was."""
        if self.index is None:
            return a
        out = _take(a, jnp.asarray(self.index, jnp.int32))
        sharding = _like(a)
        return out if sharding is None else jax.device_put(out, sharding)

    def put(self, full: jax.Array, part: jax.Array) -> jax.Array:
        """full (batch, ...) with the real rows of part (size, ...) written back."""
        if self.index is None:
            return part
        target = np.where(np.arange(self.size) < self.n, self.index, self.batch)
        out = _put(full, part, jnp.asarray(target, jnp.int32))
        sharding = _like(full)
        return out if sharding is None else jax.device_put(out, sharding)


def select(todo: np.ndarray, sizes: tuple[int, ...]) -> Rows | None:
    """The rows where `todo` (host (batch,) bool) in the smallest of `sizes` (all below the
    batch size) that holds them; the whole batch if none does; None if nothing is to do."""
    todo = np.asarray(todo, bool)
    index = np.flatnonzero(todo)
    if index.size == 0:
        return None
    fitting = [s for s in sizes if s >= index.size]
    if not fitting:
        return Rows.full(todo.shape[0])
    bucket = buckets.compact(index, (min(fitting),))
    return Rows(int(todo.shape[0]), bucket.index, bucket.n)


def place_like(a: np.ndarray, like: jax.Array) -> jax.Array:
    """The host array `a` (batch, ...) on the devices of the batch `like`, split as it is."""
    sharding = _like(like)
    return jnp.asarray(a) if sharding is None else jax.device_put(a, sharding)


def to_host(a: jax.Array) -> np.ndarray:
    """A (possibly sharded) device array on the host; one sync."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)
