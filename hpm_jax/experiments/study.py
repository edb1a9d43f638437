"""Does HPM help, and where? A grid over the HPM head's knobs, each point fine-tuned from the
same adversarially trained FC model and judged by the Mixed Surrogate Attack.

    python -m hpm_jax.study --config=configs/fashion_mnist_study.py --workdir=/tmp/study \
        --config.init.checkpoint=/tmp/hpm_demo/at/model           # the demo's PGD-AT model
    python -m hpm_jax.study --config=configs/fashion_mnist.py --workdir=/tmp/study \
        --config.init.checkpoint=/tmp/hpm_demo/at/model --config.study.seeds="(0, 1, 2)" \
        --config.study.points="{'default': (), 'convex': ('model.head_kwargs.mixing=convex',)}"

    table = run(load_study_config("configs/fashion_mnist_study.py", overrides), "/tmp/study")

The command line (`hpm-study`, `python -m hpm_jax.study`) is `hpm_jax.cli.study`.

The config is the file's `hpm` variant (as the demo's fine-tuning stage) with a `study`
section (`default_study_config`): `points` maps a name to a tuple of overrides in the
`--config.KEY=VALUE` syntax without the prefix (e.g. "objective.fc_weight=0.0"; every field of
`HPMHead` is a key under `model.head_kwargs`), `run` orders the points (the table's rows;
() = all, sorted), `seeds` are the training seeds (`config.seed`: data order and PGD starts;
the evaluation's seed and batches stay fixed, so seeds measure the fine-tuning's spread).

For every point and seed, WORKDIR/points/NAME/seed_S/ holds `point.json` (its overrides and
resolved config), `train/` (`hpm_jax.training.train.run` from `init.checkpoint`) and `eval/`
(`hpm_jax.evaluation.evaluate.run`: AutoAttack on the fine-tuned model's FC and l2-EMA heads, MSA on
HPM). WORKDIR/baseline/ is AutoAttack on `init.checkpoint` itself, the FC baseline. A point
whose eval/report.json exists is skipped; a killed study started again continues where it
was (training and evaluation resume from their own state; a damaged point.json is named with
what to do, a damaged report.json or train/summary.json runs that stage again, resumed).
Changing a point's overrides under the same name is an error (rename the point or delete
its directory). The results:
WORKDIR/study.json, study.md (mean and a 95% Student-t interval over seeds of each figure,
and each point's difference to the `default` point paired by seed) and study.png (clean vs
MSA robust accuracy, FC baseline marked).

On several hosts (`hpm-study --multihost`, as hpm-train and hpm-evaluate; one workdir all
hosts see), every process runs every stage together: each point trains on all devices and
its evaluation shares out its batches. Process 0 writes point.json and the table, and its
look at a point's files decides for all whether a stage is done.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from hpm_jax import config_lib
from hpm_jax.evaluation import evaluate
from hpm_jax.evaluation.processes import Processes
from hpm_jax.experiments.study_report import (  # noqa: F401  (re-exported: study.interval etc.)
    REFERENCE,
    STUDY_JSON,
    STUDY_MD,
    STUDY_PNG,
    interval,
    markdown,
    t_quantile_975,
    write,
)
from hpm_jax.runtime import integrity
from hpm_jax.runtime.identity import check_identity

POINT_JSON = "point.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# The figures of one point and seed that get an interval: key -> title.
METRICS = {
    "clean": "HPM clean",
    "msa": "MSA on HPM",
    "fc_clean": "FC head clean",
    "fc_autoattack": "FC head AutoAttack",
    "ema_l2_autoattack": "l2-EMA AutoAttack",
}


class StudyError(ValueError):
    """The study section asks for something impossible; the message names the fix."""


def default_study_config() -> ml_collections.ConfigDict:
    """The `study` knobs: one point (the config as it is) and one seed."""
    c = ml_collections.ConfigDict()
    c.points = ml_collections.ConfigDict({REFERENCE: ()})  # name -> ("key=value", ...)
    c.run = ()  # names in table order; () = every point, sorted (the default point first)
    c.seeds = (0,)  # training seeds (config.seed)
    c.baseline = True  # AutoAttack on init.checkpoint (the FC model HPM starts from)
    return c


def load_study_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The `hpm` variant of the config file in `spec`, its evaluation and study sections
    completed with the defaults, then the demo's training overrides and `overrides` (as
    `hpm_jax.experiments.demo.stage_configs` builds the demo's fine-tuning config; it cannot be
    called here because a `study.*` override needs the study section before it is applied)."""
    from hpm_jax.experiments import demo

    path, _, variant = spec.partition(":")
    config = config_lib.load_config(f"{path}:{variant + ',' if variant else ''}hpm")
    with config.unlocked():
        config.evaluation = evaluate.completed_evaluation(config)
        given = config.get("study")
        study = default_study_config()
        if given is not None:
            study.update(given.to_dict())  # unknown keys are refused by study_config
            if "points" in given:
                study.points = ml_collections.ConfigDict(given.points.to_dict())
        config.study = study
    config_lib.apply_overrides(config, [*demo.DEMO_OVERRIDES, *overrides])
    return config


