# Four fake CPU devices, so sharding over a multi-device mesh is exercised on any machine.
# This must run before JAX is imported anywhere; pytest loads conftest.py first.
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
