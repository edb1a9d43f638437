"""Adversarial-training step time: HPM head vs FC head on the same backbone, side by side.

    python benchmarks/train_step_hpm_vs_fc.py                       # small CNN, CPU-sized
    python benchmarks/train_step_hpm_vs_fc.py --arch wide_resnet --kwargs depth=28,width=10 \
        --image_size 32 --batch 128 --objective trades               # on an accelerator

Both steps are the program's own (`hpm_jax.training.steps.train_step`, jitted with the
state donated and the batch sharded over every local device), on the same batch, backbone
and attack. HPM trains on its HPM and FC logits from one backbone pass (the default
objective), its prototype EMA updated from the features the objective computes anyway.
Rounds alternate FC and HPM, so slow drifts of a shared machine hit both alike; the
median of the per-round HPM / FC ratios is the headline, printed with the hardware.
"""

from __future__ import annotations

import argparse
import ast
import platform
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from common import alternating_step_times, jitted_train_step

from hpm_jax.models import get_model
from hpm_jax.runtime.sharding import data_sharding, make_mesh, replicated
from hpm_jax.training import objectives


def _kwargs(text: str) -> dict:
    if not text:
        return {}
    call = ast.parse(f"f({text})", mode="eval").body
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}


def _hardware() -> str:
    device = jax.devices()[0]
    kind = device.device_kind
    if device.platform == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                names = [line.split(":", 1)[1].strip() for line in f if "model name" in line]
            kind = f"{names[0]} ({len(names)} cores)" if names else platform.processor()
        except OSError:
            kind = platform.processor()
    return f"{jax.device_count()} x {device.platform} device(s): {kind}; jax {jax.__version__}"


def _step_fn(head: str, args, mesh, batch):
    model = get_model(args.arch, num_classes=args.num_classes, head=head, **_kwargs(args.kwargs))
    attack = objectives.AttackSpec(
        norm="Linf", eps=8 / 255, step_size=2 / 255, num_steps=args.attack_steps,
        random_start="uniform" if args.objective == "pgd_at" else "normal",
        bn_train=args.objective == "pgd_at", mode="fc" if head == "fc" else "hpm",
    )  # fmt: skip
    weights = (("fc", 1.0),) if head == "fc" else (("hpm", 1.0), ("fc", 1.0))
    features = None if head == "fc" else ("clean" if args.objective == "trades" else "adversarial")
    objective = objectives.Objective(args.objective, weights, attack, 6.0, features)
    variables = jax.jit(model.init)(jax.random.key(0), batch["image"][:1])
    if head == "hpm":  # prototypes as after init_prototypes: every class seen
        protos = variables["prototypes"]["head"]
        variables["prototypes"]["head"] = {
            "ema": jax.random.normal(jax.random.key(1), protos["ema"].shape),
            "seen": jnp.ones_like(protos["seen"]),
        }
    return jitted_train_step(model, objective, variables, mesh)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--kwargs", default="in_channels=3,image_size=32")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--objective", default="pgd_at", choices=objectives.OBJECTIVES)
    parser.add_argument("--attack_steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps_per_round", type=int, default=5)
    args = parser.parse_args()

    mesh = make_mesh()
    rng = np.random.default_rng(0)
    shape = (args.batch, args.image_size, args.image_size, args.channels)
    batch = jax.device_put(
        {
            "image": rng.random(shape, dtype=np.float32),
            "label": rng.integers(0, args.num_classes, args.batch).astype(np.int32),
        },
        data_sharding(mesh),
    )
    key = jax.device_put(jax.random.key(0), replicated(mesh))
    runs = {head: list(_step_fn(head, args, mesh, batch)) for head in ("fc", "hpm")}
    times = alternating_step_times(runs, batch, key, rounds=args.rounds,
                                   steps=args.steps_per_round)  # fmt: skip

    # XLA's own count of the compiled steps' floating-point work: load-independent.
    flops = {}
    for head, (fn, state) in runs.items():
        cost = fn.lower(state, batch, key).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops[head] = float(cost.get("flops", float("nan"))) if cost else float("nan")

    fc, hpm = statistics.median(times["fc"]), statistics.median(times["hpm"])
    # Each round times both heads back to back: their ratio cancels slow load changes.
    paired = statistics.median(h / f for h, f in zip(times["hpm"], times["fc"], strict=True))
    print(f"hardware: {_hardware()}")
    print(
        f"model: {args.arch} {_kwargs(args.kwargs)}, batch {args.batch}, {args.objective} "
        f"with a {args.attack_steps}-step attack, {args.rounds} rounds x "
        f"{args.steps_per_round} steps"
    )
    print(f"FC  head: {fc * 1e3:8.1f} ms/step (median; min {min(times['fc']) * 1e3:.1f})")
    print(f"HPM head: {hpm * 1e3:8.1f} ms/step (median; min {min(times['hpm']) * 1e3:.1f})")
    print(f"HPM / FC: {hpm / fc:.3f} (ratio of medians), {paired:.3f} (median of per-round ratios)")
    print(f"HPM step time: {(paired - 1) * 100:+.1f}% over FC")
    print(
        f"XLA flops per step (per device): FC {flops['fc']:.4g}, HPM {flops['hpm']:.4g}, "
        f"HPM / FC {flops['hpm'] / flops['fc']:.4f}"
    )


if __name__ == "__main__":
    main()
