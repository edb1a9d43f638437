"""The test suite's XLA flags (tests/platform_support.COMPILE_FLAGS) against XLA's defaults:
the CPU time of the same test selection under each, side by side in one run.

    python benchmarks/suite_compile_flags.py                         # the default selections
    python benchmarks/suite_compile_flags.py --tests tests/test_msa.py --repeats 2

Each selection runs in a fresh `pytest -p no:xdist` child per flag set, alternating, and
the child's user + system CPU time (its own children's included: the programs some tests
start) is read from `resource.getrusage(RUSAGE_CHILDREN)`. A compile-bound selection (the
MSA tests: many small programs) and a compute-bound one (AutoAttack parity against the
PyTorch reference: a CNN's forward and backward passes many times) bracket the suite.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from platform_support import COMPILE_FLAGS  # noqa: E402

SELECTIONS = {
    "compile-bound: tests/test_msa.py": ["tests/test_msa.py"],
    "compute-bound: 3 AutoAttack parity tests": [
        "tests/test_autoattack_parity.py",
        "-k",
        "standard_chain_matches_reference and L2 or square_l1",
    ],
}
DEVICES = "--xla_force_host_platform_device_count=4"


def cpu_seconds(args: list[str], xla_flags: str) -> float:
    """User + system CPU seconds of one pytest child (and its children) on `args`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = dict(os.environ, XLA_FLAGS=xla_flags, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider"]
    result = subprocess.run(command + args, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed under XLA_FLAGS={xla_flags}:\n"
                         f"{result.stdout[-3000:]}")  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", nargs="+", help="one selection instead of the defaults")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    selections = {" ".join(args.tests): args.tests} if args.tests else SELECTIONS
    flag_sets = {"XLA defaults": DEVICES, "suite flags": f"{DEVICES} {COMPILE_FLAGS}"}
    print(f"suite flags: {COMPILE_FLAGS}; {os.cpu_count()} CPUs")
    for name, selection in selections.items():
        times: dict[str, list[float]] = {k: [] for k in flag_sets}
        for _ in range(args.repeats):
            for label, flags in flag_sets.items():  # alternating: drift hits both alike
                times[label].append(cpu_seconds(selection, flags))
        base, fast = (min(times[k]) for k in flag_sets)
        print(f"{name}: XLA defaults {base:.1f} s CPU, suite flags {fast:.1f} s CPU, "
              f"ratio {fast / base:.2f} (best of {args.repeats})")  # fmt: skip


if __name__ == "__main__":
    main()
