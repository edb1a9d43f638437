"""How many programs a standard AutoAttack run compiles: the CPU's ladder and loop, and a GPU's.

    python benchmarks/compile_count.py                 # 1000 points, batches of 500, 1 device
    python benchmarks/compile_count.py --n 2000 --eps 0.02

Runs the `standard` chain (APGD-CE, APGD-T, FAB-T, Square) twice on a small random ReLU conv
net (labels: its own predictions, so every point starts robust; eps such that the attacks
break points gradually and the buckets shrink as in a real evaluation), counting XLA compiles
from JAX's compile log (`jax_log_compiles`): every compiled program, and the "model programs"
among them (those taking the model's weights as arguments: what is expensive to compile for a
WRN on a GPU). Run 1 is the CPU: loop "auto" (host loop for the gradient attacks) and the
7/8 bucket ladder. Run 2 is what a GPU compiles: loop "lax" and the halving ladder
(`batching.ladder_step` of a GPU), emulated on this CPU: which programs compile depends only
on the loop, the ladder and which points break, not on the backend. The iteration budgets are
reduced (`--n_iter`); the host loop's programs do not depend on them, the lax loop compiles
one program per (attack, bucket size) whatever the number of iterations.
"""

from __future__ import annotations

import argparse
import collections
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
from common import hardware_summary

from hpm_jax.attacks import AutoAttack, batching

_COMPILING = re.compile(r"Compiling (jit\([^)]*\))")
WEIGHT_SHAPE = "float32[256,10]"  # the dense layer's weights: only programs with the model


def _net(params, x):
    h = x - 0.5
    for i, stride in enumerate((1, 2)):
        h = jax.lax.conv_general_dilated(h, params[f"conv{i}"], (stride, stride), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
        h = jax.nn.relu(h + params[f"bias{i}"])
    return h.reshape(h.shape[0], -1) @ params["dense"]


def model(seed: int = 0):
    rng = np.random.default_rng(seed)
    params = {"conv0": rng.normal(size=(3, 3, 3, 8)) / 3, "bias0": np.zeros(8),
              "conv1": rng.normal(size=(3, 3, 8, 16)) / 6, "bias1": np.zeros(16),
              "dense": rng.normal(size=(256, 10)) / 8}  # fmt: skip
    return jax.tree_util.Partial(_net, {k: jnp.asarray(v, jnp.float32) for k, v in params.items()})


class CompileCounter(logging.Handler):
    """Counts JAX's "Compiling jit(name) ..." log records: all, and those with the weights."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.all, self.model = collections.Counter(), collections.Counter()

    def emit(self, record):
        message = record.getMessage()
        found = _COMPILING.search(message)
        if found:
            self.all[found.group(1)] += 1
            if WEIGHT_SHAPE in message:
                self.model[found.group(1)] += 1


def count(fn, x, y, *, eps, n_iter, loop, bucket_sizes):
    jax.clear_caches()
    counter = CompileCounter()
    loggers = [logging.getLogger(n) for n in ("jax._src.interpreters.pxla", "jax._src.dispatch")]
    for lg in loggers:
        lg.addHandler(counter)
    options = {"apgd-ce": dict(n_iter=n_iter), "apgd-t": dict(n_iter=n_iter),
               "fab-t": dict(n_iter=n_iter), "square": dict(n_queries=10 * n_iter)}  # fmt: skip
    try:
        with jax.log_compiles(True):
            report = AutoAttack(fn, eps=eps, version="standard", attack_options=options,
                                mesh=jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",)),
                                bucket_sizes=bucket_sizes, loop=loop, log=None,
                                run_checks=False).run(x, y, batch_size=500)  # fmt: skip
    finally:
        for lg in loggers:
            lg.removeHandler(counter)
    return report, counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--eps", type=float, default=0.01)
    parser.add_argument("--n_iter", type=int, default=10)
    args = parser.parse_args()
    print(hardware_summary())
    fn = model()
    x = np.random.default_rng(1).uniform(0, 1, (args.n, 8, 8, 3)).astype(np.float32)
    y = np.asarray(jnp.argmax(fn(jnp.asarray(x)), 1), np.int32)
    gpu_ladder = batching.bucket_sizes(500, 1, step=batching.ladder_step([_Gpu()]))
    runs = {
        "CPU (auto loop, 7/8 ladder)": dict(loop="auto", bucket_sizes=None),
        "GPU (lax loop, halving ladder)": dict(loop="lax", bucket_sizes=gpu_ladder),
    }
    print(f"standard chain, {args.n} points, batches of 500, eps {args.eps}, n_iter {args.n_iter}")
    for name, kw in runs.items():
        report, counter = count(fn, x, y, eps=args.eps, n_iter=args.n_iter, **kw)
        after = {k: f"{v:.1%}" for k, v in report.robust_accuracy_after.items()}
        print(f"\n{name}: bucket sizes {report.bucket_sizes}; robust after {after}")
        print(f"  programs compiled: {sum(counter.all.values())}, with the model's weights: "
              f"{sum(counter.model.values())}")  # fmt: skip
        print("  model programs by function:", dict(counter.model.most_common()))


class _Gpu:
    platform = "gpu"


if __name__ == "__main__":
    main()
