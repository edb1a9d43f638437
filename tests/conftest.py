"""Every test sees 4 CPU devices, so sharding is exercised on a single machine; each test
module's compiled programs are released when the module ends.

`HPM_TEST_PLATFORM=gpu launch/test.sh` (or `tpu`) runs the suite on that backend instead:
tests that need 4 devices or hold only on the CPU skip with their reason
(tests/platform_support.py)."""

import os

import pytest
from platform_support import PLATFORM, cpu_xla_flags

# Must be set before JAX initialises its backends, i.e. before any test imports jax.
if PLATFORM == "cpu":
    os.environ.setdefault("XLA_FLAGS", cpu_xla_flags(4))
os.environ.setdefault("JAX_PLATFORMS", PLATFORM)
if PLATFORM != "cpu":
    import jax

    # The tolerances are derived for float32 arithmetic; an accelerator's default precision
    # (TF32 convolutions on NVIDIA, bf16 passes on TPU) is benchmarks/gpu_check.py's subject.
    # AutoAttack, MSA and hpm-evaluate still run at their own `precision` (default "high"),
    # and their checks use that precision's tolerance.
    jax.config.update("jax_default_matmul_precision", "highest")
# The programs turn JAX's persistent compilation cache on (hpm_jax.runtime.compilation_cache);
# in the suite (in-process and in subprocesses) it stays off, so no test writes to the
# user's cache or loads another run's programs; tests/test_compilation_cache.py turns it on.
os.environ.setdefault("JAX_ENABLE_COMPILATION_CACHE", "false")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compilation caches after each module (its module fixtures are torn down
    first). Every live XLA:CPU executable holds about 6 memory mappings; a pytest worker that
    keeps the ~9,000 programs the whole suite compiles passes Linux's default limit of 65,530
    mappings (vm.max_map_count), and the next compile segfaults inside XLA."""
    yield
    import jax

    jax.clear_caches()
