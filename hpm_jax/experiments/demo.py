"""The end-to-end demo: adversarial training -> HPM fine-tuning -> sensitivity -> AutoAttack/MSA.

    at_config, hpm_config = stage_configs("configs/fashion_mnist.py", ["train.num_steps=50"])
    summary = run(at_config, hpm_config, "/tmp/hpm_demo")
    python -m hpm_jax.demo --workdir=/tmp/hpm_demo    # the command line: hpm_jax.cli.demo

On Fashion-MNIST (the Debian package's files offline, TFDS when prepared), five stages, each
in its own directory of WORKDIR and skipped when its output is already there (so a killed
demo started again resumes; the two training stages also resume from their checkpoints; a
damaged "done" file is named and its stage runs again, resumed):

1. `at/`: PGD-AT of the small CNN with the FC head (`hpm_jax.training.train.run`, the config as
   given).
2. `hpm/`: HPM fine-tuning of that model (the config's `:hpm` variant, init.checkpoint =
   `at/model`).
3. `analysis/`: sensitivity of the HPM model's FC, l2 (P_ema) and HPM heads
   (`hpm_jax.analysis`) on the evaluation points.
4. `eval/`: `hpm_jax.evaluation.evaluate` on the HPM model: AutoAttack on its FC and l2-EMA
   heads, MSA on HPM, plain AutoAttack through HPM's STE beside it (`config.evaluation` sets
   n, batches and the attack budgets; the table states them).
5. the table (rows FC, l2-EMA, HPM; clean, AutoAttack, MSA robust accuracy) and
   `WORKDIR/summary.json`.

`stage_configs` applies the config overrides (`--config.a.b=v` on the command line) to both
training stages and the evaluation, after the demo's own `DEMO_OVERRIDES` (held-out PGD
evaluation of training on 1000 images).

Several processes (`jax.distributed`, one per host; `hpm-demo --multihost` or the three
explicit flags of `hpm_jax.cli.multihost`) run `run` together on one workdir all hosts see:
the training stages train on every host's devices, the evaluation shares out its batches
(`hpm_jax.evaluation.processes`), and process 0 alone writes the analysis, the summary and
every report. Whether a stage is done is process 0's look at its files, so that all
processes run or skip it together.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from hpm_jax import config_lib
from hpm_jax.evaluation import evaluate, reports
from hpm_jax.evaluation.processes import Processes
from hpm_jax.runtime import integrity

# The repository's configs/ (an editable install or a checkout; a wheel holds no configs).
DEFAULT_CONFIG = os.path.normpath(
    os.path.join(os.path.dirname(__file__), "..", "..", "configs", "fashion_mnist.py")
)
SUMMARY = "summary.json"
# The demo's own choice for its training stages, before the user's overrides: the held-out
# PGD evaluation at the end of training runs on 1000 test images, not all 10000 (that pass
# alone would cost as much as ~200 training steps; the evaluation stage measures robustness).
DEMO_OVERRIDES = ("eval.num_examples=1000",)
STAGES = ("at", "hpm", "analysis", "eval")


def stage_configs(
    config_spec: str = DEFAULT_CONFIG, overrides: Sequence[str] = ()
) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """(adversarial training config, HPM fine-tuning config): the file's plain and `hpm`
    variants with the same overrides (`run` points the second's init.checkpoint at the first
    stage's model)."""
    path, _, variant = config_spec.partition(":")
    hpm_spec = f"{path}:{variant + ',' if variant else ''}hpm"
    configs = []
    for spec in (config_spec, hpm_spec):
        config = config_lib.load_config(spec)
        with config.unlocked():  # every evaluation knob, so that each can be overridden
            config.evaluation = evaluate.completed_evaluation(config)
        config_lib.apply_overrides(config, [*DEMO_OVERRIDES, *overrides])
        check_settings(config)  # a bad evaluation setting fails before training
        configs.append(config)
    return configs[0], configs[1]


def check_settings(config: ml_collections.ConfigDict) -> None:
    """Raise EvaluationSetupError for an evaluation setting the demo cannot run, before its
    first stage: the evaluation's own checks, and the analysis stage's need for one full
    batch (HPM's batch statistics), which would otherwise fail only after both trainings."""
    ev = evaluate.evaluation_config(config)
    n, batch_size = int(ev.num_examples), int(ev.batch_size)
    if 0 < n < batch_size:  # 0: the whole split
        raise evaluate.EvaluationSetupError(
            f"the demo's analysis needs at least one full batch: evaluation.num_examples={n} < "
            f"evaluation.batch_size={batch_size}; set --config.evaluation.batch_size={n} (or "
            f"--config.evaluation.num_examples={batch_size} or more)."
        )


_AGAIN = "the stage runs again (it resumes from its own state)"


def _train(config, directory: str, log, processes: Processes) -> dict[str, Any]:
    from hpm_jax.training import train  # jax and the training stack, imported on use

    summary = processes.read_done(os.path.join(directory, train.SUMMARY), log, _AGAIN)
    model = processes.read_done(os.path.join(directory, "model", "model.json"), log, _AGAIN)
    if summary is not None and model is not None:
        log(f"[demo] {directory} is complete; skipped.")
        return summary
    return train.run(config, directory)  # every process: it trains on all hosts' devices


def _analysis(config, checkpoint: str, directory: str, log, processes: Processes) -> dict:
    """The sensitivity analysis of the HPM model on the evaluation points and batches. Every
    process computes it on its own devices (it is deterministic, and short beside the
    evaluation that follows); process 0 writes it."""
    done = processes.read_done(os.path.join(directory, "summary.json"), log, _AGAIN)
    if done is not None:
        log(f"[demo] {directory} is complete; skipped.")
        return done
    import jax.numpy as jnp

    from hpm_jax import analysis
    from hpm_jax.models.export import load_model

    ev = evaluate.evaluation_config(config)
    batch_size = int(ev.batch_size)
    model, variables = load_model(checkpoint)
    x, y = evaluate.load_eval_data(config, int(ev.num_examples))
    n = len(x) - len(x) % batch_size  # full batches only: HPM's batch statistics
    if n == 0:  # only from a data_file of fewer images; `check_settings` catches the rest
        raise evaluate.EvaluationSetupError(
            f"the analysis needs at least one full batch: evaluation.num_examples={len(x)} < "
            f"evaluation.batch_size={batch_size}."
        )
    batches = [
        {"image": jnp.asarray(x[i : i + batch_size]), "label": jnp.asarray(y[i : i + batch_size])}
        for i in range(0, n, batch_size)
    ]
    result = analysis.analyze(model, variables, batches, seed=int(ev.seed))
    summary = result["summary"]
    summary.update(checkpoint=checkpoint, batch_size=batch_size, num_examples=n)
    if processes.writer:
        analysis.write_figures(result, directory)
        integrity.write_json(os.path.join(directory, "summary.json"), summary, indent=2)  # last
    processes.barrier("hpm_jax.demo: analysis written")
    return summary


def analysis_lines(summary: dict[str, Any]) -> list[str]:
    """Per head: accuracy, median margin Lipschitz constant and relative sensitivity, and the
    worst-case feature-perturbation flip rate at each radius."""
    radii = " ".join(f"{r:g}" for r in summary["relative_radii"])
    lines = [f"  worst-case flip rate at feature radii {radii} x mean ||f||:"]
    for name, h in summary["heads"].items():
        flips = " ".join(f"{v:.2f}" for v in h["worst_case"]["flip_rate"])
        lines.append(
            f"  {name:>4}: acc {h['accuracy']:.3f}  median ||grad_f m|| "
            f"{h['lipschitz']['median']:.3g}  median L||f||/|m| "
            f"{h['relative_sensitivity']['median']:.3g}  flips {flips}"
        )
    return lines


def run(
    at_config: ml_collections.ConfigDict,
    hpm_config: ml_collections.ConfigDict,
    workdir: str,
    *,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Run (or resume) the demo in `workdir` with the stages' configs (`stage_configs`);
    returns the summary (also WORKDIR/summary.json). The HPM stage fine-tunes the first
    stage's model, whatever `hpm_config.init.checkpoint` says."""
    workdir = os.path.abspath(workdir)
    processes = Processes.current()
    dirs = {stage: os.path.join(workdir, stage) for stage in STAGES}
    at_model, hpm_model = (os.path.join(dirs[s], "model") for s in ("at", "hpm"))
    hpm_config = hpm_config.copy_and_resolve_references()
    hpm_config.init.checkpoint = at_model
    for config in (at_config, hpm_config):
        check_settings(config)  # a bad evaluation setting fails before training
    os.makedirs(workdir, exist_ok=True)
    seconds: dict[str, float] = {}
    start = time.perf_counter()

    def stage(name: str, title: str, fn):
        log(f"\n[demo] stage {STAGES.index(name) + 1}/4: {title}")
        t0 = time.perf_counter()
        out = fn()
        seconds[name] = round(time.perf_counter() - t0, 1)
        return out

    at = stage("at", "adversarial training (PGD-AT, FC head)",
               lambda: _train(at_config, dirs["at"], log, processes))  # fmt: skip
    hpm = stage("hpm", "HPM fine-tuning",
                lambda: _train(hpm_config, dirs["hpm"], log, processes))  # fmt: skip
    analysis_dir = dirs["analysis"]
    sens = stage("analysis", "sensitivity of the FC, l2 and HPM heads",
                 lambda: _analysis(at_config, hpm_model, analysis_dir, log, processes))  # fmt: skip
    for line in analysis_lines(sens):
        log(line)

    def run_eval():
        done = processes.read_done(os.path.join(dirs["eval"], evaluate.REPORT), log, _AGAIN)
        if done is not None:
            log(f"[demo] {dirs['eval']} is complete; skipped.")
            return done
        return evaluate.run(at_config, hpm_model, dirs["eval"], log=log)

    report = stage("eval", "AutoAttack on FC and l2-EMA, MSA on HPM", run_eval)
    rows = {name: reports.row_figures(row) for name, row in report["heads"].items()}
    summary = {
        "dataset": at_config.dataset.name,
        "model": at_config.model.name,
        "checkpoint": hpm_model,  # what `python -m hpm_jax.analysis --checkpoint=WORKDIR` reads
        "at_checkpoint": at_model,
        "train": {"at": at, "hpm": hpm},
        "table": rows,
        "settings": reports.settings_line(report),
        "report": os.path.join(dirs["eval"], evaluate.REPORT),
        "summary_md": os.path.join(dirs["eval"], evaluate.SUMMARY),
        "plots": sorted(
            os.path.join(d, f)
            for d in (dirs["eval"], dirs["analysis"])
            for f in os.listdir(d)
            if f.endswith(".png")
        ),
        "stage_seconds": seconds,  # this invocation; a skipped stage takes ~0
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    if processes.writer:
        integrity.write_json(os.path.join(workdir, SUMMARY), summary, indent=2)
    log("\n" + reports.table(report))
    log(f"report: {summary['report']}\nsummary: {summary['summary_md']}")
    log("plots: " + ", ".join(summary["plots"]))
    log(f"demo time: {summary['total_seconds']} s ({seconds})")
    return summary
