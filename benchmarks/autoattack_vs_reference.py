"""hpm-jax's AutoAttack against the reference (pyautoattack) on one model, data and CPU.

    python benchmarks/autoattack_vs_reference.py --model small_cnn --n 500 --norm Linf
    python benchmarks/autoattack_vs_reference.py --model small_cnn --n 500 --norm L2
    python benchmarks/autoattack_vs_reference.py --model resnet18 --n 16 --norm Linf
    python benchmarks/autoattack_vs_reference.py --model small_cnn --plain_conv   # autodiff convs

Both implementations run the full `standard` version (APGD-CE, APGD-T with 9 targets, FAB-T
with 9 targets, Square with 5000 queries; override with --n_targets / --square_queries) with
seed 0 on the same model weights and images, one after the other in this process, and the
script prints, side by side, the robust accuracy after each attack, the seconds each attack
took, their ratio, the totals, and the per-point agreement of the final robust flags.

Models:
  small_cnn  the parity tests' CNN (tests/parity_models.py), trained here for a few seconds
             with fast FGSM training on offline Fashion-MNIST; data: the first --n test images.
  resnet18   AutoAttack's own pretrained CIFAR-10 ResNet-18 (shipped in the pyautoattack
             wheel), converted with hpm_jax.interop.convert. There is no CIFAR-10 on this machine
            and
             no network: the images are 32x32 crops of matplotlib's sample photograph
             (tests/real_images.py), labelled with the torch model's own predictions, so clean
             accuracy is 100% by construction and robust accuracy is "keeps its prediction".

Settings (reported in the output): XLA sees --devices host devices (default: the number of
cores; set through XLA_FLAGS before jax is imported) and the chain shards its buckets over
them; torch uses --threads intra-op threads (default: the number of cores). Our times
include compilation unless --warmup runs the whole chain once first (then "ours (warm)").
"""

from __future__ import annotations

import argparse
import os
import sys


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=("small_cnn", "resnet18"), default="small_cnn")
    p.add_argument("--norm", choices=("Linf", "L2"), default="Linf")
    p.add_argument("--eps", type=float, default=None, help="default: 0.1 / 1.5 (small_cnn), "
                   "0.3/255 / 0.02 (resnet18)")  # fmt: skip
    p.add_argument("--n", type=int, default=500, help="number of images")
    p.add_argument("--batch_size", type=int, default=None, help="default: n (one batch)")
    p.add_argument("--n_targets", type=int, default=9, help="APGD-T and FAB-T targets")
    p.add_argument("--square_queries", type=int, default=5000)
    p.add_argument("--devices", type=int, default=os.cpu_count(), help="XLA host devices")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    p.add_argument(
        "--plain_conv",
        action="store_true",
        help="small_cnn: autodiff's conv gradients (slow inside lax loops on CPU)",
    )
    p.add_argument("--warmup", action="store_true", help="run our chain once before timing")
    p.add_argument("--skip_reference", action="store_true")
    return p.parse_args()


if __name__ == "__main__":
    ARGS = _parse()
    # XLA reads its flags once, when jax initialises: before any import of jax.
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={ARGS.devices}"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import hardware_summary  # noqa: E402

from hpm_jax.attacks.autoattack import AutoAttack  # noqa: E402

ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
# resnet18: off-distribution photo crops sit close to its boundaries; at 0.3/255 (Linf) about
# half keep their prediction under APGD-CE, so every attack of the chain has work left.
DEFAULT_EPS = {"small_cnn": {"Linf": 0.1, "L2": 1.5}, "resnet18": {"Linf": 0.3 / 255, "L2": 0.02}}


def small_cnn(n: int, plain_conv: bool):
    import parity_models as pm

    net = pm.train_torch_net()
    x, y = pm.fashion_mnist_arrays(f"test[:{n}]")
    if plain_conv:
        params = pm.jax_params(net)

        def logits_fn(v):
            return pm.plain_forward(params, v)
    else:
        logits_fn = pm.jax_logits_fn(net)
    return net, logits_fn, x, y, f"Fashion-MNIST test[:{n}] (true labels)"


