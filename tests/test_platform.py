"""HPM_TEST_PLATFORM: on another backend, tests that need 4 devices or the CPU skip with
their reason. Simulated on the CPU: the child pytest is told the platform is a GPU while
JAX_PLATFORMS keeps it on the (single, unfaked) CPU device."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a child pytest

TESTS = Path(__file__).resolve().parent


def test_an_accelerator_run_skips_what_needs_four_devices_or_the_cpu():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # 1 device, not 4
    env.update(HPM_TEST_PLATFORM="gpu", JAX_PLATFORMS="cpu")
    picked = [
        "test_fab.py::test_one_and_four_devices_agree",  # take_devices(4)
        "test_xla_options.py",  # cpu_only
        "test_identity.py",  # neither: runs
    ]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:xdist", "-p", "no:cacheprovider"]
        + [str(TESTS / p) for p in picked],
        env=env, cwd=TESTS.parent, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "needs 4 devices and the cpu backend has 1" in text
    assert "CPU only: XLA:CPU's compiler options" in text
    assert " passed" in text and "failed" not in text
