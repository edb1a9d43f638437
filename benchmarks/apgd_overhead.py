"""APGD-CE's cost beyond its gradients: wall time / (n_iter x one jitted forward+backward).

    python benchmarks/apgd_overhead.py                                  # resnet18 and small_cnn
    python benchmarks/apgd_overhead.py --models resnet18 --batch 256    # on an accelerator
    python benchmarks/apgd_overhead.py --host_devices 4                 # CPU: 4 XLA host devices
    python benchmarks/apgd_overhead.py --loop lax                       # force one while loop

Both sides run the same model on the same batch, timed side by side in one process and
interleaved (so load from other processes hits both alike), after compiling them. The
denominator is n_iter jitted calls of jax.grad(sum of cross-entropy) wrt the images, each
blocked on. Ratios: of the fastest repeats, of the median repeats, and of the median CPU
time of this process (all threads): on a machine shared with other jobs, wall time swings
with their load and CPU time much less. APGD itself does n_iter + 1 gradients and one
clean forward (the judge), so 1.0 is out of reach: about 1 + 1.3 / n_iter is the floor. The
rest is APGD's bookkeeping (step, projection, momentum, best-point and checkpoint updates)
and, on CPU, the dispatch of one call per iteration; it should stay under 5%.
"""

from __future__ import annotations

import argparse
import os

if __name__ == "__main__":  # XLA reads its flags once, before jax is imported
    _pre = argparse.ArgumentParser(add_help=False)
    _pre.add_argument("--host_devices", type=int, default=None)
    _devices = _pre.parse_known_args()[0].host_devices
    if _devices:
        os.environ["XLA_FLAGS"] = (
            f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={_devices}"
        )

import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from hpm_jax.attacks import losses
from hpm_jax.attacks.apgd_attack import apgd
from hpm_jax.models import get_model
from hpm_jax.runtime.sharding import data_sharding, make_mesh

MODELS = {
    "resnet18": dict(name="resnet18"),
    "small_cnn": dict(name="small_cnn", in_channels=3, image_size=32),
}


def hardware() -> str:
    devices = jax.devices()
    kind = f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{kind}; host CPU {cpu}, {os.cpu_count()} cores; jax {jax.__version__}"


def measure(
    model_name: str, batch: int, n_iter: int, repeats: int, loop: str = "auto", seed: int = 0
) -> dict:
    spec = dict(MODELS[model_name])
    model = get_model(spec.pop("name"), num_classes=10, **spec)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.uniform(0, 1, (batch, 32, 32, 3)), jnp.float32)
    variables = model.init(jax.random.key(seed), x[:1])

    def logits_fn(v):
        return model.apply(variables, v)

    sharding = data_sharding(make_mesh())
    x = jax.device_put(x, sharding)
    # The labels the model predicts, so every point starts clean-correct and is attacked (APGD
    # runs all n_iter steps on the fixed-shape batch whether or not points break).
    y = jax.device_put(jnp.argmax(jax.jit(logits_fn)(x), axis=1).astype(jnp.int32), sharding)

    grad = jax.jit(jax.grad(lambda v: jnp.sum(losses.cross_entropy(logits_fn(v), y))))

    def timed(fn) -> tuple[float, float]:  # (wall, CPU time of this process, all threads)
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - wall, time.process_time() - cpu

    def grads() -> None:  # n_iter jitted forward+backward calls, each blocked on
        for _ in range(n_iter):
            grad(x).block_until_ready()

    def attack() -> None:
        res = apgd(logits_fn, x, y, key=jax.random.key(seed), eps=8 / 255, n_iter=n_iter, loop=loop)
        res.robust.block_until_ready()

    compile_s = timed(lambda: (grad(x).block_until_ready(), attack()))[0]
    attack_t, grads_t = [], []
    for _ in range(repeats):  # interleaved, so slow phases of a shared machine hit both
        grads_t.append(timed(grads))
        attack_t.append(timed(attack))
    attack_s, attack_cpu = zip(*attack_t, strict=True)
    grads_s, grads_cpu = zip(*grads_t, strict=True)
    median = statistics.median
    return dict(model=model_name, batch=batch, n_iter=n_iter, compile_s=compile_s,
                attack_s=attack_s, grads_s=grads_s,
                wall_min=min(attack_s) / min(grads_s),
                wall_median=median(attack_s) / median(grads_s),
                cpu_median=median(attack_cpu) / median(grads_cpu))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "small_cnn"],
                        choices=sorted(MODELS))  # fmt: skip
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help="one per model (default: 8 for resnet18 and 128 for small_cnn on "
                        "CPU, 256 for both on an accelerator)")  # fmt: skip
    parser.add_argument("--n_iter", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "lax", "host"],
        help="APGD's iteration loop (auto: host on CPU, lax elsewhere)",
    )
    parser.add_argument("--host_devices", type=int, default=None,
                        help="CPU only: split the host into this many XLA devices")  # fmt: skip
    args = parser.parse_args()
    on_cpu = jax.devices()[0].platform == "cpu"
    default = {"resnet18": 8 if on_cpu else 256, "small_cnn": 128 if on_cpu else 256}
    batches = args.batch or [default[m] for m in args.models]
    print(f"{hardware()}; loop={args.loop}")
    print("model      batch  n_iter  APGD-CE (s)  n_iter x fwd+bwd (s)  ratio: wall min / "
          "wall median / CPU time median")  # fmt: skip
    for name, batch in zip(args.models, batches, strict=True):
        r = measure(name, batch, args.n_iter, args.repeats, args.loop)
        print(f"{name:<10} {batch:>5}  {r['n_iter']:>6}  {min(r['attack_s']):>11.3f}  "
              f"{min(r['grads_s']):>20.3f}  {r['wall_min']:.3f} / {r['wall_median']:.3f} / "
              f"{r['cpu_median']:.3f}")  # fmt: skip
        print(
            f"    runs: APGD {', '.join(f'{t:.2f}' for t in r['attack_s'])} s; fwd+bwd "
            f"{', '.join(f'{t:.2f}' for t in r['grads_s'])} s; compile {r['compile_s']:.0f} s"
        )


if __name__ == "__main__":
    main()
