"""Device meshes and shardings: one `data` axis over every device of every host.

    mesh = make_mesh()                          # all devices, axis "data"
    x = jax.device_put(batch, data_sharding(mesh))
    params = global_replicated(params, replicated(mesh))         # a mesh over several hosts too
    xb = put(host_batch, rows_sharding(len(host_batch), mesh))   # split, or replicated

Batches are split along their leading axis; parameters and model state are replicated.
Under `jax.jit` the compiler then inserts the cross-device reductions, so batch
statistics are over the global batch whatever the number of devices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis `data` over `devices` (default: every device of every host)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the `data` axis; other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def rows_sharding(rows: int, mesh: Mesh) -> NamedSharding:
    """`data_sharding` for a batch of `rows` that splits evenly over the mesh, else
    `replicated` (an exact batch, never padded to fit the devices)."""
    return data_sharding(mesh) if rows % mesh.devices.size == 0 else replicated(mesh)


def put(a: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A host array that every process holds whole (the same values) as a global array on
    `sharding`: each process contributes the parts on its own devices. Works on one host and
    on many, with no transfer between hosts and no collective (`jax.device_put` onto devices
    of several processes first checks, by gathering the value, that they all passed the same:
    for a model's weights, a copy of the model across hosts at every placement)."""
    a = np.asarray(a)
    if sharding.is_fully_addressable:
        return jax.device_put(a, sharding)
    return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])


def check_batch_divisible(batch_size: int, mesh: Mesh) -> None:
    """Raise a clear error when a global batch cannot be split evenly over the mesh."""
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(
            f"The global batch size {batch_size} is not divisible by the {n} devices of the "
            f"mesh; use a multiple of {n} (e.g. {max(n, batch_size // n * n)})."
        )


def global_replicated(tree: Any, sharding: NamedSharding) -> Any:
    """Values every process holds alike (host arrays, or jax arrays on its own devices) ->
    arrays placed by the replicated `sharding`, whose mesh may span processes.

    `jax.device_put` cannot move a process's local arrays onto other hosts' devices; here each
    process supplies its own devices' copies. Leaves already placed so stay as they are."""

    def place(leaf):
        if isinstance(leaf, jax.Array) and leaf.sharding.is_equivalent_to(sharding, leaf.ndim):
            return leaf
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = leaf.addressable_data(0)  # replicated elsewhere: any local copy is the value
        return put(np.asarray(leaf), sharding)

    return jax.tree.map(place, tree)


def host_values(tree: Any) -> Any:
    """Replicated device values -> NumPy on this host (works across processes too)."""
    return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), tree)
