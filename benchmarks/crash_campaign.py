"""Crash campaign: SIGKILL the programs at random moments, tear every resumable file.

    python benchmarks/crash_campaign.py --workdir=/tmp/crash          # ~10 min on 2 CPU cores
    python benchmarks/crash_campaign.py --workdir=/tmp/crash --eval_kills=1 --train_kills=1 \
        --study_kills=1 --torn_per_kind=1                              # ~6 min

On Fashion-MNIST (offline files) with tiny models and budgets:

1. references, each run through once as a subprocess: `hpm-train` of an FC model,
   `hpm-study` fine-tuning HPM from it (one point, one seed: training + MSA evaluation),
   `hpm-evaluate` of the study's HPM model (AutoAttack on FC and l2-EMA, MSA on HPM);
2. kills: each program started afresh in a new workdir, SIGKILLed after a random time
   (uniform over 10-95% of its reference wall time), then run again to completion; the
   result must be identical (the final model's arrays bit for bit and the training's
   evaluation figures; the study's table; the evaluation's report without times and paths);
3. torn files: every resumable file of the finished workdirs (the evaluation's identity,
   attack state and its previous copy, per-batch images, adversarial/*.npz, report.json; the
   training's newest checkpoint's files and metrics.jsonl; the study's point.json and stage
   markers), one at a time, truncated, zeroed or garbled, then the run resumed in-process.
   Handled: the same result as the reference, or (a damaged identity record: the only file
   that cannot be rebuilt) a DamagedFileError whose one line says "is damaged".

Prints "N kills, N identical; M torn files, M handled" and the hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import hardware_summary

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "fashion_mnist.py")
MODES = ("truncated", "zeroed", "garbage")
TRAIN = [
    "train.num_steps=24", "train.batch_size=32", "train.warmup_steps=0",
    "train.log_every_steps=4", "eval.num_examples=32", "eval.batch_size=32",
    "eval.attack.num_steps=2", "attack.num_steps=2", "checkpoint.every_steps=4",
    "model.kwargs.channels=(4, 8, 8)", "model.kwargs.num_features=16",
]  # fmt: skip
EVAL = [
    "evaluation.num_examples=32", "evaluation.batch_size=8", "evaluation.eps=0.1",
    "evaluation.version='apgd-ce,square'", "evaluation.naive_autoattack=False",
    "evaluation.attack_options={'apgd-ce': {'n_iter': 5, 'n_restarts': 1}, "
    "'square': {'n_queries': 10}}",
    "evaluation.surrogates=('fc', 'ste')", "evaluation.run_checks=False",
]  # fmt: skip
STUDY = [
    "train.num_steps=8", *TRAIN[1:], *EVAL,
    "study.points={'default': ()}", "study.seeds=(0,)", "study.baseline=False",
    "init.prototype_examples=64",
]  # fmt: skip
DROP = {"times", "seconds", "total_seconds", "resumed", "files", "date", "checksum"}


def comparable(tree):
    if isinstance(tree, dict):
        return {k: comparable(v) for k, v in tree.items() if k not in DROP}
    if isinstance(tree, list):
        return [comparable(v) for v in tree]
    return tree


def damage(path: Path, mode: str, rng: np.random.Generator) -> None:
    data = path.read_bytes()
    new = {"truncated": data[: len(data) // 2], "zeroed": bytes(len(data)),
           "garbage": rng.bytes(len(data))}[mode]  # fmt: skip
    path.write_bytes(new)


# ---- the programs, as subprocesses -------------------------------------------------------


def command(program: str, workdir: Path, ctx: dict) -> list[str]:
    flags = {
        "train": [f"--config={CONFIG}", *(f"--config.{o}" for o in TRAIN)],
        "study": [
            f"--config={CONFIG}",
            f"--config.init.checkpoint={ctx.get('fc_model')}",
            *(f"--config.{o}" for o in STUDY),
        ],
        "evaluate": [
            f"--config={CONFIG}",
            f"--checkpoint={ctx.get('hpm_model')}",
            *(f"--config.{o}" for o in EVAL),
        ],
    }[program]
    return [sys.executable, "-m", f"hpm_jax.{program}", f"--workdir={workdir}", *flags]


def run(program: str, workdir: Path, ctx: dict, kill_after: float | None = None) -> str:
    """'done', 'killed' or 'failed' (then the tail of its output is printed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    log = open(workdir.parent / f"{workdir.name}.log", "ab")
    child = subprocess.Popen(command(program, workdir, ctx), stdout=log, stderr=log, env=env)
    try:
        code = child.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.kill(child.pid, signal.SIGKILL)  # only the child this function started
        child.wait()
        return "killed"
    finally:
        log.close()
    if code:
        tail = (workdir.parent / f"{workdir.name}.log").read_text()[-2000:]
        print(f"{program} in {workdir} exited {code}:\n{tail}", flush=True)
        return "failed"
    return "done"


def result(program: str, workdir: Path):
    """What must be identical after a kill and a resume."""
    if program == "train":
        import jax

        from hpm_jax.models.export import load_model

        _, variables = load_model(str(workdir / "model"))
        summary = json.loads((workdir / "summary.json").read_text())
        arrays = [np.asarray(v).tobytes() for v in jax.tree.leaves(variables)]
        return arrays, {k: v for k, v in summary.items() if k.startswith("eval_")}
    if program == "study":
        table = json.loads((workdir / "study.json").read_text())
        return comparable({k: table[k] for k in ("rows", "baseline", "per_seed")})
    return comparable(json.loads((workdir / "report.json").read_text()))


def kills(program: str, n: int, root: Path, ctx: dict, rng: random.Random) -> tuple[int, int]:
    """(kills that landed, runs resumed to the reference result)."""
    landed = identical = 0
    for i in range(n):
        workdir = root / f"{program}_kill{i}"
        delay = rng.uniform(0.1, 0.95) * ctx[f"{program}_seconds"]
        outcome = run(program, workdir, ctx, kill_after=delay)
        if outcome != "killed":
            print(f"  {program} kill {i}: finished before {delay:.1f} s; not counted", flush=True)
            continue
        landed += 1
        same = run(program, workdir, ctx) == "done" and result(program, workdir) == ctx[program]
        identical += same
        print(f"  {program} kill {i} at {delay:.1f} s: {'identical' if same else 'DIFFERENT'}",
              flush=True)  # fmt: skip
    return landed, identical


# ---- torn files, resumed in-process --------------------------------------------------------


def _sample(paths: list[Path], k: int) -> list[Path]:
    paths = sorted(paths)
    if k <= 0 or len(paths) <= k:
        return paths
    return [paths[round(i * (len(paths) - 1) / (k - 1))] for i in range(k)] if k > 1 else paths[:1]


def _tear(
    kinds: dict, reference: Path, workdir: Path, per_kind: int, rng, resume
) -> tuple[int, int]:
    """(files torn, handled): each sampled file of each kind torn in every mode, in a fresh
    copy of `reference` at `workdir`; `resume(workdir, kind)` says whether it was handled."""
    tried = handled = 0
    for kind, paths in kinds.items():
        for path in _sample(paths, per_kind):
            for mode in MODES:
                shutil.rmtree(workdir, ignore_errors=True)
                shutil.copytree(reference, workdir)
                damage(workdir / path.relative_to(reference), mode, rng)
                tried += 1
                ok = resume(workdir, kind)
                handled += ok
                if not ok:
                    print(f"  torn {kind} {path.name} ({mode}): NOT handled", flush=True)
    return tried, handled


def torn_evaluation(root: Path, ctx: dict, per_kind: int, rng) -> tuple[int, int]:
    from hpm_jax import cli
    from hpm_jax.evaluation import evaluate
    from hpm_jax.runtime import integrity

    config = evaluate.load_evaluation_config(CONFIG, EVAL)
    reference = root / "evaluate_ref"
    state = reference / "state"
    kinds = {
        "identity": [state / "evaluation.json"],
        "attack-state": [p for p in state.glob("*.json") if p.name != "evaluation.json"],
        "previous-copy": list(state.glob("*.json.prev")),
        "batch-images": list(state.glob("*.adv/*.npy")),
        "adversarial-npz": list((reference / "adversarial").glob("*.npz")),
        "report": [reference / "report.json"],
    }

    def resume(workdir: Path, kind: str) -> bool:
        try:
            report = evaluate.run(config, ctx["hpm_model"], str(workdir), log=None)
            return kind != "identity" and comparable(report) == ctx["evaluate"]
        except integrity.DamagedFileError as e:
            return kind == "identity" and "is damaged" in cli.one_line(e)

    return _tear(kinds, reference, root / "torn_eval", per_kind, rng, resume)


def torn_training(root: Path, ctx: dict, per_kind: int, rng) -> tuple[int, int]:
    from hpm_jax import config_lib
    from hpm_jax.training import train

    config = config_lib.load_config(CONFIG, TRAIN)
    reference = root / "train_ref"
    newest = max((reference / "checkpoints").iterdir(), key=lambda p: int(p.name))
    # The files Orbax reads back (its other files, e.g. _CHECKPOINT_METADATA and the
    # per-process OCDBT leftovers, are not read: tearing them changes nothing).
    read = ["state/_METADATA", "state/_sharding", "state/manifest.ocdbt", "run/metadata",
            "state/array_metadatas/process_0"]  # fmt: skip
    kinds = {
        "checkpoint-file": [newest / r for r in read] + list((newest / "state" / "d").iterdir()),
        "metrics": [reference / "metrics.jsonl"],
    }

    def resume(workdir: Path, kind: str) -> bool:
        (workdir / "summary.json").unlink()  # a run that had not finished
        shutil.rmtree(workdir / "model")
        train.run(config, str(workdir))
        return result("train", workdir) == ctx["train"]

    return _tear(kinds, reference, root / "torn_train", per_kind, rng, resume)


def torn_study(root: Path, ctx: dict, rng) -> tuple[int, int]:
    from hpm_jax import cli
    from hpm_jax.experiments import study
    from hpm_jax.runtime import integrity

    config = study.load_study_config(CONFIG, [f"init.checkpoint={ctx['fc_model']}", *STUDY])
    workdir = root / "study_ref"  # in place: the evaluation's identity names its checkpoint path
    point = workdir / "points" / "default" / "seed_0"
    tried = handled = 0
    for name in ("point.json", "eval/report.json", "train/summary.json", "train/model/model.json"):
        for mode in MODES:
            saved = (point / name).read_bytes()
            damage(point / name, mode, rng)
            tried += 1
            try:
                study.run(config, str(workdir), log=None)
                ok = name != "point.json" and result("study", workdir) == ctx["study"]
            except integrity.DamagedFileError as e:
                ok = name == "point.json" and "is damaged" in cli.one_line(e)
                (point / name).write_bytes(saved)  # as the message says to do, in effect
            handled += ok
            if not ok:
                print(f"  torn study {name} ({mode}): NOT handled", flush=True)
    return tried, handled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/crash_campaign")
    parser.add_argument("--eval_kills", type=int, default=3)
    parser.add_argument("--train_kills", type=int, default=3)
    parser.add_argument("--study_kills", type=int, default=1)
    parser.add_argument("--torn_per_kind", type=int, default=2, help="files per kind (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = Path(args.workdir).resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng, np_rng = random.Random(args.seed), np.random.default_rng(args.seed)
    start = time.perf_counter()

    ctx: dict = {}
    for program in ("train", "study", "evaluate"):  # each reference feeds the next
        t0 = time.perf_counter()
        assert run(program, root / f"{program}_ref", ctx) == "done", program
        ctx[f"{program}_seconds"] = time.perf_counter() - t0
        ctx[program] = result(program, root / f"{program}_ref")
        if program == "train":
            ctx["fc_model"] = str(root / "train_ref" / "model")
        if program == "study":
            ctx["hpm_model"] = str(root / "study_ref" / "points" / "default" / "seed_0" / "train"
                                   / "model")  # fmt: skip
        print(f"reference {program}: {ctx[f'{program}_seconds']:.1f} s", flush=True)

    landed = identical = 0
    for program, n in (("evaluate", args.eval_kills), ("train", args.train_kills),
                       ("study", args.study_kills)):  # fmt: skip
        a, b = kills(program, n, root, ctx, rng)
        landed, identical = landed + a, identical + b
    torn = handled = 0
    for a, b in (torn_evaluation(root, ctx, args.torn_per_kind, np_rng),
                 torn_training(root, ctx, args.torn_per_kind, np_rng),
                 torn_study(root, ctx, np_rng)):  # fmt: skip
        torn, handled = torn + a, handled + b
    print(f"{landed} kills, {identical} identical; {torn} torn files, {handled} handled")
    print(f"({time.perf_counter() - start:.0f} s)")
    print(hardware_summary())


if __name__ == "__main__":
    main()
