"""Every test sees 4 CPU devices, so sharding is exercised on a single machine; each test
module's compiled programs are released when the module ends."""

import os

import pytest

# Must be set before JAX initialises its backends, i.e. before any test imports jax.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
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
