"""Evaluate a checkpoint: clean accuracy, AutoAttack on FC and l2-EMA, MSA on HPM; resumable.

    python -m hpm_jax.evaluate --config=configs/fashion_mnist.py \
        --checkpoint=/tmp/fmnist_hpm/model --workdir=/tmp/fmnist_eval
    hpm-evaluate --config=configs/fashion_mnist.py --checkpoint=DIR --workdir=OUT \
        --baseline_checkpoint=/tmp/fmnist_at/model --config.evaluation.num_examples=1000

    report = run(load_config("configs/fashion_mnist.py"), "/tmp/fmnist_hpm/model", "/tmp/ev")
    report["heads"]["hpm"]["msa"]["robust_accuracy"]                 # in Python

The checkpoint is a `model/` directory (`hpm_jax.train`, `hpm_jax.convert`). Rows of the
result, one per head (DESIGN.md section 2):

* `fc`: the model's FC logits (an HPM checkpoint's own FC head), AutoAttack.
* `ema_l2`: the l2 head against the EMA prototypes P_ema (models with prototypes), AutoAttack.
* `hpm`: the HPM model itself (the target), the Mixed Surrogate Attack with the surrogates of
  `evaluation.surrogates`; beside it plain AutoAttack through HPM's own straight-through
  gradient ("naive"), to show what an evaluation that ignores the dynamic defense reports.
* `baseline`: with `--baseline_checkpoint`, a separate FC model, AutoAttack.

The evaluation set is the first `evaluation.num_examples` of the eval split, cut into fixed
batches of `evaluation.batch_size` in order: HPM classifies a point in its batch's context,
so batch size and order are part of the result and are recorded. Attack settings come from
`config.evaluation` (see `default_evaluation_config`; a config without that section gets
those defaults) and are written into the report. WORKDIR receives `report.json`,
`summary.md`, `robustness.png` (and `eps_curves.png` with `evaluation.curve_eps`),
`adversarial/*.npz` (x_adv and per-sample robust flags) and `state/` (the attacks' resumable
state files: a killed evaluation started again with the same arguments continues where it
stopped and ends with the same report).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hpm_jax import data, models
from hpm_jax.attacks import AutoAttack, contract, mixed_surrogate_attack, versions
from hpm_jax.checkpointing import MODEL_SPEC, load_model
from hpm_jax.models import FCHead, HPMHead, L2Head

REPORT, SUMMARY, STATE_DIR, ADV_DIR = "report.json", "summary.md", "state", "adversarial"
FORMAT = "hpm_jax.evaluate/1"


class EvaluationSetupError(ValueError):
    """The checkpoint, data or evaluation config cannot give the evaluation asked for."""


def default_evaluation_config() -> ml_collections.ConfigDict:
    """The `config.evaluation` knobs and their defaults (full AutoAttack budgets)."""
    c = ml_collections.ConfigDict()
    c.num_examples = 1000  # first N of the eval split; 0 = all
    c.batch_size = 250  # fixed batches in order: HPM's batch context, part of the result
    c.norm = "Linf"
    c.eps = 0.1
    c.seed = 0
    # AutoAttack version for every row: "standard", "plus", "rand", or attack names separated
    # by commas ("apgd-ce,apgd-t,square"; those take the reference's constructor defaults).
    c.version = "standard"
    # {attack: {setting: value}} over the version's settings, e.g. reduced budgets:
    # {"square": {"n_queries": 1000}, "apgd-t": {"n_target_classes": 3}}.
    c.attack_options = ml_collections.ConfigDict()
    c.msa = "auto"  # "auto": when the model has an HPM head; "required"; "off"
    c.surrogates = ("fc", "ema_l2", "soft", "ste")  # MSA's surrogates (HPM head modes)
    c.naive_autoattack = True  # plain AutoAttack on HPM through its STE gradient
    c.curve_eps = ()  # robust accuracy vs eps at these radii; () = no curves
    c.curve_attacks = ("apgd-ce",)  # the attacks of each curve point (names)
    c.run_checks = True
    return c


def evaluation_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.evaluation` over the defaults; unknown keys are an error naming them."""
    defaults = default_evaluation_config().to_dict()
    given = config.get("evaluation")
    given = {} if given is None else _plain(given)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise EvaluationSetupError(
            f"config.evaluation has unknown key(s) {unknown}; the knobs are {sorted(defaults)}."
        )
    return ml_collections.ConfigDict({**defaults, **given})