def resnet18(n: int):
    from real_images import photo_crops
    from torch_reference import pyautoattack_example, pyautoattack_example_path

    from hpm_jax.interop.convert import load_state_dict, torch_to_flax
    from hpm_jax.models import get_model, logits_fn

    path = pyautoattack_example_path("model_test.pt")
    net = pyautoattack_example("resnet").ResNet18()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net.eval()
    model = get_model("resnet18", num_classes=10)
    variables = torch_to_flax("resnet18", load_state_dict(path))
    x = photo_crops(n, size=32, seed=0)
    with torch.no_grad():
        y = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).argmax(1).numpy()
    # The weights are arguments of the compiled programs (not constants), as in
    # hpm_jax.evaluation.evaluate.
    return (net, logits_fn(model, variables), x, y,
            f"{n} 32x32 crops of a real photo (labels: torch predictions)")  # fmt: skip


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _timed(times: dict[str, float], name: str, perturb):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return perturb(*args, **kwargs)
        finally:
            times[name] = times.get(name, 0.0) + time.perf_counter() - start

    return wrapper


def run_reference(net, x, y, *, norm, eps, n_targets, square_queries, batch_size, device="cpu",
                  n_iter=100):  # fmt: skip
    """pyautoattack's standard chain on `device` (where `net` is): robust flags, accuracy after
    each attack (from its log lines), seconds in each attack's `perturb` (timed around it),
    total seconds."""
    import pyautoattack

    aa = pyautoattack.AutoAttack(net, norm=norm, eps=eps, seed=0, version="standard",
                                 device=device)  # fmt: skip
    aa.apgd_targeted.n_target_classes = n_targets
    aa.fab.n_target_classes = n_targets
    aa.square.n_queries = square_queries
    aa.apgd.n_iter = aa.apgd_targeted.n_iter = aa.fab.n_iter = n_iter
    times: dict[str, float] = {}
    # In the standard version each attack object runs exactly one attack of the chain.
    for name, attack in [("apgd-ce", aa.apgd), ("apgd-t", aa.apgd_targeted), ("fab-t", aa.fab),
                         ("square", aa.square)]:  # fmt: skip
        attack.perturb = _timed(times, name, attack.perturb)
    logger, records = logging.getLogger("auto-attack"), _Records()
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # keep its DEBUG lines off the console
    start = time.perf_counter()
    _, y_adv = aa.run_standard_evaluation(
        torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y), batch_size=batch_size
    )
    total = time.perf_counter() - start
    logger.removeHandler(records)
    after = {}
    for message in records.messages:
        m = re.match(r"robust accuracy after ([A-Z-]+): ([\d.]+)%", message)
        if m:
            after[m.group(1).lower()] = float(m.group(2)) / 100
    for name in ATTACKS:  # attacks skipped once nothing robust is left: no time, accuracy 0
        times.setdefault(name, 0.0)
        after.setdefault(name, 0.0)
    return y_adv.cpu().numpy() == y, after, times, total


def run_ours(logits_fn, x, y, *, norm, eps, n_targets, square_queries, batch_size, n_iter=100):
    options = {
        "apgd-ce": {"n_iter": n_iter},
        "apgd-t": {"n_target_classes": n_targets, "n_iter": n_iter},
        "fab-t": {"n_target_classes": n_targets, "n_iter": n_iter},
        "square": {"n_queries": square_queries},
    }
    aa = AutoAttack(logits_fn, norm=norm, eps=eps, seed=0, attack_options=options, log=None)
    start = time.perf_counter()
    report = aa.run(x, y.astype(np.int32), batch_size=batch_size)
    return report, time.perf_counter() - start


