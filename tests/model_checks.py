"""Shared checks for backbones: jitted forward + backward on 1 device and on 4 devices.

loss_grads = grads_on_devices(model, variables, x, y, num_devices=4)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from platform_support import take_devices

from hpm_jax.runtime.sharding import data_sharding, make_mesh, replicated


def _loss(model, params, batch_stats, x, y):
    logits, updates = model.apply(
        {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, updates["batch_stats"]


def grads_on_devices(model, variables, x, y, num_devices: int):
    """(loss, grads, new batch_stats) of a train-mode step, batch split over `num_devices`."""
    mesh = make_mesh(take_devices(num_devices))
    x = jax.device_put(jnp.asarray(x), data_sharding(mesh))
    y = jax.device_put(jnp.asarray(y), data_sharding(mesh))
    variables = jax.device_put(variables, replicated(mesh))
    step = jax.jit(jax.value_and_grad(lambda p, s, x, y: _loss(model, p, s, x, y), has_aux=True))
    (loss, stats), grads = step(variables["params"], variables.get("batch_stats", {}), x, y)
    return loss, grads, stats