def _plain(value: Any) -> Any:
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


# ---- model, data ---------------------------------------------------------------------------


def _load(directory: str, flag: str):
    directory = os.path.abspath(os.path.expanduser(directory))
    if not os.path.isfile(os.path.join(directory, MODEL_SPEC)):
        nested = os.path.join(directory, "model", MODEL_SPEC)
        hint = (
            f" It holds model/{MODEL_SPEC}: pass {os.path.join(directory, 'model')}."
            if os.path.isfile(nested)
            else " Train one with `python -m hpm_jax.train --config=configs/fashion_mnist.py "
            "--workdir=DIR` (then pass DIR/model) or convert one with `python -m hpm_jax.convert`."
        )
        raise EvaluationSetupError(
            f"--{flag}={directory} is not a model directory (no {MODEL_SPEC}).{hint}"
        )
    model, variables = load_model(directory)
    return model, variables, directory


def head_modes(model: Any) -> tuple[str, ...]:
    """The logits modes a model really has (an FC head answers every mode with FC logits, so
    asking it for "ema_l2" would silently evaluate the wrong thing)."""
    if isinstance(model.head, HPMHead):
        return ("fc", "ema_l2", "soft", "hpm")
    if isinstance(model.head, L2Head):
        return ("ema_l2",)
    if isinstance(model.head, FCHead):
        return ("fc",)
    raise EvaluationSetupError(f"unknown head type {type(model.head).__name__}.")


def logits_fns(model: Any, variables: Any, modes) -> dict[str, Callable]:
    """One logits function per mode (`hpm_jax.models.logits_fn`: the variables are traced
    arguments of the attacks, so every row shares the compiled programs of its mode). "ste"
    is the "hpm" function itself."""
    fns: dict[str, Callable] = {}
    for mode in modes:
        name = "hpm" if mode == "ste" else mode
        if name not in fns:
            fns[name] = models.logits_fn(model, variables, mode=name)
        fns[mode] = fns[name]
    return fns


def load_eval_data(config: ml_collections.ConfigDict, num_examples: int):
    """(x float32 NHWC in [0, 1], y int32): the first `num_examples` of the eval split."""
    ds = config.dataset
    source = data.get_source(ds.name, ds.eval_split, data_dir=ds.data_dir or None)
    n = len(source) if not num_examples else int(num_examples)
    if n > len(source):
        raise EvaluationSetupError(
            f"evaluation.num_examples={n} but {ds.name}:{ds.eval_split} has {len(source)}."
        )
    preprocess = data.eval_preprocessing("auto", getattr(source, "name", ds.name))
    records = [source[i] for i in range(n)]
    x = np.stack([preprocess(np.asarray(r["image"])) for r in records])
    if x.ndim == 3:
        x = x[..., None]
    y = np.asarray([int(r["label"]) for r in records], np.int32)
    return (x.astype(np.float32) / 255.0), y


def clean_accuracy(fn: Callable, x: np.ndarray, y: np.ndarray, batch_size: int) -> np.ndarray:
    """Per-sample correctness of `fn` on the fixed batches (the last one as it is)."""
    fn = contract.traced(fn)
    out = [
        np.asarray(_predict(fn, x[i : i + batch_size])) == y[i : i + batch_size]
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out)


@jax.jit
def _predict(fn, x):
    return jnp.argmax(fn(x), axis=-1)


# ---- the evaluation ------------------------------------------------------------------------


def _strip(d: dict[str, Any]) -> dict[str, Any]:
    """A report dict without per-sample lists (they go to adversarial/*.npz)."""
    out = {k: v for k, v in d.items() if k not in ("robust", "clean")}
    if "chain" in out:
        out["chain"] = _strip(out["chain"])
    return out


def _flags(checks: list[dict[str, Any]]) -> list[str]:
    return [c["name"] for c in checks if c["flagged"]]


def _autoattack_entry(report) -> dict[str, Any]:
    d = _strip(report.to_dict())
    d["flagged"] = _flags(d["checks"])
    return d


def _msa_entry(report) -> dict[str, Any]:
    d = _strip(report.to_dict())
    d["flagged"] = _flags(d["chain"]["checks"])
    d["attack_settings"] = d["chain"]["attack_settings"]
    d["times"] = d["chain"]["times"]
    return d


