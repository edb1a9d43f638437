"""Compiled memory of untargeted FAB's iteration (C backward passes, in chunks) vs FAB-T's (one).

    python benchmarks/fab_memory.py                               # small CNN, C = 100, batch 128
    python benchmarks/fab_memory.py --arch resnet18 --batch 64 --chunks 1,10,100

For each attack the program of one phase's iterations (`driver.lower`: the whole lax loop, the
GPU/TPU default; `--loop host`: one iteration) is lowered and compiled, and XLA's memory
analysis (`compiled.memory_analysis()`) read: temp bytes (the buffers live inside the program,
what grows with the backward passes held at once), argument and output bytes. Untargeted FAB
runs with each `class_chunk` of `--chunks` (C = all at once, the form before chunking); the
ratio column is temp / FAB-T's temp. Nothing is run, so the figures are the compiler's,
exactly, for the backend it runs on.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from common import hardware_summary

from hpm_jax.attacks import contract, driver
from hpm_jax.attacks.fab_attack import FabConfig, FabSteps
from hpm_jax.models import get_model, logits_fn

ARCHS = {
    "small_cnn": dict(in_channels=3, image_size=32, channels=(32, 64, 128), num_features=256),
    "resnet18": {},
}


def fab_memory(fn, x, y, *, class_chunk: int | None, loop: str, n_iter: int = 10):
    """XLA's memory analysis of FAB's iterations on (x, y): FAB-T (one target) when
    class_chunk is None, else untargeted FAB with that chunk."""
    config = FabConfig(norm="Linf", n_targets=1, n_restarts=1, targeted=class_chunk is None,
                       class_chunk=class_chunk or 1)  # fmt: skip
    fn = contract.traced(fn)
    params = {k: jnp.float32(v) for k, v in dict(alpha_max=0.1, eta=1.05, beta=0.9).items()}
    eps = jnp.full(x.shape[:1], 8 / 255)
    lowered = driver.lower(FabSteps(config), (fn, fn), params, x, y, eps, jax.random.key(0),
                           phase=driver.Phase(n_iter), loop=loop)  # fmt: skip
    return lowered.compile().memory_analysis()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="small_cnn", choices=sorted(ARCHS))
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--chunks", default="1,10,100")
    parser.add_argument("--loop", default="lax", choices=("lax", "host"))
    args = parser.parse_args()
    print(hardware_summary())
    model = get_model(args.arch, num_classes=args.classes, **ARCHS[args.arch])
    x = jnp.full((args.batch, 32, 32, 3), 0.5, jnp.float32)
    variables = model.init(jax.random.key(0), x[:1])
    fn = logits_fn(model, variables)
    y = jnp.asarray(np.arange(args.batch) % args.classes, jnp.int32)
    print(f"{args.arch}, C = {args.classes}, batch {args.batch}, 32x32x3, Linf, "
          f"{args.loop} loop, {jax.default_backend()}")  # fmt: skip
    print("| attack | class_chunk | temp MB | arguments MB | outputs MB | temp / FAB-T |")
    print("|---|---|---|---|---|---|")
    base = fab_memory(fn, x, y, class_chunk=None, loop=args.loop)
    rows = [("FAB-T", None, base)]
    for chunk in (int(c) for c in args.chunks.split(",")):
        rows.append(("FAB", chunk, fab_memory(fn, x, y, class_chunk=chunk, loop=args.loop)))
    for name, chunk, m in rows:
        mb = [v / 2**20 for v in (m.temp_size_in_bytes, m.argument_size_in_bytes,
                                  m.output_size_in_bytes)]  # fmt: skip
        ratio = m.temp_size_in_bytes / base.temp_size_in_bytes
        print(f"| {name} | {chunk or '-'} | {mb[0]:.1f} | {mb[1]:.1f} | {mb[2]:.1f} | "
              f"{ratio:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
