"""What a benchmark result needs beside its numbers: the machine and the library versions.

from common import hardware_summary
print(hardware_summary())   # CPU model, cores, memory, load average, versions, date

The library's `hpm_jax.evaluation.provenance` holds the pieces (the evaluation reports use them
too).
"""

from __future__ import annotations

import time

import jax

from hpm_jax.evaluation import provenance

BENCHMARK_PACKAGES = ("jax", "jaxlib", "flax", "torch", "pyautoattack", "numpy")


def hardware_summary() -> str:
    """One line on the machine, one on versions: enough to compare runs later."""
    return provenance.hardware_summary(BENCHMARK_PACKAGES)


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