def study_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.study` checked: known keys, point names usable as directories, override
    tuples, seeds, and `run` naming existing points."""
    study = config.get("study")
    if study is None:
        raise StudyError(
            "the config has no study section; see hpm_jax.experiments.study.default_study_config."
        )
    unknown = sorted(set(study) - set(default_study_config()))
    if unknown:
        raise StudyError(
            f"config.study has unknown key(s) {unknown}; its keys are "
            f"{sorted(default_study_config())}."
        )
    points = study.points.to_dict() if study.get("points") is not None else {}
    if not points:
        raise StudyError("config.study.points is empty; e.g. {'default': ()}.")
    for name, overrides in points.items():
        if not _NAME.match(name):
            raise StudyError(f"study point name {name!r}: use letters, digits, '_', '-', '.'.")
        if isinstance(overrides, str) or not all(
            isinstance(o, str) and "=" in o for o in overrides
        ):
            raise StudyError(
                f"study.points.{name} must be a tuple of 'key=value' overrides, got {overrides!r}."
            )
    missing = [n for n in study.run if n not in points]
    if missing:
        raise StudyError(
            f"study.run names {missing}, which are not in study.points ({sorted(points)})."
        )
    seeds = tuple(study.seeds)
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
        raise StudyError(f"study.seeds must be distinct integers, got {study.seeds!r}.")
    return study


def point_names(study: ml_collections.ConfigDict) -> list[str]:
    """The points to run, in table order."""
    if study.run:
        return list(study.run)
    names = sorted(study.points)
    return sorted(names, key=lambda n: n != REFERENCE)  # stable: the reference first


def _head_knobs() -> dict[str, Any]:
    """HPMHead's fields and defaults (mixing, pseudo_count, lam, ste_temperature, ...)."""
    from hpm_jax.models import HPMHead

    skip = {"num_classes", "parent", "name"}
    return {
        f.name: f.default
        for f in dataclasses.fields(HPMHead)
        if f.name not in skip and f.default is not dataclasses.MISSING
    }


def point_config(
    config: ml_collections.ConfigDict, overrides: Sequence[str], seed: int
) -> ml_collections.ConfigDict:
    """The fine-tuning config of one point and seed: without the study section, every HPM
    head knob present in model.head_kwargs (so any can be overridden), then `overrides`."""
    c = copy.deepcopy(config)
    with c.unlocked():
        if "study" in c:
            del c["study"]
        c.evaluation = evaluate.completed_evaluation(c)
        knobs = {**_head_knobs(), **c.model.get("head_kwargs", ml_collections.ConfigDict())}
        c.model.head_kwargs = ml_collections.ConfigDict(knobs)
    config_lib.apply_overrides(c, [*overrides, f"seed={int(seed)}"])
    evaluate.evaluation_config(c)  # a bad evaluation setting fails before training
    return c


def point_configs(config: ml_collections.ConfigDict) -> dict[tuple[str, int], Any]:
    """{(point, seed): its fine-tuning config} for every point `study.run` names and every
    seed, each checked as a training config (`train.check_config`: reads no data or
    checkpoint, uses no device) and as an evaluation. `hpm-study --check_config` (and
    `launch/tpu.sh --program=study`, before it creates a TPU) stops here."""
    from hpm_jax.training import train

    study = study_config(config)
    configs = {}
    for name in point_names(study):
        for seed in (int(s) for s in study.seeds):
            configs[name, seed] = point_config(config, tuple(study.points[name]), seed)
            train.check_config(configs[name, seed])
    return configs


# ---- one point ----------------------------------------------------------------------------


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    heads = report["heads"]
    hpm, fc, l2 = heads["hpm"], heads.get("fc", {}), heads.get("ema_l2", {})
    msa = hpm["msa"]
    return {
        "clean": hpm["clean_accuracy"],
        "msa": msa["robust_accuracy"],
        "msa_per_surrogate": dict(msa["per_surrogate"]),
        "fc_clean": fc.get("clean_accuracy"),
        "fc_autoattack": (fc.get("autoattack") or {}).get("robust_accuracy"),
        "ema_l2_autoattack": (l2.get("autoattack") or {}).get("robust_accuracy"),
    }


def _check_point(directory: str, record: dict[str, Any], processes: Processes) -> None:
    """Write point.json (process 0), or refuse when the directory holds another point under
    this name: other overrides, seed, or a base config value changed since it ran."""
    path = os.path.join(directory, POINT_JSON)
    record = json.loads(json.dumps(record))
    if os.path.isfile(path):
        stored = integrity.read_json(
            path,
            fix="it records which point and seed the directory holds. If it is this one, "
            "delete the file and run again (training and evaluation resume, checking their own "
            "settings); else delete the directory",
        )
        # A key only one side has is a knob added (or dropped) by a newer hpm-jax, whose
        # default keeps the old behaviour: only the keys both records have are compared.
        check_identity(
            stored,
            record,
            what=f"{directory} holds a run with other settings",
            fix="give the point another name, or delete that directory.",
            shared_only=True,
            inline=3,
        )
        return
    if processes.writer:
        os.makedirs(directory, exist_ok=True)
        integrity.write_json(path, record)


def _result_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as point.json records it: without the evaluation's placement knobs
    (`evaluate.PLACEMENT`), which say who computes, not what, so a point resumes under
    another batch sharding as its evaluation does."""
    record = json.loads(config.to_json())
    record["evaluation"] = evaluate.result_settings(config.evaluation)
    return record


def run_point(
    config: ml_collections.ConfigDict, directory: str, log: Callable, processes: Processes
) -> dict:
    """Fine-tune and evaluate one point and seed in `directory` (skipped when done); with
    several processes, each stage is run or skipped by all together (`processes.read_done`)."""
    from hpm_jax.training import train

    report_path = os.path.join(directory, "eval", evaluate.REPORT)
    model_dir = os.path.join(directory, "train", train.MODEL_DIR)
    seconds = {}
    # The two markers of a finished point; a damaged one is named and its stage runs again,
    # resuming from its own state (the checkpoints, the attacks' state files).
    report = processes.read_done(report_path, log, "the evaluation runs again (resumed)")
    trained = processes.read_done(
        os.path.join(directory, "train", train.SUMMARY), log, "the training runs again (resumed)"
    )
    if trained is None:  # written after the model: with it, the model is whole
        t0 = time.perf_counter()
        trained = train.run(config, os.path.join(directory, "train"))
        seconds["train"] = round(time.perf_counter() - t0, 1)
    if report is None:
        t0 = time.perf_counter()
        report = evaluate.run(config, model_dir, os.path.join(directory, "eval"), log=log)
        seconds["eval"] = round(time.perf_counter() - t0, 1)
    elif not seconds:
        log(f"[study] {directory} is complete; skipped.")
    out = _figures(report)
    out["train_pgd_accuracy"] = trained.get("eval_pgd_accuracy")  # the held-out PGD of train
    out["settings"] = _settings(report)
    out["seconds"] = seconds  # this invocation (empty when skipped): not part of the table
    return out


def _settings(report: dict[str, Any]) -> str:
    from hpm_jax.evaluation import reports

    return reports.settings_line(report)


# ---- the study -----------------------------------------------------------------------------


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    log: Callable[[str], Any] | None = print,
) -> dict[str, Any]:
    """Run (or resume) the study `config.study` describes in `workdir`; returns the table
    (also WORKDIR/study.json, study.md and study.png)."""
    log = log or (lambda _: None)
    study = study_config(config)
    checkpoint = str(config.init.checkpoint or "")
    if not checkpoint:
        raise StudyError(
            "the study fine-tunes init.checkpoint, which is empty; pass "
            "--config.init.checkpoint=DIR (an FC model, e.g. the demo's WORKDIR/at/model)."
        )
    if not os.path.isfile(os.path.join(checkpoint, "model.json")):
        raise StudyError(f"init.checkpoint={checkpoint} holds no model.json (no saved model).")
    workdir = os.path.abspath(workdir)
    processes = Processes.current()  # each stage on every process; process 0 writes the table
    names = point_names(study)
    seeds = [int(s) for s in study.seeds]
    configs = point_configs(config)  # every one built, so checked, before the first trains
    start = time.perf_counter()
    seconds: dict[str, dict[str, float]] = {}
    baseline = None
    if study.baseline:
        log(f"\n[study] FC baseline: AutoAttack on {checkpoint}")
        t0 = time.perf_counter()
        base_dir = os.path.join(workdir, "baseline")
        report = processes.read_done(
            os.path.join(base_dir, evaluate.REPORT), log, "the evaluation runs again (resumed)"
        )
        if report is None:
            base_config = copy.deepcopy(configs[names[0], seeds[0]])
            report = evaluate.run(base_config, checkpoint, base_dir, log=log)
        fc = report["heads"]["fc"]
        baseline = {
            "checkpoint": checkpoint,
            "clean": fc["clean_accuracy"],
            "autoattack": fc["autoattack"]["robust_accuracy"],
        }
        seconds["baseline"] = {"eval": round(time.perf_counter() - t0, 1)}
    per_seed: dict[str, dict[int, dict[str, Any]]] = {}
    for i, name in enumerate(names):
        for seed in seeds:
            log(
                f"\n[study] point {i + 1}/{len(names)} {name!r}, seed {seed}: "
                f"{list(study.points[name]) or '(the config as it is)'}"
            )
            directory = os.path.join(workdir, "points", name, f"seed_{seed}")
            point = configs[name, seed]
            _check_point(
                directory,
                {
                    "overrides": list(study.points[name]),
                    "seed": seed,
                    "config": _result_config(point),
                },
                processes,
            )
            result = run_point(point, directory, log, processes)
            seconds[f"{name}/seed_{seed}"] = result.pop("seconds")
            per_seed.setdefault(name, {})[seed] = result
    table = summarize(study, names, seeds, per_seed, baseline)
    table["seconds"] = {"total": round(time.perf_counter() - start, 1), **seconds}
    if processes.writer:
        write(table, workdir)
    log("\n" + markdown(table))
    return table


def summarize(study, names, seeds, per_seed, baseline) -> dict[str, Any]:
    """The table: per point, each figure's mean and interval over seeds, and the difference
    to the reference point paired by seed."""
    rows = []
    reference = per_seed.get(REFERENCE)
    for name in names:
        results = [per_seed[name][s] for s in seeds]
        row = {"name": name, "overrides": list(study.points[name])}
        for key in METRICS:
            values = [r[key] for r in results]
            row[key] = None if any(v is None for v in values) else interval(values)
        surrogates = list(results[0]["msa_per_surrogate"])
        row["msa_per_surrogate"] = {
            s: interval([r["msa_per_surrogate"][s] for r in results]) for s in surrogates
        }
        if reference is not None and name != REFERENCE:
            row["msa_minus_default"] = interval(
                [per_seed[name][s]["msa"] - reference[s]["msa"] for s in seeds]
            )
            row["clean_minus_default"] = interval(
                [per_seed[name][s]["clean"] - reference[s]["clean"] for s in seeds]
            )
        rows.append(row)
    return {
        "format": "hpm_jax.study/1",
        "seeds": seeds,
        "settings": per_seed[names[0]][seeds[0]]["settings"],
        "baseline": baseline,
        "rows": rows,
        "per_seed": {
            n: {
                str(s): {k: v for k, v in r.items() if k != "settings"}
                for s, r in per_seed[n].items()
            }
            for n in names
        },
    }
