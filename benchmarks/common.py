"""What a benchmark result needs beside its numbers: the machine and the library versions.

from common import hardware_summary
print(hardware_summary())   # CPU model, cores, memory, load average, versions, date
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def hardware_summary() -> str:
    """One line on the machine, one on versions: enough to compare runs later."""
    memory = _memory_gib()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    machine = (
        f"{_cpu_model()}, {os.cpu_count()} cores"
        + (f", {memory:.0f} GiB" if memory else "")
        + f"; load average {load}; {datetime.date.today().isoformat()}"
    )
    versions = ", ".join(
        f"{p} {_version(p)}" for p in ("jax", "jaxlib", "flax", "torch", "pyautoattack", "numpy")
    )
    return f"{machine}\n{platform.python_implementation()} {platform.python_version()}; {versions}"
