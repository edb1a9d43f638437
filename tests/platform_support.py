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
