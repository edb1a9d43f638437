"""Compile time and program size of an APGD step: weights as traced arguments vs a closure.

    python benchmarks/traced_weights.py                         # WRN-28-10 and WRN-70-16
    python benchmarks/traced_weights.py --models wrn-28-10 --batch 2

For each model, the jitted APGD iteration of the host loop (`hpm_jax.attacks.driver` step of
`ApgdSteps`:
one forward + backward and the update) is lowered and compiled twice, side by side in this
process: with `hpm_jax.models.logits_fn(model, variables)` (a pytree, the weights are
arguments) and with `lambda x: model.apply(variables, x)` (a closure, the weights become
constants of the program). Printed per model and form: parameter MB, StableHLO text MB,
lowering and compile seconds, and their ratios closure / traced. `--skip_closure_above_mb`
leaves out closures of larger models (their program holds every weight as text: a 1 GB model
needs several GB of memory just for that text).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import hardware_summary

from hpm_jax.attacks import apgd_steps, contract, driver
from hpm_jax.attacks.apgd_attack import ApgdSteps
from hpm_jax.models import abstract_variables, get_model, logits_fn

MODELS = {  # RobustBench's two most common CIFAR-10 sizes
    "wrn-28-10": ("wide_resnet", dict(depth=28, width=10)),
    "wrn-70-16": ("dm_wide_resnet", dict(depth=70, width=16)),
}


def _random_variables(model):
    """Variables of the model's shapes, filled with small normal values (init would take as
    long as the benchmark itself on a 2-core CPU for WRN-70-16)."""
    shapes = abstract_variables(model)
    leaves, tree = jax.tree_util.tree_flatten(shapes)
    rng = np.random.default_rng(0)
    arrays = [jnp.asarray(0.01 * rng.standard_normal(s.shape, np.float32)) for s in leaves]
    return jax.tree_util.tree_unflatten(tree, arrays)


def _measure(fn, x, y):
    """(StableHLO MB, lowering s, compile s) of the APGD host-loop step for `fn`."""
    fn = contract.traced(fn)
    attack = ApgdSteps(apgd_steps.ApgdConfig(norm="Linf", loss="ce"), n_restarts=1)
    eps = jnp.full(x.shape[:1], 8 / 255)
    phase = driver.Phase(100, apgd_steps.schedule(100, "Linf"))
    t0 = time.perf_counter()
    lowered = driver.lower(attack, (fn, fn), dict(rho=jnp.float32(0.75)), x, y, eps,
                           jax.random.key(0), phase=phase, loop="host")  # fmt: skip
    t1 = time.perf_counter()
    size = len(lowered.as_text()) / 2**20
    t2 = time.perf_counter()
    lowered.compile()
    t3 = time.perf_counter()
    return size, t1 - t0, t3 - t2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--skip_closure_above_mb", type=float, default=600.0)
    args = parser.parse_args()
    print(hardware_summary())
    print(f"APGD step (host loop), batch {args.batch}, 32x32x3, Linf CE, one device")
    print("| model | params MB | form | StableHLO MB | lower s | compile s |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        arch, kwargs = MODELS[name]
        model = get_model(arch, num_classes=10, **kwargs)
        variables = _random_variables(model)
        mb = sum(a.nbytes for a in jax.tree_util.tree_leaves(variables)) / 2**20
        x = jnp.full((args.batch, 32, 32, 3), 0.5)
        y = jnp.zeros(args.batch, jnp.int32)
        rows = {"traced": _measure(logits_fn(model, variables), x, y)}
        if mb <= args.skip_closure_above_mb:
            closure = lambda v, m=model, w=variables: m.apply(w, v)
            rows["closure"] = _measure(closure, x, y)
        for form, (size, lower, compile_s) in rows.items():
            print(f"| {name} | {mb:.0f} | {form} | {size:.2f} | {lower:.1f} | {compile_s:.1f} |")
        if "closure" in rows:
            (ts, tl, tc), (cs, cl, cc) = rows["traced"], rows["closure"]
            print(f"| {name} | | closure / traced | {cs / ts:.0f}x | {cl / tl:.1f}x | "
                  f"{cc / tc:.1f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
