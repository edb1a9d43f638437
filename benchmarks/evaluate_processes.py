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
ARCH = dict(in_channels=1, image_size=28, channels=[8, 16, 16], num_features=32)


def make_model(directory: str, steps: int = 40, batch: int = 64) -> str:
    """A weak but real HPM model: SGD on the FC logits, then P_ema = the class means."""
    import jax
    import jax.numpy as jnp
    import optax

    from hpm_jax import data
    from hpm_jax.models import get_model
    from hpm_jax.models.export import save_model
    from hpm_jax.models.prototypes import init_prototypes

    model = get_model("small_cnn", num_classes=10, head="hpm", **ARCH)
    source = data.get_source("fashion_mnist", "train")
    n = steps * batch // 4
    x = np.stack([source[i]["image"] for i in range(n)]).astype(np.float32) / 255.0
    x = x.reshape(-1, 28, 28, 1)
    y = np.asarray([source[i]["label"] for i in range(n)], np.int32)
    variables = model.init(jax.random.key(0), jnp.asarray(x[:2]))
    opt = optax.sgd(0.1, momentum=0.9)

    @jax.jit
    def step(params, stats, opt_state, xb, yb):
        def loss(p):
            logits, upd = model.apply({**variables, "params": p, "batch_stats": stats}, xb,
                                      train=True, mode="fc", mutable=["batch_stats"])  # fmt: skip
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), upd

        (_, upd), g = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = opt.update(g, opt_state)
        return optax.apply_updates(params, updates), upd["batch_stats"], opt_state

    params, stats = variables["params"], variables["batch_stats"]
    opt_state = opt.init(params)
    for i in range(steps):
        rows = slice((i * batch) % n, (i * batch) % n + batch)
        params, stats, opt_state = step(params, stats, opt_state, x[rows], y[rows])
    variables = {**variables, "params": params, "batch_stats": stats}
    batches = [{"image": jnp.asarray(x[i : i + 128]), "label": jnp.asarray(y[i : i + 128])}
               for i in range(0, n, 128)]  # fmt: skip
    variables = init_prototypes(model, variables, batches)
    return save_model(directory, variables, arch="small_cnn", num_classes=10, head="hpm", **ARCH)


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
