"""Device meshes and shardings: one `data` axis over every device of every host.

    mesh = make_mesh()                          # all devices, axis "data"
    x = jax.device_put(batch, data_sharding(mesh))
    params = jax.device_put(params, replicated(mesh))       # one process
    params = global_replicated(params, replicated(mesh))  # a mesh over several processes too

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
        return jax.make_array_from_process_local_data(sharding, np.asarray(leaf))

    return jax.tree.map(place, tree)


def host_values(tree: Any) -> Any:
    """Replicated device values -> NumPy on this host (works across processes too)."""
    return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), tree)
