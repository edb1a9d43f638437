"""Which accelerator the suite runs on, and devices for tests that need several.

The suite runs on the CPU with 4 fake devices (XLA_FLAGS, set in conftest.py). With
`HPM_TEST_PLATFORM=gpu` (or `tpu`) it runs on that backend instead; a test that needs
more devices than the platform has, or that checks something only the CPU does (its host
loop, XLA:CPU's compiler options, bitwise agreement with PyTorch's CPU kernels), is skipped
with its reason rather than failing:

    from platform_support import take_devices, cpu_only
    mesh = make_mesh(take_devices(4))        # skips on a 1-GPU machine

    @cpu_only("counts the host loop's calls; an accelerator runs the lax loop")
    def test_...
"""

from __future__ import annotations

import os

import pytest

PLATFORM = os.environ.get("HPM_TEST_PLATFORM", "cpu").lower()
ON_CPU = PLATFORM == "cpu"
# The suite's programs are tiny and compile-bound: LLVM at O1 without its expensive passes
# compiles them faster than XLA's default O2, and they run about as fast (on the 2-core CI
# CPU: tests/test_msa.py took 0.77 of the CPU time, three AutoAttack parity tests 0.97, the
# whole suite 33 instead of 42 minutes; benchmarks/suite_compile_flags.py, RESULTS.md).
# Only the code generator's optimisation changes, not the programs: the tolerances derive
# from float32 rounding whatever the instructions. The programs users run keep XLA's
# defaults.
COMPILE_FLAGS = "--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true"


def cpu_xla_flags(devices: int) -> str:
    """XLA_FLAGS for a CPU process of the suite (this one, or a child) with `devices` fake
    devices."""
    return f"--xla_force_host_platform_device_count={devices} {COMPILE_FLAGS}"


def take_devices(n: int) -> list:
    """The first n devices, or skip the test when the platform has fewer."""
    import jax

    devices = jax.devices()
    if len(devices) < n:
        pytest.skip(
            f"needs {n} devices and the {devices[0].platform} backend has {len(devices)} "
            "(the CPU suite fakes 4 through XLA_FLAGS)"
        )
    return devices[:n]


def cpu_only(reason: str):
    """Mark a test that holds only on the CPU; it is skipped, with the reason, elsewhere."""
    return pytest.mark.skipif(not ON_CPU, reason=f"CPU only: {reason}")
