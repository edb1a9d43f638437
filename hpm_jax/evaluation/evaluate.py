"""Evaluate a checkpoint: clean accuracy, AutoAttack on FC and l2-EMA, MSA on HPM; resumable.

    report = run(load_config("configs/fashion_mnist.py"), "/tmp/fmnist_hpm/model", "/tmp/ev")
    report["heads"]["hpm"]["msa"]["robust_accuracy"]
    python -m hpm_jax.evaluate --config=configs/fashion_mnist.py \
        --checkpoint=/tmp/fmnist_hpm/model --workdir=/tmp/fmnist_eval    # hpm_jax.cli.evaluate

The checkpoint is a `model/` directory (`hpm_jax.training.train`, `hpm_jax.interop.convert`).
Rows of the
result, one per head (docs/design.md, section 2):

* `fc`: the model's FC logits (an HPM checkpoint's own FC head), AutoAttack.
* `ema_l2`: the l2 head against the EMA prototypes P_ema (models with prototypes), AutoAttack.
* `hpm`: the HPM model itself (the target), the Mixed Surrogate Attack with the surrogates of
  `evaluation.surrogates`; beside it plain AutoAttack through HPM's own straight-through
  gradient ("naive"), to show what an evaluation that ignores the dynamic defense reports.
* `baseline`: with `baseline_checkpoint`, a separate FC model, AutoAttack.

The evaluation set is the first `evaluation.num_examples` of the eval split, cut into fixed
batches of `evaluation.batch_size` in order: HPM classifies a point in its batch's context,
so batch size and order are part of the result and are recorded. Attack settings come from
`config.evaluation` (see `default_evaluation_config`; a config without that section gets
those defaults) and are written into the report; `evaluation.precision` is the matmul
precision of every program (report.json's `precision`, with the logit tolerance it
implies). WORKDIR receives `report.json`, `summary.md`, `robustness.png` (and
`eps_curves.png` with `evaluation.curve_eps`), `adversarial/*.npz` (x_adv and per-sample
robust flags) and `state/` (the attacks' resumable state files, per section and batch: a
killed evaluation started again with the same arguments continues where it stopped and ends
with the same report).

Several processes (`jax.distributed`, one per host of a pod; `hpm-evaluate --multihost`) run
`run` together on one workdir that all hosts see: each attacks its share of the fixed
batches on its own devices (`hpm_jax.evaluation.processes`), and the report is the one a single
process writes. With `evaluation.batch_sharding="global"` every batch is instead split over all
devices of all processes and attacked by all of them together (for a model or batch too big
for one host's devices; `batch_size` must be a multiple of `jax.device_count()`). The knob
changes who computes, not what (a batch gives what one process with its mesh's devices gives:
the same, but for AutoAttack's bucket sizes where the device counts differ, `processes`): it
is not part of the workdir's identity (a run killed in one mode resumes in the other) nor of
report.json's `settings`, and is recorded beside `processes`. Only process 0 writes the
report, summary, plots, TensorBoard, log.txt and model_info; every process returns the report.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from hpm_jax import config_sections, models
from hpm_jax.attacks import precision
from hpm_jax.attacks.driver import LOOPS
from hpm_jax.attacks.resume import data_hash
from hpm_jax.evaluation import log as evaluation_log
from hpm_jax.evaluation import provenance
from hpm_jax.evaluation.inputs import (  # noqa: F401  (re-exported: evaluate.load_eval_data etc.)
    EvaluationSetupError,
    check_model_takes,
    load_eval_data,
    load_eval_subset,
    load_model_dir,
    load_robustbench_for_evaluation,
    model_identity,
)
from hpm_jax.evaluation.processes import BATCH_SHARDINGS, Processes
from hpm_jax.evaluation.runner import AttackRunner, attack_list, clean_accuracy  # noqa: F401
from hpm_jax.evaluation.workdir import (  # noqa: F401  (re-exported: evaluate.REPORT etc.)
    ADV_DIR,
    IDENTITY,
    MODEL_INFO,
    OUTPUTS,
    REPORT,
    STATE_DIR,
    SUMMARY,
    prepare_workdir,
)
from hpm_jax.runtime import integrity

FORMAT = "hpm_jax.evaluate/1"
NORMS = ("Linf", "L2", "L1")
# Knobs that say how the work is shared out, never what it gives: not part of the workdir's
# identity (a run killed in one way resumes in the other) nor of report.json's settings.
PLACEMENT = ("batch_sharding",)


def default_evaluation_config(config: ml_collections.ConfigDict | None = None):
    """The `config.evaluation` knobs and their defaults (full AutoAttack budgets;
    `hpm_jax.config_sections.evaluation`). The threat model (norm, eps) defaults to the
    training attack's, `config.attack`, when given."""
    return config_sections.evaluation(config.get("attack") if config is not None else None)