def main() -> None:
    args = ARGS
    torch.set_num_threads(args.threads)
    eps = args.eps if args.eps is not None else DEFAULT_EPS[args.model][args.norm]
    if args.model == "small_cnn":
        net, logits_fn, x, y, data = small_cnn(args.n, args.plain_conv)
    else:
        net, logits_fn, x, y, data = resnet18(args.n)
    batch_size = args.batch_size or len(x)
    kw = dict(norm=args.norm, eps=eps, n_targets=args.n_targets,
              square_queries=args.square_queries, batch_size=batch_size)  # fmt: skip

    print(hardware_summary())
    print(f"jax devices: {jax.device_count()} x {jax.devices()[0].platform}; "
          f"torch threads: {torch.get_num_threads()}")  # fmt: skip
    print(f"model {args.model}{' (plain autodiff convs)' if args.plain_conv else ''}; data: "
          f"{data}; {args.norm} eps={eps:.5g}; batch {batch_size}; standard version with "
          f"{args.n_targets} targets, {args.square_queries} Square queries\n")  # fmt: skip

    cold = None
    if args.warmup:  # the first run compiles; time the second
        cold, cold_total = run_ours(logits_fn, x, y, **kw)
    report, ours_total = run_ours(logits_fn, x, y, **kw)
    if args.skip_reference:
        theirs = None
        ref_after = {a: float("nan") for a in ATTACKS}
        ref_times = dict(ref_after)
        ref_total = float("nan")
    else:
        theirs, ref_after, ref_times, ref_total = run_reference(net, x, y, **kw)

    clean_ref = np.mean(_torch_predict(net, x) == y)
    ours_label = "ours warm s" if cold else "ours s (incl. compile)"
    print(
        "| attack | robust acc ours | robust acc reference | "
        + ("ours cold s | " if cold else "")
        + f"{ours_label} | reference s | "
        + ("ours / reference cold | ours / reference warm |" if cold else "ours / reference |")
    )
    print("|---|---|---|---|---|---|" + ("---|---|" if cold else ""))
    blank = " | |" if cold else ""
    print(f"| clean | {report.clean_accuracy:.2%} | {clean_ref:.2%} | | |{blank}")
    for name in (*ATTACKS, "total"):
        if name == "total":
            acc_o, acc_r, t_o, t_r = (
                report.robust_accuracy,
                ref_after["square"],
                ours_total,
                ref_total,
            )
            t_c = cold_total if cold else None
            name = "total (run, incl. clean pass and checks)"
        else:
            acc_o, acc_r = report.robust_accuracy_after[name], ref_after[name]
            t_o, t_r = report.times[name], ref_times[name]
            t_c = cold.times[name] if cold else None
        cold_cell = f" {t_c:.1f} |" if cold else ""
        cold_ratio = f" {t_c / t_r if t_r else float('nan'):.2f} |" if cold else ""
        print(
            f"| {name} | {acc_o:.2%} | {acc_r:.2%} |{cold_cell} {t_o:.1f} | {t_r:.1f} "
            f"|{cold_ratio} {t_o / t_r if t_r else float('nan'):.2f} |"
        )
    if theirs is not None:
        only_ours = int(np.sum(report.robust & ~theirs))
        only_theirs = int(np.sum(~report.robust & theirs))
        print(f"\nper point ({len(x)}): robust only for us {only_ours}, only for the reference "
              f"{only_theirs}; paired bound (3 sqrt(m) + 2) = "
              f"{3 * np.sqrt(only_ours + only_theirs) + 2:.1f}")  # fmt: skip
    print("json:", json.dumps({
        "model": args.model, "plain_conv": args.plain_conv, "norm": args.norm, "eps": eps,
        "n": len(x), "devices": jax.device_count(), "threads": torch.get_num_threads(),
        "ours_after": report.robust_accuracy_after, "ours_times": report.times,
        "ours_total": ours_total, "ref_after": ref_after, "ref_times": ref_times,
        "ref_total": ref_total, "warm": args.warmup,
        "ours_cold_times": cold.times if cold else None,
    }))  # fmt: skip


def _torch_predict(net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).argmax(1).numpy()


if __name__ == "__main__":
    main()
