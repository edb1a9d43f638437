"""The GPU check: hpm-jax's accelerator path against its CPU twin and against the reference.

    launch/gpu_check.sh                          # one H100: about 8 minutes, OUT/results.json
    python benchmarks/gpu_check.py --smoke       # the CPU, tiny sizes (tests/test_gpu_check.py)

--smoke runs every part at toy sizes: (A) and (B) on the parity suite's small CNN with random
weights on random images, (C) on WRN-10-1 at batch 8.

(A) lax vs host. APGD-CE, APGD-T and FAB-T on AutoAttack's own CIFAR-10 ResNet-18 (shipped
    in the pyautoattack wheel, converted with `torch_to_flax`) on real photo crops, once with
    the per-iteration host loop and once with the one-program `lax` loop that `loop="auto"`
    picks on an accelerator: per-point flags that differ and the largest |x_adv difference|.
    Run at matmul precision "highest", so the two loops differ only by fusion and ordering.
(B) Parity. The standard chain, ours and pyautoattack's on the same device (torch on `cuda`
    where there is one), on --n points: robust accuracy after each attack, the per-point flags
    where the two disagree and the parity suite's paired (McNemar) bound
    |ours - reference| <= 3 sqrt(m) + 2 points (tests/test_autoattack_parity.py).
(C) Speed against pyautoattack on the same GPU. WRN-28-10 (RobustBench's architecture file
    and the same random weights on both sides) at batch 500, float32 and bfloat16 (ours: the
    model's dtype; torch: autocast): one forward+gradient, APGD-CE with 100 iterations and
    Square with 500 queries; ours warm and each program's compile time (cold minus warm).
    The full CIFAR-10 standard chain (10,000 points) is extrapolated from pass counts:
    APGD-CE 100 passes on every point, APGD-T and FAB-T 9 x 100 on the points still robust
    (FAB-T counted as 2 passes per iteration), Square 5000 forward queries on those left;
    `--robust` sets the fractions (default: 0.6 left after APGD-CE, as for RobustBench's Linf
    WRN-28-10 entries).

Every figure goes to OUT/results.json with the machine; the printed table repeats them.
Nothing here asserts: it measures. The performance goals (ours <= 0.5x the reference on one
GPU; the full standard chain on WRN-28-10 in <= 30 minutes on one H100) are read off (C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from autoattack_vs_reference import run_ours, run_reference  # noqa: E402
from common import hardware_summary  # noqa: E402
from torch_reference import robustbench_architecture  # noqa: E402

from hpm_jax.attacks.apgd_attack import apgd, apgd_targeted  # noqa: E402
from hpm_jax.attacks.fab_attack import fab_targeted  # noqa: E402
from hpm_jax.attacks.square_attack import square  # noqa: E402
from hpm_jax.interop.convert import torch_to_flax  # noqa: E402
from hpm_jax.models import get_model, logits_fn  # noqa: E402

FULL = dict(model="resnet18", n_lax=64, iters=100, n_parity=256, n_targets=9, queries=5000,
            batch=500, speed_iters=100, speed_queries=500, depth=28, width=10,
            repeats=5)  # fmt: skip
# --smoke: the parity suite's small CNN with random weights on random images for (A) and (B).
SMOKE = dict(model="small_cnn", n_lax=4, iters=3, n_parity=8, n_targets=2, queries=10,
             batch=8, speed_iters=2, speed_queries=4, depth=10, width=1, repeats=1)  # fmt: skip
# ResNet-18 on photo crops: about half keep their prediction at 0.3/255 (Linf).
EPS = {"resnet18": 0.3 / 255, "small_cnn": 0.01}


def _model(size: dict, n: int):
    """(torch net, our logits_fn with the same weights, x, y, what the data is)."""
    if size["model"] == "resnet18":
        from autoattack_vs_reference import resnet18

        return resnet18(n)
    import parity_models

    torch.manual_seed(0)
    net = parity_models.TorchNet().eval()
    x = np.random.default_rng(0).random((n, 28, 28, 1), dtype=np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).argmax(1).numpy()
    return net, parity_models.jax_logits_fn(net), x, y, f"{n} random images (labels: torch's)"


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for the CPU")
    p.add_argument("--out", default="gpu_check", help="folder for results.json")
    p.add_argument("--parts", default="ABC", help="which of A, B, C to run")
    p.add_argument("--robust", type=float, default=0.6, help="(C): fraction left after APGD-CE")
    return p.parse_args()


def _timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


# ------------------------------------------------------------------------ (A) lax vs host


def lax_vs_host(size: dict) -> dict:
    _, fn, x, y, data = _model(size, size["n_lax"])
    x, y, eps = jnp.asarray(x), jnp.asarray(y.astype(np.int32)), EPS[size["model"]]
    kw = dict(key=jax.random.key(0), norm="Linf", eps=eps, n_iter=size["iters"])
    targeted = dict(kw, n_target_classes=size["n_targets"])
    attacks = {
        "apgd-ce": lambda loop: apgd(fn, x, y, loop=loop, **kw),
        "apgd-t": lambda loop: apgd_targeted(fn, x, y, loop=loop, **targeted),
        "fab-t": lambda loop: fab_targeted(fn, x, y, loop=loop, **targeted),
    }
    rows = {}
    with jax.default_matmul_precision("highest"):
        for name, attack in attacks.items():
            (host, t_host), (lax, t_lax) = _timed(attack, "host"), _timed(attack, "lax")
            rows[name] = {
                "flags_differ": int(np.sum(np.asarray(host.robust) != np.asarray(lax.robust))),
                "max_abs_x_adv_diff": float(jnp.max(jnp.abs(host.x_adv - lax.x_adv))),
                "robust_host": float(np.mean(host.robust)),
                "robust_lax": float(np.mean(lax.robust)),
                "seconds_host": t_host,
                "seconds_lax": t_lax,
            }
    return {"data": data, "eps": eps, "n_iter": size["iters"], "attacks": rows}


# ---------------------------------------------------------------------------- (B) parity


def parity(size: dict, torch_device: str) -> dict:
    net, fn, x, y, data = _model(size, size["n_parity"])
    eps = EPS[size["model"]]
    kw = dict(norm="Linf", eps=eps, n_targets=size["n_targets"], square_queries=size["queries"],
              batch_size=len(x), n_iter=size["iters"])  # fmt: skip
    report, ours_total = run_ours(fn, x, y, **kw)
    theirs, after, times, total = run_reference(net.to(torch_device), x, y, device=torch_device,
                                                **kw)  # fmt: skip
    ours = np.asarray(report.robust)
    only_ours, only_theirs = int(np.sum(ours & ~theirs)), int(np.sum(~ours & theirs))
    bound = 3 * np.sqrt(only_ours + only_theirs) + 2
    return {
        "data": data, "eps": eps, "n": len(x), "n_iter": size["iters"],
        "ours_after": report.robust_accuracy_after, "reference_after": after,
        "ours_seconds": ours_total, "reference_seconds": total, "reference_times": times,
        "robust_only_ours": only_ours, "robust_only_reference": only_theirs,
        "paired_bound_points": float(bound),
        "within_bound": bool(abs(only_ours - only_theirs) <= bound),
        "disagreeing_points": np.flatnonzero(ours != theirs).tolist(),
    }  # fmt: skip


# ----------------------------------------------------------------------------- (C) speed


def _torch_wrn(size: dict, device: str):
    torch.manual_seed(0)
    net = robustbench_architecture("wide_resnet").WideResNet(
        depth=size["depth"], widen_factor=size["width"], num_classes=10
    )
    return net.eval().to(device)


def _ours_speed(net, x, y, size: dict, dtype) -> dict:
    state = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
    variables = torch_to_flax("wide_resnet", state, depth=size["depth"], width=size["width"])
    model = get_model("wide_resnet", num_classes=10, depth=size["depth"], width=size["width"],
                      dtype=dtype)  # fmt: skip
    fn = logits_fn(model, variables)

    def loss(v):
        return -jnp.sum(jax.nn.log_softmax(fn(v).astype(jnp.float32))[jnp.arange(len(y)), y])

    grad = jax.jit(jax.grad(loss))
    key = jax.random.key(0)
    programs = {
        "forward+gradient": lambda: grad(x),
        "apgd-ce": lambda: apgd(fn, x, y, key=key, eps=8 / 255, n_iter=size["speed_iters"]),
        "square": lambda: square(fn, x, y, key=key, eps=8 / 255, n_queries=size["speed_queries"]),
    }
    out = {}
    for name, program in programs.items():
        _, cold = _timed(program)
        warm = min(_timed(program)[1] for _ in range(size["repeats"] if name[0] == "f" else 1))
        out[name] = {"warm_s": warm, "compile_s": max(cold - warm, 0.0)}
    return out


def _torch_speed(net, x, y, size: dict, device: str, dtype) -> dict:
    from pyautoattack.autopgd_base import APGDAttack
    from pyautoattack.square import SquareAttack

    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).to(device)
    yt = torch.from_numpy(np.asarray(y).astype(np.int64)).to(device)
    autocast = (torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
                if dtype == "bfloat16" else contextlib.nullcontext())  # fmt: skip

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def forward_gradient():
        v = xt.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(net(v).float(), yt, reduction="sum").backward()
        return v.grad

    common = dict(norm="Linf", eps=8 / 255, seed=0, device=device)
    apgd_ref = APGDAttack(net, n_iter=size["speed_iters"], n_restarts=1, loss="ce", **common)
    square_ref = SquareAttack(net, n_queries=size["speed_queries"], p_init=0.8,
                              resc_schedule=False, **common)  # fmt: skip
    programs = {
        "forward+gradient": forward_gradient,
        "apgd-ce": lambda: apgd_ref.perturb(xt, yt),
        "square": lambda: square_ref.perturb(xt, yt),
    }
    out = {}
    with autocast:
        for name, program in programs.items():
            program(), sync()  # cuDNN autotuning and allocator warm-up, as our compile
            start = time.perf_counter()
            for _ in range(size["repeats"] if name[0] == "f" else 1):
                program()
            sync()
            out[name] = {"warm_s": (time.perf_counter() - start) /
                         (size["repeats"] if name[0] == "f" else 1)}  # fmt: skip
    return out


def _chain_minutes(times: dict, size: dict, robust: float) -> float:
    """The standard chain on 10,000 points from one batch's measured pass times."""
    batches = 10_000 / size["batch"]
    pass_s = times["apgd-ce"]["warm_s"] / size["speed_iters"]  # one forward+gradient in APGD
    query_s = times["square"]["warm_s"] / size["speed_queries"]  # one forward in Square
    passes = 100 + robust * 9 * 100 + robust * 9 * 100 * 2  # APGD-CE, APGD-T, FAB-T
    return batches * (passes * pass_s + robust * 5000 * query_s) / 60


