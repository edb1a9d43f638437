"""hpm-evaluate's wall time on 1, 2 and 4 processes joined on localhost (one CPU device each).

    python benchmarks/evaluate_processes.py --processes=1,2,4 --num_examples=64 --batch_size=8

An evaluation split by whole batches (`hpm_jax.evaluation.processes`): each process attacks
its share of the fixed batches on its own device, process 0 writes the report. This script
makes a small HPM model on Fashion-MNIST (a few SGD steps of CE on the FC logits, class-mean
prototypes; or takes --checkpoint), then runs the same evaluation on each process count
(--rounds times, the counts in turn, so a shared machine's drift hits every count alike),
each into a fresh workdir, timed from the start of the processes to the exit of the last,
compilation included: every process compiles its programs, as every host of a pod does
(JAX's persistent cache would not level this: its entries name the devices, so the
processes other than 0 found none and compiled anyway). It checks that every run's report
has the figures of the first and prints the median wall times, speed-ups and scaling
efficiency (speed-up / processes).

Each process is pinned to one core (process i to core i mod the cores this script may use),
so that a process stands for a host: unpinned, one XLA:CPU process already spreads its work
over every core, and more processes on the same cores only add their start-up. So a machine
with fewer cores than processes cannot scale past its cores (--nopin: no pinning).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
from common import hardware_summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "fashion_mnist.py")


def make_model(directory: str, steps: int = 40, batch: int = 64) -> str:
    """A weak but real HPM model: SGD on the FC logits, then P_ema = the class means."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from evaluation_support import ARCH as arch
    from evaluation_support import train_tiny

    from hpm_jax.models.export import save_model

    _, variables = train_tiny(n_steps=steps, batch=batch)
    return save_model(directory, variables, arch="small_cnn", num_classes=10, head="hpm", **arch)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pinned(index: int, pin: bool) -> list[str]:
    """The command prefix that pins process `index` to one core (taskset; none unpinned). Not
    a preexec_fn: this process runs JAX's threads, and forking it to run Python is unsafe."""
    if not pin:
        return []
    cores = sorted(os.sched_getaffinity(0))
    return ["taskset", "-c", str(cores[index % len(cores)])]


def evaluate(checkpoint: str, workdir: str, processes: int, overrides: list[str],
             pin: bool) -> float:  # fmt: skip
    """Seconds from starting `processes` hpm-evaluate processes to the last one's exit."""
    command = [sys.executable, "-m", "hpm_jax.cli.evaluate", f"--config={CONFIG}",
               f"--checkpoint={checkpoint}", f"--workdir={workdir}",
               *[f"--config.{o}" for o in overrides]]  # fmt: skip
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
               HPM_PROGRESS="off")  # fmt: skip
    joined = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}"]
    start = time.perf_counter()
    children = [
        subprocess.Popen(
            _pinned(i, pin) + command + ([*joined, f"--process_id={i}"] if processes > 1 else []),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(processes)
    ]  # fmt: skip
    logs = [c.communicate()[0] for c in children]
    seconds = time.perf_counter() - start
    if any(c.returncode for c in children):
        raise SystemExit("\n".join(log[-3000:] for log in logs))
    return seconds


def figures(workdir: str) -> dict:
    """The report's accuracies and flags (what must not depend on the process count)."""
    from hpm_jax.runtime import integrity

    report = integrity.read_json(os.path.join(workdir, "report.json"))
    out = {}
    for head, row in report["heads"].items():
        for kind, entry in row.items():
            if isinstance(entry, dict):
                out[f"{head}/{kind}"] = (entry["robust_accuracy"], entry.get("flagged"))
            else:
                out[f"{head}/{kind}"] = entry
    for name in sorted(os.listdir(os.path.join(workdir, "adversarial"))):
        with np.load(os.path.join(workdir, "adversarial", name)) as f:
            out[name] = f["robust"].tolist()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--num_examples", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--n_iter", type=int, default=10, help="APGD-CE iterations")
    parser.add_argument("--checkpoint", default=None, help="Default: a model made here.")
    parser.add_argument("--workdir", default=None, help="Default: a temporary directory.")
    parser.add_argument("--nopin", action="store_true", help="Do not pin processes to cores.")
    parser.add_argument("--rounds", type=int, default=1, help="Timed runs per count.")
    args = parser.parse_args()
    root = args.workdir or tempfile.mkdtemp(prefix="evaluate_processes_")
    checkpoint = args.checkpoint or make_model(os.path.join(root, "model"))
    overrides = [
        f"evaluation.num_examples={args.num_examples}",
        f"evaluation.batch_size={args.batch_size}",
        "evaluation.eps=0.02",
        "evaluation.version='apgd-ce'",
        f"evaluation.attack_options.apgd-ce.n_iter={args.n_iter}",
        "evaluation.surrogates=('fc', 'ste')",
        "evaluation.naive_autoattack=False",
    ]
    print(hardware_summary(), flush=True)
    print(f"{args.num_examples} Fashion-MNIST points in batches of {args.batch_size}; "
          f"AutoAttack (APGD-CE, {args.n_iter} iterations) on FC and l2-EMA, MSA (fc, ste) on "
          f"HPM; one CPU device per process, {'unpinned' if args.nopin else 'one core each'}; "
          f"{len(os.sched_getaffinity(0))} cores")  # fmt: skip
    counts = [int(p) for p in args.processes.split(",")]
    times, reference = {p: [] for p in counts}, None
    for r in range(args.rounds):  # the counts in turn, so a shared machine's drift hits all
        for p in counts if r % 2 == 0 else counts[::-1]:
            workdir = os.path.join(root, f"p{p}_r{r}")
            times[p].append(evaluate(checkpoint, workdir, p, overrides, not args.nopin))
            got = figures(workdir)
            reference = reference or got
            print(f"round {r}: {p} process(es) {times[p][-1]:.1f} s; report equal to the "
                  f"first run's: {got == reference}", flush=True)  # fmt: skip
            if got != reference:
                raise SystemExit(f"the report differs on {p} processes")
    median = {p: float(np.median(t)) for p, t in times.items()}
    print(f"| processes | wall s (median of {args.rounds}) | each round | speed-up over "
          f"{counts[0]} | efficiency |")  # fmt: skip
    print("|---|---|---|---|---|")
    for p in counts:
        speedup = median[counts[0]] / median[p]
        rounds = ", ".join(f"{t:.1f}" for t in times[p])
        print(f"| {p} | {median[p]:.1f} | {rounds} | {speedup:.2f} | "
              f"{speedup / p * counts[0]:.0%} |")  # fmt: skip
    print(json.dumps({"seconds": times}))


if __name__ == "__main__":
    main()
