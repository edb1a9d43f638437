"""APGD vs PGD inside adversarial training: step time at equal gradients, and attack strength.

    python benchmarks/train_step_apgd_vs_pgd.py --model /tmp/fmnist_at/model      # both parts
    python benchmarks/train_step_apgd_vs_pgd.py --grads 3,10 --rounds 10           # time only

Step time: the program's own `hpm_jax.training.steps.train_step` (jitted, state donated, the
batch sharded over every local device) for PGD-AT on Fashion-MNIST's small CNN (the shape of
configs/fashion_mnist.py), its examples crafted by PGD with num_steps = k or by APGD
(`attack.method=apgd`) with num_steps = k - 1: both k gradients of the attack per step (APGD
takes one at its start). Rounds alternate the two, so slow drifts of a shared machine hit both
alike; the median of the per-round APGD / PGD ratios is the headline, printed with the
hardware. (No XLA flop count: XLA's cost analysis counts a lax loop's body once, whatever
its trip count, and both attacks are lax loops.)

Strength (with --model, an adversarially trained model directory): PGD (the config's step
size, uniform random start) and APGD on CE, each at k gradients, against that fixed model in
eval mode, on the first --points Fashion-MNIST test images: the mean CE loss each reaches and
the fraction of points it misclassifies. The same one-run attacks the training step makes.
"""

from __future__ import annotations

import argparse
import functools
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from common import alternating_step_times, hardware_summary, jitted_train_step

from hpm_jax.attacks import apgd_attack, pgd
from hpm_jax.attacks.losses import cross_entropy
from hpm_jax.data.offline import debian_fashion_mnist
from hpm_jax.models import get_model, logits_fn
from hpm_jax.models.export import load_model
from hpm_jax.runtime.sharding import data_sharding, make_mesh, replicated
from hpm_jax.training import objectives

MODEL_KWARGS = dict(in_channels=1, image_size=28, channels=(16, 32, 64), num_features=256)
EPS, STEP_SIZE = 0.1, 0.04  # configs/fashion_mnist.py's training attack


def _test_points(n: int) -> tuple[np.ndarray, np.ndarray]:
    source = debian_fashion_mnist(f"test[:{n}]")
    records = [source[i] for i in range(len(source))]
    x = np.stack([r["image"] for r in records]).astype(np.float32) / 255.0
    return x, np.array([r["label"] for r in records], np.int32)


def _step_fn(method: str, grads: int, mesh, batch):
    model = get_model("small_cnn", num_classes=10, head="fc", **MODEL_KWARGS)
    attack = objectives.AttackSpec(
        norm="Linf", eps=EPS, step_size=STEP_SIZE, random_start="uniform", bn_train=True,
        mode="fc", method=method, num_steps=grads if method == "pgd" else grads - 1,
    )  # fmt: skip
    objective = objectives.Objective("pgd_at", (("fc", 1.0),), attack, 6.0, None)
    variables = jax.jit(model.init)(jax.random.key(0), batch["image"][:1])
    return jitted_train_step(model, objective, variables, mesh)


def time_steps(grads: int, args, mesh, batch, key) -> None:
    runs = {m: list(_step_fn(m, grads, mesh, batch)) for m in ("pgd", "apgd")}
    times = alternating_step_times(runs, batch, key, rounds=args.rounds,
                                   steps=args.steps_per_round)  # fmt: skip
    p, a = statistics.median(times["pgd"]), statistics.median(times["apgd"])
    ratios = [x / y for x, y in zip(times["apgd"], times["pgd"], strict=True)]
    paired, lo, hi = statistics.median(ratios), min(ratios), max(ratios)
    print(
        f"k = {grads} gradients: PGD-{grads} {p * 1e3:7.1f} ms/step, APGD n_iter={grads - 1} "
        f"{a * 1e3:7.1f} ms/step (medians of {args.rounds} rounds x {args.steps_per_round}); "
        f"APGD / PGD {paired:.3f} (median of per-round ratios; range {lo:.3f}-{hi:.3f}), "
        f"{(paired - 1) * 100:+.1f}%"
    )


def strength(args) -> None:
    model, variables = load_model(args.model)
    f = logits_fn(model, variables, mode="fc")
    x, y = _test_points(args.points)
    x, y = jnp.asarray(x), jnp.asarray(y)

    def report(x_adv):
        logits = jax.jit(f)(x_adv)
        loss = float(jnp.mean(cross_entropy(logits, y)))
        broken = float(jnp.mean(jnp.argmax(logits, -1) != y))
        return loss, broken

    clean_loss, clean_err = report(x)
    print(
        f"strength: {args.model} (FC logits, eval mode), first {args.points} Fashion-MNIST "
        f"test points, Linf eps {EPS}, CE; seeds {args.seeds}"
    )
    print(f"  clean: CE {clean_loss:.4f}, misclassified {clean_err:.3f}")
    print("  attack                         grads   mean CE (per seed)       broken (per seed)")
    for grads in args.strength_grads:
        for method in ("pgd", "apgd"):
            if method == "pgd":
                attack = jax.jit(functools.partial(
                    pgd.perturb, f, eps=EPS, step_size=STEP_SIZE, num_steps=grads,
                    random_start="uniform"))  # fmt: skip
                name = f"PGD-{grads} (step {STEP_SIZE}, uniform start)"
            else:
                attack = jax.jit(functools.partial(
                    apgd_attack.perturb, f, eps=EPS, loss="ce", n_iter=grads - 1))  # fmt: skip
                name = f"APGD n_iter={grads - 1} (1 run)"
            results = [report(attack(x, y, key=jax.random.key(s))) for s in range(args.seeds)]
            losses = " ".join(f"{r[0]:.4f}" for r in results)
            broken = " ".join(f"{r[1]:.3f}" for r in results)
            print(f"  {name:<30} {grads:5d}   {losses:<24} {broken}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grads", default="3", help="k values for the step time, comma list")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps_per_round", type=int, default=5)
    parser.add_argument("--model", default="", help="an AT model directory for the strength")
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--strength_grads", default="3,10")
    parser.add_argument("--seeds", type=int, default=3, help="attack seeds (random starts)")
    args = parser.parse_args()
    args.strength_grads = [int(k) for k in args.strength_grads.split(",") if k]

    print(f"hardware: {hardware_summary()}")
    print(f"{jax.device_count()} x {jax.devices()[0].platform} device(s); jax {jax.__version__}")
    grads = [int(k) for k in args.grads.split(",") if k]
    if grads and args.rounds > 0:
        mesh = make_mesh()
        x, y = _test_points(args.batch)  # a real batch (the attack's work does not depend on it)
        batch = jax.device_put({"image": x, "label": y}, data_sharding(mesh))
        key = jax.device_put(jax.random.key(0), replicated(mesh))
        print(
            f"step time: small_cnn {MODEL_KWARGS} (FC), PGD-AT batch {args.batch}, Linf eps {EPS}"
        )
        for k in grads:
            time_steps(k, args, mesh, batch, key)
    if args.model:
        strength(args)


if __name__ == "__main__":
    main()