def speed(size: dict, torch_device: str, robust: float) -> dict:
    net = _torch_wrn(size, torch_device)
    rng = np.random.default_rng(0)
    x = rng.random((size["batch"], 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, size["batch"]).astype(np.int32)
    result = {"model": f"WRN-{size['depth']}-{size['width']}", "batch": size["batch"]}
    for dtype in ("float32", "bfloat16"):
        ours = _ours_speed(net.float(), jnp.asarray(x), jnp.asarray(y), size, jnp.dtype(dtype))
        ref = _torch_speed(net, x, y, size, torch_device, dtype)
        result[dtype] = {
            "ours": ours, "reference": ref,
            "ratio": {k: ours[k]["warm_s"] / ref[k]["warm_s"] for k in ours},
            "chain_minutes_ours": _chain_minutes(ours, size, robust),
            "chain_minutes_reference": _chain_minutes(ref, size, robust),
        }  # fmt: skip
    return result


# ------------------------------------------------------------------------------- report


def _print(results: dict) -> None:
    print(results["machine"])
    print(f"jax: {results['jax_devices']}; torch device: {results['torch_device']}")
    if "A" in results:
        print("\n(A) lax vs host |flags differ| max |x_adv diff| | host s | lax s |")
        for name, r in results["A"]["attacks"].items():
            print(f"  {name:8s} | {r['flags_differ']} | {r['max_abs_x_adv_diff']:.2e} | "
                  f"{r['seconds_host']:.1f} | {r['seconds_lax']:.1f} |")  # fmt: skip
    if "B" in results:
        b = results["B"]
        print(f"\n(B) standard chain, {b['n']} points: robust only ours {b['robust_only_ours']}, "
              f"only reference {b['robust_only_reference']}, bound {b['paired_bound_points']:.1f}"
              f" -> {'within' if b['within_bound'] else 'OUTSIDE'}; seconds ours "
              f"{b['ours_seconds']:.1f}, reference {b['reference_seconds']:.1f}")  # fmt: skip
        for name, acc in b["ours_after"].items():
            print(f"  after {name:7s} ours {acc:.2%}  reference {b['reference_after'][name]:.2%}")
    if "C" in results:
        c = results["C"]
        print(f"\n(C) {c['model']}, batch {c['batch']} | ours warm s | compile s | reference s | "
              "ours / reference |")  # fmt: skip
        for dtype in ("float32", "bfloat16"):
            d = c[dtype]
            for name, r in d["ours"].items():
                ref, ratio = d["reference"][name]["warm_s"], d["ratio"][name]
                print(f"  {dtype} {name:16s} | {r['warm_s']:.3f} | {r['compile_s']:.1f} | "
                      f"{ref:.3f} | {ratio:.2f} |")  # fmt: skip
            print(f"  {dtype} standard chain, 10,000 points (extrapolated): ours "
                  f"{d['chain_minutes_ours']:.1f} min, reference "
                  f"{d['chain_minutes_reference']:.1f} min")  # fmt: skip


def main() -> None:
    args = _args()
    size = SMOKE if args.smoke else FULL
    torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {"machine": hardware_summary(), "smoke": args.smoke, "torch_device": torch_device,
               "jax_devices": [str(d) for d in jax.devices()], "sizes": size}  # fmt: skip
    if "A" in args.parts:
        results["A"] = lax_vs_host(size)
    if "B" in args.parts:
        results["B"] = parity(size, torch_device)
    if "C" in args.parts:
        results["C"] = speed(size, torch_device, args.robust)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    _print(results)


if __name__ == "__main__":
    main()
