"""What a benchmark result needs beside its numbers: the machine and the library versions.

from common import hardware_summary
print(hardware_summary())   # CPU model, cores, memory, load average, versions, date

The library's `hpm_jax.evaluation.provenance` holds the pieces (the evaluation reports use them
too).
"""

from __future__ import annotations

import functools
import time

import jax
import optax

from hpm_jax.evaluation import provenance
from hpm_jax.runtime.sharding import data_sharding, replicated
from hpm_jax.training import steps
from hpm_jax.training import train_state as state_lib

BENCHMARK_PACKAGES = ("jax", "jaxlib", "flax", "torch", "pyautoattack", "numpy")


def hardware_summary() -> str:
    """One line on the machine, one on versions: enough to compare runs later."""
    return provenance.hardware_summary(BENCHMARK_PACKAGES)


def jitted_train_step(model, objective, variables, mesh):
    """(step_fn, state): the program's own training step (SGD with momentum and weight decay,
    the state donated, the batch sharded over `mesh`) and its initial state from `variables`."""
    optimizer = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.01, momentum=0.9))
    rep = replicated(mesh)
    state = jax.jit(
        functools.partial(state_lib.create_state, optimizer=optimizer, ema=False),
        out_shardings=rep,
    )(variables)
    fn = jax.jit(
        functools.partial(steps.train_step, model, optimizer, objective, 0.0),
        in_shardings=(rep, data_sharding(mesh), rep),
        out_shardings=(rep, rep),
        donate_argnums=0,
    )
    return fn, state


def alternating_step_times(runs: dict, batch, key, *, rounds: int, steps: int) -> dict:
    """Seconds per step of each variant's training step, {name: [one per round]}. runs:
    {name: [step_fn, state]} (step_fn(state, batch, key) -> (state, metrics)), updated in
    place. Two warm-up steps each (compiles), then rounds of `steps` steps, the variants'
    order alternating, so slow drifts of a shared machine hit every variant alike."""
    names = list(runs)
    for name in names:
        fn, state = runs[name]
        for _ in range(2):
            state, metrics = fn(state, batch, key)
        jax.block_until_ready(metrics)
        runs[name][1] = state
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            fn, state = runs[name]
            start = time.perf_counter()
            for _ in range(steps):
                state, metrics = fn(state, batch, key)
            jax.block_until_ready(metrics)
            times[name].append((time.perf_counter() - start) / steps)
            runs[name][1] = state
    return times
