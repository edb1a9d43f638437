"""What a benchmark result needs beside its numbers: the machine and the library versions.

from common import hardware_summary
print(hardware_summary())   # CPU model, cores, memory, load average, versions, date

The library's `hpm_jax.evaluation.provenance` holds the pieces (the evaluation reports use them
too).
"""

from __future__ import annotations

from hpm_jax.evaluation import provenance

BENCHMARK_PACKAGES = ("jax", "jaxlib", "flax", "torch", "pyautoattack", "numpy")


def hardware_summary() -> str:
    """One line on the machine, one on versions: enough to compare runs later."""
    return provenance.hardware_summary(BENCHMARK_PACKAGES)
