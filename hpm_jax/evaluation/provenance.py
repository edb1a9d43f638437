"""What a result needs beside its numbers: software versions, devices, host, date, fingerprints.

    from hpm_jax.evaluation import provenance
    provenance.record(x, y, variables, matmul_precision="highest")
                                         # {"versions": {...}, "devices": {...}, "date": ...,
                                         #  "data_sha256": ..., "variables_sha256": ...}
    provenance.versions()                # {"jax": "0.10.0", "jaxlib": ..., "hpm-jax": ...}
    provenance.hardware_summary()        # two lines for a benchmark's output

The evaluation report carries `record(...)`, so that a figure can be traced to the code, the
machine, the exact images and the exact weights it came from. Fingerprints are sha256 digests:
of the evaluated images and labels with their shapes and dtypes (the same digest the attacks'
state files use), and of the variables' leaves with their tree paths, shapes and dtypes.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import os
import platform
from typing import Any

import jax
import numpy as np

from hpm_jax.attacks.resume import data_hash

PACKAGES = ("jax", "jaxlib", "flax", "hpm-jax", "numpy", "optax", "orbax-checkpoint")


def package_version(package: str) -> str:
    """The installed version of `package`, or "absent"."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """{package: version} for `packages`, plus the Python version."""
    out = {p: package_version(p) for p in packages}
    out["python"] = f"{platform.python_implementation()} {platform.python_version()}"
    return out


def devices() -> dict[str, Any]:
    """The JAX devices the computation ran on: platform, kind, counts."""
    devs = jax.devices()
    return {
        "platform": devs[0].platform,
        "kind": devs[0].device_kind,
        "count": len(devs),
        "local_count": jax.local_device_count(),
        "process_count": jax.process_count(),
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def host() -> dict[str, Any]:
    """The host: CPU model, cores, memory (GiB), OS."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib(),
        "os": platform.platform(),
    }


def variables_fingerprint(variables: Any) -> str:
    """sha256 of the variables: every leaf's tree path, dtype, shape and bytes."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B") if a.size else b"")
    return h.hexdigest()


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def record(
    x: np.ndarray, y: np.ndarray, variables: Any, *, matmul_precision: str | None = None
) -> dict[str, Any]:
    """Versions, devices, host, date and the data / model fingerprints of one evaluation;
    `matmul_precision`: the float32 matmul / convolution precision its programs ran at
    (None: the backend's default, JAX's `jax_default_matmul_precision` as set)."""
    return {
        "versions": versions(),
        "devices": devices(),
        "matmul_precision": matmul_precision or jax.config.jax_default_matmul_precision,
        "host": host(),
        "date": now(),
        "data_sha256": data_hash(np.asarray(x), np.asarray(y)),
        "variables_sha256": variables_fingerprint(variables),
    }


def hardware_summary(
    packages: tuple[str, ...] = ("jax", "jaxlib", "flax", "torch", "numpy"),
) -> str:
    """One line on the machine, one on versions: enough to compare benchmark runs later."""
    memory = memory_gib()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    machine = (
        f"{cpu_model()}, {os.cpu_count()} cores"
        + (f", {memory:.0f} GiB" if memory else "")
        + f"; load average {load}; {datetime.date.today().isoformat()}"
    )
    listed = ", ".join(f"{p} {package_version(p)}" for p in packages)
    return f"{machine}\n{platform.python_implementation()} {platform.python_version()}; {listed}"
