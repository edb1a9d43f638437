"""Every test sees 4 CPU devices, so sharding is exercised on a single machine."""

import os

# Must be set before JAX initialises its backends, i.e. before any test imports jax.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
