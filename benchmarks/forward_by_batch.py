"""The forward pass of a CIFAR ResNet-18 by batch size: hpm-jax (XLA:CPU) against torch.

    python benchmarks/forward_by_batch.py                      # batches 8 16 32 64 128
    python benchmarks/forward_by_batch.py --batches 12 44 --devices 2 --threads 2

AutoAttack's cost after its first attack is the forward (Square) and forward + backward
(APGD-T, FAB-T) of the few points still robust, so how each framework's speed falls with
the batch decides how the chain compares (benchmarks/RESULTS.md). This script times, for each
batch size, the median of --repeats jitted forward passes of our `resnet18` (the batch
sharded over --devices XLA host devices, weights as arguments) and of the reference
`ResNet18` of pyautoattack's examples (torch, --threads intra-op threads, no_grad), both
on random weights and inputs. Each framework runs in its own subprocess: torch's OpenMP
threads keep spinning after a call and slow XLA's threads when the two are interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    p.add_argument("--devices", type=int, default=os.cpu_count(), help="XLA host devices")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--framework", choices=("jax", "torch"), help=argparse.SUPPRESS)
    return p.parse_args()


def _median_ms(call, repeats: int) -> float:
    call()  # compile / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def _time_torch(args) -> dict[int, float]:
    import torch

    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from torch_reference import pyautoattack_example

    torch.set_num_threads(args.threads)
    net = pyautoattack_example("resnet").ResNet18().eval()
    out = {}
    with torch.no_grad():
        for batch in args.batches:
            x = torch.rand(batch, 3, 32, 32)
            out[batch] = _median_ms(lambda: net(x), args.repeats)  # noqa: B023
    return out


def _time_jax(args) -> dict[int, float]:
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from hpm_jax.models import get_model, logits_fn

    model = get_model("resnet18", num_classes=10)
    variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    forward = logits_fn(model, variables)
    apply = jax.jit(lambda f, x: f(x))
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("batch",)), PartitionSpec("batch"))
    rng, out = np.random.default_rng(0), {}
    for batch in args.batches:
        x = jax.device_put(rng.random((batch, 32, 32, 3), np.float32), sharding)
        out[batch] = _median_ms(
            lambda: jax.block_until_ready(apply(forward, x)),  # noqa: B023
            args.repeats,
        )
    return out


def _in_subprocess(args, framework: str) -> dict[int, float]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
    )
    cmd = [sys.executable, __file__, "--framework", framework, "--repeats", str(args.repeats),
           "--devices", str(args.devices), "--threads", str(args.threads),
           "--batches", *map(str, args.batches)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def main() -> None:
    args = _parse()
    if args.framework:  # the child: time one framework, print its numbers as json
        timed = _time_jax(args) if args.framework == "jax" else _time_torch(args)
        print(json.dumps(timed))
        return
    sys.path.insert(0, HERE)
    from common import hardware_summary

    print(hardware_summary())
    print(f"jax: {args.devices} host devices; torch: {args.threads} threads; median of "
          f"{args.repeats}\n")  # fmt: skip
    ours, theirs = _in_subprocess(args, "jax"), _in_subprocess(args, "torch")
    print("| batch | jax ms | torch ms | jax / torch |\n|---|---|---|---|")
    for batch in args.batches:
        print(f"| {batch} | {ours[batch]:.1f} | {theirs[batch]:.1f} | "
              f"{ours[batch] / theirs[batch]:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