class _Runner:
    """Runs the sections of one evaluation, each with its state file, saving x_adv."""

    def __init__(self, ev, x, y, workdir: str, log):
        self.ev, self.x, self.y, self.workdir, self.log = ev, x, y, workdir, log
        os.makedirs(os.path.join(workdir, STATE_DIR), exist_ok=True)
        os.makedirs(os.path.join(workdir, ADV_DIR), exist_ok=True)
        self.seconds: dict[str, float] = {}

    def _state(self, name: str) -> str:
        return os.path.join(self.workdir, STATE_DIR, f"{name}.json")

    def _save(self, name: str, x_adv: np.ndarray, robust: np.ndarray) -> None:
        path = os.path.join(self.workdir, ADV_DIR, f"{name}.npz")
        np.savez_compressed(path, x_adv=x_adv, robust=np.asarray(robust, bool))

    def _options(self, attacks: str | list[str]) -> dict[str, Any]:
        opts = _plain(self.ev.attack_options)
        if isinstance(attacks, str):
            return opts
        return {k: v for k, v in opts.items() if k in attacks}

    def autoattack(self, name: str, fn, *, version=None, eps=None) -> dict[str, Any]:
        version = attack_list(self.ev.version if version is None else version)
        self.log(f"[evaluate] AutoAttack on {name}")
        t0 = time.perf_counter()
        report = AutoAttack(
            fn,
            norm=self.ev.norm,
            eps=self.ev.eps if eps is None else eps,
            version=version,
            seed=int(self.ev.seed),
            attack_options=self._options(version),
            run_checks=bool(self.ev.run_checks),
            log=self.log,
        ).run(self.x, self.y, batch_size=int(self.ev.batch_size), state_path=self._state(name))
        self.seconds[name] = time.perf_counter() - t0
        self._save(name, report.x_adv, report.robust)
        return _autoattack_entry(report)

    def msa(self, name: str, target, surrogates, *, version=None, eps=None) -> dict[str, Any]:
        version = attack_list(self.ev.version if version is None else version)
        self.log(f"[evaluate] MSA on {name} through {', '.join(surrogates)}")
        t0 = time.perf_counter()
        report = mixed_surrogate_attack(
            target,
            surrogates,
            self.x,
            self.y,
            norm=self.ev.norm,
            eps=self.ev.eps if eps is None else eps,
            batch_size=int(self.ev.batch_size),
            version=version,
            seed=int(self.ev.seed),
            attack_options=self._options(version),
            state_path=self._state(name),
            run_checks=bool(self.ev.run_checks),
            log=self.log,
        )
        self.seconds[name] = time.perf_counter() - t0
        self._save(name, report.x_adv, report.robust)
        return _msa_entry(report)