def completed_evaluation(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.evaluation` with every knob the file leaves out filled in from the defaults,
    unchecked (`evaluation_config` checks), so that every knob can be overridden. Unknown
    keys are an error naming them."""
    defaults = default_evaluation_config(config).to_dict()
    given = config.get("evaluation")
    given = {} if given is None else _plain(given)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise EvaluationSetupError(
            f"config.evaluation has unknown key(s) {unknown}; the knobs are {sorted(defaults)}."
        )
    return ml_collections.ConfigDict({**defaults, **given})


def load_evaluation_config(spec: str, overrides=()) -> ml_collections.ConfigDict:
    """`config_lib.load_config(spec)` with its evaluation section completed, then `overrides`:
    `--config.evaluation.eps=...` works on a config file without the section (the program's
    way to read its --config)."""
    from hpm_jax import config_lib

    config = config_lib.load_config(spec)
    with config.unlocked():
        config.evaluation = completed_evaluation(config)
    config_lib.apply_overrides(config, overrides)
    return config


def load_robustbench_config(robustbench: dict[str, Any], spec: str | None = None, overrides=()):
    """The config of `hpm-evaluate --robustbench`: `spec`'s (a config file) or, without one,
    `robustbench_config`'s; the leaderboard's norm and eps and RobustBench's order in either
    case; then the `--config.KEY=VALUE` overrides."""
    from hpm_jax import config_lib
    from hpm_jax.evaluation import robustbench as rb_eval
    from hpm_jax.interop.zoo.robustbench import entry

    try:
        info = entry(robustbench["name"], robustbench.get("dataset", "cifar10"),
                     robustbench.get("threat_model", "Linf"))  # fmt: skip
    except ValueError as e:
        raise EvaluationSetupError(f"--robustbench: {e}") from None
    standard = rb_eval.robustbench_config(info)
    config = config_lib.load_config(spec) if spec else standard
    tfds_name = rb_eval.DATASETS[info.dataset][0]
    if config.dataset.name != tfds_name:
        raise EvaluationSetupError(
            f"--robustbench {info.name} is a {info.dataset} model but the config's dataset is "
            f"{config.dataset.name!r}; use a {tfds_name} config or none."
        )
    with config.unlocked():
        config.evaluation = completed_evaluation(config)
        for key in ("norm", "eps", "order"):
            config.evaluation[key] = standard.evaluation[key]
    config_lib.apply_overrides(config, overrides)
    return config


def evaluation_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.evaluation` over the defaults (norm and eps from `config.attack`); unknown
    keys, a missing or non-positive eps and an unknown norm are errors naming the fix."""
    ev = completed_evaluation(config)
    if ev.eps is None:
        raise EvaluationSetupError(
            "the config says no threat model: it has neither evaluation.eps nor attack.eps. "
            "Add an evaluation section (see configs/fashion_mnist.py) with norm and eps."
        )
    if ev.norm not in NORMS:
        raise EvaluationSetupError(
            f"evaluation.norm={ev.norm!r} is not one of {NORMS}; e.g. "
            "--config.evaluation.norm=Linf."
        )
    for name in ("eps", *(() if not ev.curve_eps else ("curve_eps",))):
        values = ev[name] if name == "curve_eps" else (ev[name],)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0
                   for v in values):  # fmt: skip
            raise EvaluationSetupError(
                f"evaluation.{name}={ev[name]!r} must be > 0 (the radius of the threat model), "
                "e.g. --config.evaluation.eps=0.03137 for 8/255."
            )
    if ev.loop not in LOOPS:
        raise EvaluationSetupError(
            f"evaluation.loop={ev.loop!r} is not one of {LOOPS}; e.g. --config.evaluation.loop=lax."
        )
    if ev.precision not in precision.PRECISIONS:
        raise EvaluationSetupError(
            f"evaluation.precision={ev.precision!r} is not one of {tuple(precision.PRECISIONS)}; "
            "e.g. --config.evaluation.precision=highest (float32 on every backend)."
        )
    if ev.batch_sharding not in BATCH_SHARDINGS:
        raise EvaluationSetupError(
            f"evaluation.batch_sharding={ev.batch_sharding!r} is not one of {BATCH_SHARDINGS}; "
            "e.g. --config.evaluation.batch_sharding=global to split every batch over all "
            "devices of all processes (process: each batch on one process's devices)."
        )
    if int(ev.batch_size) < 1 or int(ev.num_examples) < 0:
        raise EvaluationSetupError(
            f"evaluation.batch_size={ev.batch_size} must be >= 1 and evaluation.num_examples="
            f"{ev.num_examples} >= 0 (0: the whole split)."
        )
    return ev


def _plain(value: Any) -> Any:
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


# ---- the model and what it is evaluated on ---------------------------------------------------


def _load_baseline(checkpoint: str, x: np.ndarray, y: np.ndarray):
    b_model, b_vars, b_dir = load_model_dir(checkpoint, "baseline_checkpoint")
    if "fc" not in models.head_modes(b_model):
        raise EvaluationSetupError(
            f"--baseline_checkpoint={b_dir} has a {type(b_model.head).__name__}; the "
            "baseline is an FC model (e.g. the adversarially trained model HPM started from)."
        )
    check_model_takes(b_model, b_vars, x, y, b_dir)
    return b_model, b_vars, b_dir


@dataclasses.dataclass(frozen=True)
class _Inputs:
    """What one evaluation evaluates, loaded and checked (`_load_inputs`)."""

    model: Any
    variables: Any
    directory: str  # the model directory, or robustbench:DATASET/THREAT_MODEL/NAME
    modes: tuple[str, ...]  # models.head_modes(model)
    want_msa: bool
    x: np.ndarray
    y: np.ndarray
    order: str  # a sentence naming the images and their order
    baseline: tuple[Any, Any, str] | None  # (model, variables, directory)
    rb_info: Any = None  # the RobustBench table entry
    spec: dict[str, Any] | None = None  # model.json's content, for RobustBench models


def _load_inputs(config, ev, checkpoint, baseline_checkpoint, robustbench,
                 processes: Processes) -> _Inputs:  # fmt: skip
    """The model (a directory or RobustBench's), the images and the baseline, each checked
    against `ev` and the others (EvaluationSetupError naming the fix); nothing is written."""
    rb_info = spec = None
    if robustbench is not None:
        model, variables, directory, rb_info, spec = load_robustbench_for_evaluation(**robustbench)
    else:
        model, variables, directory = load_model_dir(checkpoint, "checkpoint")
    modes = models.head_modes(model)
    want_msa = _want_msa(ev, modes, directory)
    if want_msa:
        _check_surrogates(tuple(ev.surrogates), modes)
    _check_batch_size(int(ev.batch_size), processes)
    x, y, order = load_eval_subset(config, int(ev.num_examples), str(ev.data_file), str(ev.order))
    check_model_takes(model, variables, x, y, directory)
    baseline = _load_baseline(baseline_checkpoint, x, y) if baseline_checkpoint else None
    return _Inputs(model, variables, directory, modes, want_msa, x, y, order, baseline,
                   rb_info, spec)  # fmt: skip


def _check_batch_size(batch_size: int, processes: Processes) -> None:
    """A batch splits evenly over the devices it runs on: one process's, or in global mode
    all of them."""
    n_dev = processes.mesh().devices.size
    if batch_size % n_dev == 0:
        return
    if processes.is_global:
        where = f"the {n_dev} devices of all processes together (batch_sharding=global)"
    else:
        where = f"the {n_dev} devices{' of each process' if processes.count > 1 else ''}"
    raise EvaluationSetupError(
        f"evaluation.batch_size={batch_size} must be a multiple of {where}; e.g. "
        f"--config.evaluation.batch_size={max(n_dev, batch_size // n_dev * n_dev)}."
    )


def _want_msa(ev, modes, directory: str) -> bool:
    has_hpm = "hpm" in modes
    msa = {True: "required", False: "off"}.get(ev.msa, ev.msa)
    if msa not in ("auto", "required", "off"):
        raise EvaluationSetupError(
            f"evaluation.msa must be 'auto', 'required' or 'off', got {ev.msa!r}."
        )
    if msa == "required" and not has_hpm:
        raise EvaluationSetupError(
            f"evaluation.msa=required but {directory} has no HPM head (it gives {list(modes)}); "
            "MSA evaluates an HPM model. Fine-tune one with `python -m hpm_jax.train "
            "--config=configs/fashion_mnist.py:hpm --config.init.checkpoint=THIS_DIR`, or set "
            "--config.evaluation.msa=off to evaluate this model with AutoAttack only."
        )
    return has_hpm and msa != "off"


def _check_surrogates(surrogates, modes) -> None:
    if not surrogates:
        raise EvaluationSetupError("evaluation.surrogates is empty; e.g. ('fc', 'ste').")
    known = {*modes, "ste"}
    bad = [s for s in surrogates if s not in known]
    if bad:
        raise EvaluationSetupError(
            f"evaluation.surrogates {bad} are not modes of this model; choose from {sorted(known)}."
        )


def run(
    config: ml_collections.ConfigDict,
    checkpoint: str,
    workdir: str,
    *,
    baseline_checkpoint: str | None = None,
    log: Callable[[str], Any] | None = print,
    overwrite: bool = False,
    robustbench: dict[str, str] | None = None,
    progress: str | None = None,
) -> dict[str, Any]:
    """Evaluate `checkpoint` as `config.evaluation` says; write the report files to `workdir`
    (resuming what is there); returns the report (also `workdir/report.json`).

    `robustbench={"name": ..., "dataset": "cifar10", "threat_model": "Linf", "model_dir":
    "./models"}` evaluates a RobustBench model by name instead (`checkpoint` is then None) and
    adds RobustBench's model_info fields (`report["robustbench"]`, `model_info.json`).
    `progress`: bars / lines / off / auto (`hpm_jax.runtime.progress`; None: auto when `log` is
    given, else off). Every logged line also goes to `workdir/log.txt`, and the results and
    settings to TensorBoard event files in `workdir/tensorboard`.

    Everything asked for is checked before the first write. A workdir holding an evaluation
    of another checkpoint, data or settings is a WorkdirMismatchError naming the changes,
    unless `overwrite`, which discards that evaluation's state and report first."""
    # ---- check: everything asked for is loaded and checked before the first write ----------
    ev = evaluation_config(config)
    workdir = os.path.abspath(workdir)
    processes = Processes.current(str(ev.batch_sharding))
    inputs = _load_inputs(config, ev, checkpoint, baseline_checkpoint, robustbench, processes)

    # ---- the workdir: this evaluation's state resumed, another's refused (or discarded) ----
    identity = {
        "checkpoint": inputs.directory,
        "model": model_identity(inputs.directory, inputs.variables, inputs.spec),
        "baseline_checkpoint": inputs.baseline[2] if inputs.baseline else None,
        "data": data_hash(inputs.x, inputs.y),
        "settings": result_settings(ev),
    }
    # Every process checks (and refuses another evaluation's workdir alike); the writer
    # writes (or clears) it, and no process goes on before it has.
    prepare_workdir(workdir, identity, overwrite=overwrite, write=processes.writer)
    processes.barrier("hpm_jax.evaluate: workdir ready")
    progress = progress or ("auto" if log is not None else "off")
    logger = evaluation_log.EvaluationLog(
        workdir if processes.writer else None, console=log,
        progress=progress if processes.writer else "off",
    )  # fmt: skip
    try:
        # ---- the attacks: one row per head, then robust accuracy vs eps -------------------
        start = time.perf_counter()
        used = arithmetic(ev, inputs.model)
        runner = AttackRunner(
            ev, inputs.x, inputs.y, workdir, logger, processes,
            logit_tolerance=used["logit_tolerance"],
        )  # fmt: skip
        surrogates = tuple(ev.surrogates) if inputs.want_msa else ()
        fns = models.logits_fns(inputs.model, inputs.variables, [*inputs.modes, *surrogates])
        with precision.applied(ev.precision):  # clean passes too; the attacks set it again
            heads, row_fns = _head_rows(ev, inputs, runner, fns)
            curves = _curves(ev, inputs.want_msa, heads, row_fns, fns, runner)

        # ---- the report: report.json, summary.md, plots, TensorBoard ----------------------
        report = _report(config, ev, inputs, heads, curves, runner.seconds, start, processes)
        report["precision"] = used
        if processes.writer:
            _write(report, inputs.rb_info, workdir, logger)
        processes.barrier("hpm_jax.evaluate: report written")  # all end when it is there
        return report
    finally:
        logger.close()


def arithmetic(ev: ml_collections.ConfigDict, model: Any) -> dict[str, Any]:
    """The arithmetic of every program: `evaluation.precision`, the backend, the dtype the
    backbone computes in (a bfloat16 model rounds to bfloat16 whatever the level), and the
    logit tolerance they imply (`hpm_jax.attacks.precision`: near ties are not findings)."""
    backbone = getattr(model, "backbone", model)
    dtype = str(np.dtype(getattr(backbone, "dtype", np.float32)))
    backend = jax.default_backend()
    return {
        "level": str(ev.precision),
        "backend": backend,
        "compute_dtype": dtype,
        "logit_tolerance": precision.logit_tolerance(str(ev.precision), backend, dtype),
    }


def _head_rows(ev, inputs: _Inputs, runner: AttackRunner, fns: dict[str, Callable]):
    """({row name: row}, {row name: its logits function}): clean accuracy and AutoAttack on
    the FC and l2-EMA heads and the baseline; on HPM, clean accuracy, MSA and naive AutoAttack."""
    heads: dict[str, dict[str, Any]] = {}
    row_fns: dict[str, Callable] = {}  # the logits function of each row
    for mode in ("fc", "ema_l2"):
        if mode in inputs.modes:
            row_fns[mode] = fns[mode]
            heads[mode] = {
                "mode": mode,
                "model": inputs.directory,
                "clean_accuracy": float(runner.clean_accuracy(fns[mode]).mean()),
                "autoattack": runner.autoattack(f"autoattack_{mode}", fns[mode]),
            }
    if inputs.baseline:
        b_model, b_vars, b_dir = inputs.baseline  # checked before anything was written
        b_fn = row_fns["baseline"] = models.logits_fns(b_model, b_vars, ["fc"])["fc"]
        heads["baseline"] = {
            "mode": "fc",
            "model": b_dir,
            "clean_accuracy": float(runner.clean_accuracy(b_fn).mean()),
            "autoattack": runner.autoattack("autoattack_baseline", b_fn),
        }
    if "hpm" in inputs.modes:
        row_fns["hpm"] = fns["hpm"]
        row: dict[str, Any] = {
            "mode": "hpm",
            "model": inputs.directory,
            "clean_accuracy": float(runner.clean_accuracy(fns["hpm"]).mean()),
        }
        if inputs.want_msa:
            surrogates = {s: fns[s] for s in ev.surrogates}
            row["msa"] = runner.msa("msa_hpm", fns["hpm"], surrogates)
        if ev.naive_autoattack:
            row["naive_autoattack"] = runner.autoattack("autoattack_hpm_naive", fns["hpm"])
        heads["hpm"] = row
    return heads, row_fns


def _curves(ev, want_msa: bool, heads, row_fns, fns, runner) -> dict[str, dict[str, float]]:
    """{row: {eps: robust accuracy}} at each `evaluation.curve_eps` with `curve_attacks` (MSA
    for HPM when the evaluation runs it)."""
    curves: dict[str, dict[str, float]] = {}
    for eps in ev.curve_eps:
        attacks = tuple(ev.curve_attacks)
        for name in heads:
            tag = f"curve_{name}_eps{float(eps):g}"
            if name == "hpm" and want_msa:
                surrogates = {s: fns[s] for s in ev.surrogates}
                res = runner.msa(tag, fns["hpm"], surrogates, version=attacks, eps=float(eps))
            else:
                res = runner.autoattack(tag, row_fns[name], version=attacks, eps=float(eps))
            curves.setdefault(name, {})[f"{float(eps):g}"] = res["robust_accuracy"]
    return curves


def result_settings(ev: ml_collections.ConfigDict) -> dict[str, Any]:
    """The evaluation settings that decide its result: all but `PLACEMENT`."""
    return {k: v for k, v in json.loads(ev.to_json()).items() if k not in PLACEMENT}


def _report(config, ev, inputs: _Inputs, heads, curves, seconds, start: float,
            processes: Processes) -> dict[str, Any]:  # fmt: skip
    """report.json's content: the rows, curves and flags with the settings that made them."""
    batch_size = int(ev.batch_size)
    return {
        "format": FORMAT,
        "checkpoint": inputs.directory,
        "baseline_checkpoint": heads.get("baseline", {}).get("model"),
        "head": type(inputs.model.head).__name__,
        "dataset": config.dataset.name,
        "split": config.dataset.eval_split,
        "num_examples": len(inputs.x),
        "batch_size": batch_size,
        "order": f"{inputs.order}, fixed batches of {batch_size}",
        "devices": jax.device_count(),
        "processes": processes.count,
        "batch_sharding": processes.sharding,  # one process's devices per batch, or all
        "threat_model": {"norm": ev.norm, "eps": float(ev.eps)},
        "settings": result_settings(ev),
        "heads": heads,
        "curves": curves,
        "flagged": {
            f"{name}/{kind}": entry["flagged"]
            for name, row in heads.items()
            for kind, entry in row.items()
            if isinstance(entry, dict) and entry.get("flagged")
        },
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "total_seconds": round(time.perf_counter() - start, 1),
        "provenance": provenance.record(
            inputs.x, inputs.y, inputs.variables, matmul_precision=str(ev.precision)
        ),
    }


def _write(report: dict[str, Any], rb_info: Any, workdir: str, log) -> None:
    """report.json (and model_info.json for RobustBench models), then summary.md, the plots
    (`report["files"]`) and the TensorBoard record."""
    from hpm_jax.evaluation import reports  # matplotlib is imported only when writing

    if rb_info is not None:
        from hpm_jax.evaluation import robustbench as rb_eval

        report["robustbench"] = rb_eval.model_info(rb_info, report)
        integrity.write_json(os.path.join(workdir, MODEL_INFO), report["robustbench"], indent=2)
    # Atomic, with a checksum: the demo and the study take it as "this evaluation is done".
    integrity.write_json(os.path.join(workdir, REPORT), report)
    report["files"] = reports.write_all(report, workdir)
    if evaluation_log.write_tensorboard(report, workdir) is None:
        log("[evaluate] tensorboardX is not installed: no TensorBoard record (the 'train' extra)")
    log(f"[evaluate] report: {os.path.join(workdir, REPORT)}")
