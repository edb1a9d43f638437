"""The model programs with and without hpm_jax.runtime.xla_options.CPU_OPTIONS, side by side.

    python benchmarks/xla_cpu_options.py                                  # resnet18, 12..128
    python benchmarks/xla_cpu_options.py --model small_cnn --shape 28 28 1 --batches 64 300

For each batch size: the median wall time of --repeats jitted forward passes and of
forward + input gradient (the attacks' two programs; the gradient of the top logit's sum),
compiled with plain `jax.jit` (XLA:CPU's defaults: YNNPACK fusions) and with
`hpm_jax.runtime.xla_options.jit` (YNNPACK fusions off), interleaved in one process on the same
random weights and images, the batch sharded over --devices XLA host devices.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--shape", type=int, nargs=3, default=[32, 32, 3], help="H W C")
    p.add_argument("--batches", type=int, nargs="+", default=[12, 36, 44, 128])
    p.add_argument("--devices", type=int, default=os.cpu_count(), help="XLA host devices")
    p.add_argument("--repeats", type=int, default=9)
    return p.parse_args()


def main(args: argparse.Namespace) -> None:
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from hpm_jax.models import get_model, logits_fn
    from hpm_jax.runtime.xla_options import compiler_options, jit

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import hardware_summary

    print(hardware_summary())
    print(f"{jax.device_count()} XLA host devices; options: {compiler_options()}; median of "
          f"{args.repeats}, interleaved\n")  # fmt: skip
    model = get_model(args.model, num_classes=10)
    shape = tuple(args.shape)
    variables = model.init(jax.random.key(0), np.zeros((1, *shape), np.float32))
    forward = logits_fn(model, variables)

    def gradient(f, x):
        return jax.grad(lambda v: f(v).max(-1).sum())(x)

    programs = {
        (kind, name): wrap(fn)
        for kind, fn in (("forward", lambda f, x: f(x)), ("gradient", gradient))
        for name, wrap in (("default", jax.jit), ("ours", jit))
    }
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("batch",)), PartitionSpec("batch"))
    rng = np.random.default_rng(0)
    print("| batch | program | default ms | ours ms | ours / default |\n|---|---|---|---|---|")
    for batch in args.batches:
        x = jax.device_put(rng.random((batch, *shape), np.float32), sharding)
        times = {key: [] for key in programs}
        for fn in programs.values():
            jax.block_until_ready(fn(forward, x))  # compile
        for _ in range(args.repeats):
            for key, fn in programs.items():
                start = time.perf_counter()
                jax.block_until_ready(fn(forward, x))
                times[key].append(time.perf_counter() - start)
        med = {key: 1e3 * sorted(t)[len(t) // 2] for key, t in times.items()}
        for kind in ("forward", "gradient"):
            a, b = med[kind, "default"], med[kind, "ours"]
            print(f"| {batch} | {kind} | {a:.1f} | {b:.1f} | {b / a:.2f} |")


if __name__ == "__main__":
    ARGS = _parse()
    # XLA reads its flags once, when jax initialises: before any import of jax.
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={ARGS.devices}"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main(ARGS)