def attack_list(version: Any) -> str | list[str]:
    """A version name as it is; "a,b" or a sequence of attack names as a list of names."""
    if isinstance(version, str):
        if version in versions.VERSIONS:
            return version
        return [v.strip() for v in version.split(",") if v.strip()]
    return [str(v) for v in version]


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
) -> dict[str, Any]:
    """Evaluate `checkpoint` as `config.evaluation` says; write the report files to `workdir`
    (resuming what is there); returns the report (also `workdir/report.json`)."""
    from hpm_jax import reports  # matplotlib is imported only when writing

    log = log or (lambda _: None)
    ev = evaluation_config(config)
    workdir = os.path.abspath(workdir)
    model, variables, directory = _load(checkpoint, "checkpoint")
    modes = head_modes(model)
    want_msa = _want_msa(ev, modes, directory)
    if want_msa:
        _check_surrogates(tuple(ev.surrogates), modes)
    n_dev = jax.device_count()
    if int(ev.batch_size) % n_dev:
        raise EvaluationSetupError(
            f"evaluation.batch_size={ev.batch_size} must be a multiple of the {n_dev} devices."
        )
    x, y = load_eval_data(config, int(ev.num_examples))
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    runner = _Runner(ev, x, y, workdir, log)
    fns = logits_fns(model, variables, [*modes, *(ev.surrogates if want_msa else ())])
    batch_size = int(ev.batch_size)

    heads: dict[str, dict[str, Any]] = {}
    row_fns: dict[str, Callable] = {}  # the logits function of each row
    for mode in ("fc", "ema_l2"):
        if mode in modes:
            row_fns[mode] = fns[mode]
            heads[mode] = {
                "mode": mode,
                "model": directory,
                "clean_accuracy": float(clean_accuracy(fns[mode], x, y, batch_size).mean()),
                "autoattack": runner.autoattack(f"autoattack_{mode}", fns[mode]),
            }
    if baseline_checkpoint:
        b_model, b_vars, b_dir = _load(baseline_checkpoint, "baseline_checkpoint")
        if "fc" not in head_modes(b_model):
            raise EvaluationSetupError(
                f"--baseline_checkpoint={b_dir} has a {type(b_model.head).__name__}; the "
                "baseline is an FC model (e.g. the adversarially trained model HPM started from)."
            )
        b_fn = row_fns["baseline"] = logits_fns(b_model, b_vars, ["fc"])["fc"]
        heads["baseline"] = {
            "mode": "fc",
            "model": b_dir,
            "clean_accuracy": float(clean_accuracy(b_fn, x, y, batch_size).mean()),
            "autoattack": runner.autoattack("autoattack_baseline", b_fn),
        }
    if "hpm" in modes:
        row_fns["hpm"] = fns["hpm"]
        row: dict[str, Any] = {
            "mode": "hpm",
            "model": directory,
            "clean_accuracy": float(clean_accuracy(fns["hpm"], x, y, batch_size).mean()),
        }
        if want_msa:
            surrogates = {s: fns[s] for s in ev.surrogates}
            row["msa"] = runner.msa("msa_hpm", fns["hpm"], surrogates)
        if ev.naive_autoattack:
            row["naive_autoattack"] = runner.autoattack("autoattack_hpm_naive", fns["hpm"])
        heads["hpm"] = row

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

    report = {
        "format": FORMAT,
        "checkpoint": directory,
        "baseline_checkpoint": heads.get("baseline", {}).get("model"),
        "head": type(model.head).__name__,
        "dataset": config.dataset.name,
        "split": config.dataset.eval_split,
        "num_examples": len(x),
        "batch_size": batch_size,
        "order": f"the first {len(x)} of {config.dataset.eval_split}, in order, fixed batches "
        f"of {batch_size}",
        "devices": n_dev,
        "settings": json.loads(ev.to_json()),
        "heads": heads,
        "curves": curves,
        "flagged": {
            f"{name}/{kind}": entry["flagged"]
            for name, row in heads.items()
            for kind, entry in row.items()
            if isinstance(entry, dict) and entry.get("flagged")
        },
        "seconds": {k: round(v, 1) for k, v in runner.seconds.items()},
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    with open(os.path.join(workdir, REPORT), "w") as f:
        json.dump(report, f, indent=1)
    report["files"] = reports.write_all(report, workdir)
    log(f"[evaluate] report: {os.path.join(workdir, REPORT)}")
    return report


# ---- the command line ------------------------------------------------------------------------


def quiet_attack_logger() -> None:
    """Programs print the attacks' lines (log=print); their logger would print warnings twice."""
    import logging as std_logging

    std_logging.getLogger("hpm_jax.autoattack").setLevel(std_logging.ERROR)


def _define_flags():
    """Flags are defined only when this module is the program, so that the demo (which also
    imports hpm_jax.train and its --config / --workdir) can import `run`."""
    from absl import flags

    from hpm_jax import config_lib

    return (
        config_lib.define_config_flag(),
        flags.DEFINE_string("checkpoint", None, "Model directory (model.json) to evaluate."),
        flags.DEFINE_string("workdir", None, "report.json, summary.md, plots, state go here."),
        flags.DEFINE_string(
            "baseline_checkpoint", None, "Optional separate FC model, evaluated with AutoAttack."
        ),
    )


def console_main() -> None:
    """The `hpm-evaluate` console script (and `python -m hpm_jax.evaluate`)."""
    from absl import app, logging

    config_flag, checkpoint, workdir, baseline = _define_flags()
    from hpm_jax.flag_help import show_in_help

    show_in_help(__name__, config_flag)  # else --help lists neither --config nor, as a script, any

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        if config_flag.value is None or checkpoint.value is None or workdir.value is None:
            raise app.UsageError("--config, --checkpoint and --workdir are required.")
        logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO
        quiet_attack_logger()
        try:
            report = run(
                config_flag.value,
                checkpoint.value,
                workdir.value,
                baseline_checkpoint=baseline.value,
            )
        except (EvaluationSetupError, data.DatasetNotFoundError, FileNotFoundError) as error:
            print(f"hpm-evaluate: error: {error}", file=sys.stderr)
            sys.exit(1)
        from hpm_jax import reports

        print(reports.table(report))

    app.run(main)


if __name__ == "__main__":
    console_main()
