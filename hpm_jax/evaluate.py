"""Evaluate a checkpoint: clean accuracy, AutoAttack on FC and l2-EMA, MSA on HPM; resumable.

    report = run(load_config("configs/fashion_mnist.py"), "/tmp/fmnist_hpm/model", "/tmp/ev")
    report["heads"]["hpm"]["msa"]["robust_accuracy"]
    python -m hpm_jax.evaluate --config=configs/fashion_mnist.py \
        --checkpoint=/tmp/fmnist_hpm/model --workdir=/tmp/fmnist_eval    # hpm_jax.cli.evaluate

The checkpoint is a `model/` directory (`hpm_jax.train`, `hpm_jax.convert`). Rows of the
result, one per head (DESIGN.md section 2):

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
those defaults) and are written into the report. WORKDIR receives `report.json`,
`summary.md`, `robustness.png` (and `eps_curves.png` with `evaluation.curve_eps`),
`adversarial/*.npz` (x_adv and per-sample robust flags) and `state/` (the attacks' resumable
state files: a killed evaluation started again with the same arguments continues where it
stopped and ends with the same report).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hpm_jax import data, evaluation_log, models, provenance
from hpm_jax.attacks import AutoAttack, contract, mixed_surrogate_attack, versions
from hpm_jax.attacks.resume import data_hash
from hpm_jax.data import arrays
from hpm_jax.model_export import MODEL_SPEC, load_model
from hpm_jax.models import FCHead, HPMHead, L2Head

REPORT, SUMMARY, STATE_DIR, ADV_DIR = "report.json", "summary.md", "state", "adversarial"
FORMAT = "hpm_jax.evaluate/1"


class EvaluationSetupError(ValueError):
    """The checkpoint, data or evaluation config cannot give the evaluation asked for."""


NORMS = ("Linf", "L2", "L1")


def default_evaluation_config(config: ml_collections.ConfigDict | None = None):
    """The `config.evaluation` knobs and their defaults (full AutoAttack budgets). The threat
    model (norm, eps) defaults to the training attack's, `config.attack`, when given."""
    attack = config.get("attack") if config is not None else None
    c = ml_collections.ConfigDict()
    c.num_examples = 1000  # first N of the eval split; 0 = all
    c.batch_size = 250  # fixed batches in order: HPM's batch context, part of the result
    c.norm = str(attack.get("norm", "Linf")) if attack is not None else "Linf"
    # None: the training eps (config.attack.eps); a config with neither is an error.
    c.eps = attack.get("eps") if attack is not None else None
    c.seed = 0
    # AutoAttack version for every row: "standard", "plus", "rand", or attack names separated
    # by commas ("apgd-ce,apgd-t,square"; those take the reference's constructor defaults).
    c.version = "standard"
    # {attack: {setting: value}} over the version's settings, e.g. reduced budgets:
    # {"square": {"n_queries": 1000}, "apgd-t": {"n_target_classes": 3}}. On the command
    # line: --config.evaluation.attack_options.apgd-t.n_target_classes=3 (when the config
    # file lists the attack; the hyphen is fine, keys split at dots only).
    c.attack_options = ml_collections.ConfigDict()
    c.msa = "auto"  # "auto": when the model has an HPM head; "required"; "off"
    c.surrogates = ("fc", "ema_l2", "soft", "ste")  # MSA's surrogates (HPM head modes)
    c.naive_autoattack = True  # plain AutoAttack on HPM through its STE gradient
    c.curve_eps = ()  # robust accuracy vs eps at these radii; () = no curves
    c.curve_attacks = ("apgd-ce",)  # the attacks of each curve point (names)
    c.run_checks = True
    # An .npz with `x` (N, H, W, C) float in [0, 1] and `y` (N,) int labels to evaluate
    # instead of the dataset's eval split ("" = the split).
    c.data_file = ""
    # "source": the first num_examples in the data source's order; "robustbench": RobustBench's
    # subset and order (CIFAR's original test order, ImageNet's listed ids; hpm_jax.zoo.evaluation).
    c.order = "source"
    return c


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
    if int(ev.batch_size) < 1 or int(ev.num_examples) < 0:
        raise EvaluationSetupError(
            f"evaluation.batch_size={ev.batch_size} must be >= 1 and evaluation.num_examples="
            f"{ev.num_examples} >= 0 (0: the whole split)."
        )
    return ev


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
    model, variables = load_model(directory)  # on one device: the attacks place them
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


def load_eval_data(config: ml_collections.ConfigDict, num_examples: int, data_file: str = "",
                   order: str = "source"):  # fmt: skip
    """(x float32 NHWC in [0, 1], y int32): the first `num_examples` of the eval split, or of
    the arrays in `data_file` (an .npz of x and y, checked by `data.arrays`). `order`
    "robustbench" takes RobustBench's subset and order of the split (`hpm_jax.zoo.evaluation`)."""
    x, y, _ = load_eval_subset(config, num_examples, data_file, order)
    return x, y


def load_eval_subset(config: ml_collections.ConfigDict, num_examples: int, data_file: str = "",
                     order: str = "source"):  # fmt: skip
    """`load_eval_data`'s arrays and a sentence naming the images and their order."""
    from hpm_jax.zoo import evaluation as rb_eval

    if order not in rb_eval.ORDERS:
        raise EvaluationSetupError(f"evaluation.order={order!r} is not one of {rb_eval.ORDERS}.")
    if data_file:
        try:
            x, y = arrays.load_npz(os.path.expanduser(data_file))
        except arrays.ArrayDataError as e:
            raise EvaluationSetupError(f"evaluation.data_file: {e}") from None
        n = len(x) if not num_examples else int(num_examples)
        if n > len(x):
            raise EvaluationSetupError(
                f"evaluation.num_examples={n} but {data_file} has {len(x)} images."
            )
        return x[:n], y[:n], f"the first {n} of {data_file}, in its order"
    ds = config.dataset
    source = data.get_source(ds.name, ds.eval_split, data_dir=ds.data_dir or None)
    n = len(source) if not num_examples else int(num_examples)
    if n > len(source):
        raise EvaluationSetupError(
            f"evaluation.num_examples={n} but {ds.name}:{ds.eval_split} has {len(source)}."
        )
    preprocess = data.eval_preprocessing("auto", getattr(source, "name", ds.name))
    indices, described = np.arange(n), f"the first {n} of {ds.eval_split}, in order"
    if order == "robustbench":
        try:
            indices, described = rb_eval.robustbench_indices(source, ds.name, n)
        except rb_eval.SubsetError as e:
            raise EvaluationSetupError(f"evaluation.order=robustbench: {e}") from None
        described = f"{described} ({ds.name}:{ds.eval_split})"
    records = [source[int(i)] for i in indices]
    x = np.stack([preprocess(np.asarray(r["image"])) for r in records])
    if x.ndim == 3:
        x = x[..., None]
    y = np.asarray([int(r["label"]) for r in records], np.int32)
    return (x.astype(np.float32) / 255.0), y, described


def check_model_takes(model: Any, variables: Any, x: np.ndarray, y: np.ndarray, where: str):
    """The images and labels fit the model: NHWC in [0, 1], the model's input shape, labels
    below its number of classes (else EvaluationSetupError naming the fix)."""
    try:
        arrays.check_images(x, y)  # layout and range first: they explain a shape error
    except arrays.ArrayDataError as e:
        raise EvaluationSetupError(f"{e} (model: {where})") from None
    try:
        out = jax.eval_shape(lambda v, b: model.apply(v, b), variables, x[:1])
    except Exception as e:  # Flax raises many kinds of errors for a wrong input shape
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EvaluationSetupError(
            f"the model in {where} cannot take images of shape {x.shape[1:]} ({first[:200]}); "
            "evaluate it on the dataset it was trained on (config.dataset)."
        ) from None
    try:
        arrays.check_images(x, y, num_classes=int(out.shape[-1]))
    except arrays.ArrayDataError as e:
        raise EvaluationSetupError(f"{e} (model: {where})") from None


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
        with self.log.section(name) as on_progress:
            report = self._autoattack(fn, version, eps, name, on_progress)
        self.seconds[name] = time.perf_counter() - t0
        self._save(name, report.x_adv, report.robust)
        return _autoattack_entry(report)

    def _autoattack(self, fn, version, eps, name, on_progress):
        return AutoAttack(
            fn,
            norm=self.ev.norm,
            eps=self.ev.eps if eps is None else eps,
            version=version,
            seed=int(self.ev.seed),
            attack_options=self._options(version),
            run_checks=bool(self.ev.run_checks),
            log=self.log,
            on_progress=on_progress,
        ).run(self.x, self.y, batch_size=int(self.ev.batch_size), state_path=self._state(name))

    def msa(self, name: str, target, surrogates, *, version=None, eps=None) -> dict[str, Any]:
        version = attack_list(self.ev.version if version is None else version)
        self.log(f"[evaluate] MSA on {name} through {', '.join(surrogates)}")
        t0 = time.perf_counter()
        with self.log.section(name, line_progress=True):  # MSA takes no progress hook
            report = self._msa(target, surrogates, version, eps, name)
        self.seconds[name] = time.perf_counter() - t0
        self._save(name, report.x_adv, report.robust)
        return _msa_entry(report)

    def _msa(self, target, surrogates, version, eps, name):
        return mixed_surrogate_attack(
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


def attack_list(version: Any) -> str | list[str]:
    """A version name as it is; "a,b" or a sequence of attack names as a list of names."""
    if isinstance(version, str):
        if version in versions.VERSIONS:
            return version
        return [v.strip() for v in version.split(",") if v.strip()]
    return [str(v) for v in version]


IDENTITY = "evaluation.json"  # in STATE_DIR: what the state there belongs to
MODEL_INFO = "model_info.json"  # RobustBench's fields, for --robustbench models
OUTPUTS = (REPORT, SUMMARY, STATE_DIR, ADV_DIR, "robustness.png", "eps_curves.png", MODEL_INFO,
           evaluation_log.LOG, evaluation_log.TENSORBOARD)  # fmt: skip


def _load_baseline(checkpoint: str, x: np.ndarray, y: np.ndarray):
    b_model, b_vars, b_dir = _load(checkpoint, "baseline_checkpoint")
    if "fc" not in head_modes(b_model):
        raise EvaluationSetupError(
            f"--baseline_checkpoint={b_dir} has a {type(b_model.head).__name__}; the "
            "baseline is an FC model (e.g. the adversarially trained model HPM started from)."
        )
    check_model_takes(b_model, b_vars, x, y, b_dir)
    return b_model, b_vars, b_dir


def _model_identity(directory: str, variables: Any, spec: dict | None = None) -> dict[str, Any]:
    """model.json (or `spec`) and a sha256 of the weights: a checkpoint rewritten in place is
    another."""
    import hashlib

    if spec is None:
        with open(os.path.join(directory, MODEL_SPEC)) as f:
            spec = json.load(f)
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(variables):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return {"spec": spec, "variables_sha256": h.hexdigest()}


def _load_robustbench(name: str, dataset: str = "cifar10", threat_model: str = "Linf",
                      model_dir: str = "./models", download: bool = True):  # fmt: skip
    """(model, variables, label, table entry, model spec) of a RobustBench model by name."""
    from hpm_jax import zoo

    try:
        info = zoo.entry(name, dataset, threat_model)
    except ValueError as e:  # an unknown name, with the close ones
        raise EvaluationSetupError(f"--robustbench: {e}") from None
    model, variables = zoo.load_robustbench(
        name,
        dataset=dataset,
        threat_model=threat_model,
        model_dir=model_dir,
        download_missing=download,
    )
    path = zoo.checkpoint_path(info, model_dir)
    spec = {"robustbench": info.name, "dataset": info.dataset, "threat_model": info.threat_model,
            "arch": info.arch, "kwargs": zoo.robustbench.model_kwargs(info),
            "file": path}  # fmt: skip
    label = f"robustbench:{info.dataset}/{info.threat_model}/{info.name}"
    return model, variables, label, info, spec


def prepare_workdir(workdir: str, identity: dict[str, Any], *, overwrite: bool = False) -> None:
    """Make `workdir` ready for the evaluation `identity` describes. Its state and report are
    resumed when they belong to the same evaluation; another evaluation's are an
    EvaluationSetupError (nothing is touched) or, with `overwrite`, deleted."""
    import shutil

    path = os.path.join(workdir, STATE_DIR, IDENTITY)
    current = json.loads(json.dumps(identity))
    stored = None
    if os.path.isfile(path):
        with open(path) as f:
            try:
                stored = json.load(f)
            except json.JSONDecodeError:
                stored = {}
    if stored is not None and stored != current and not overwrite:
        changed = _differences(stored, current)
        raise EvaluationSetupError(
            f"{workdir} holds an evaluation with other settings ({'; '.join(changed[:4])}"
            f"{'; ...' if len(changed) > 4 else ''}); resuming it would mix the two. Pass "
            "--overwrite (run(..., overwrite=True)) to discard it, or another --workdir."
        )
    if overwrite:
        for name in OUTPUTS:
            target = os.path.join(workdir, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.remove(target)
        stored = None
    if stored is None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(current, f, indent=1)
        os.replace(tmp, path)


def _differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(stored) | set(current), key=str):
            out += _differences(stored.get(key), current.get(key), f"{prefix}{key}.")
        return out
    if stored == current:
        return []
    return [f"{prefix[:-1] or 'identity'}: {stored!r} -> {current!r}"]


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
    `progress`: bars / lines / off / auto (`hpm_jax.progress`; None: auto when `log` is
    given, else off). Every logged line also goes to `workdir/log.txt`, and the results and
    settings to TensorBoard event files in `workdir/tensorboard`.

    Everything asked for is checked before the first write. A workdir holding an evaluation
    of another checkpoint, data or settings is an EvaluationSetupError naming the changes,
    unless `overwrite`, which discards that evaluation's state and report first."""
    ev = evaluation_config(config)
    workdir = os.path.abspath(workdir)
    rb_info = spec = None
    if robustbench is not None:
        model, variables, directory, rb_info, spec = _load_robustbench(**robustbench)
    else:
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
    x, y, order = load_eval_subset(config, int(ev.num_examples), str(ev.data_file), str(ev.order))
    check_model_takes(model, variables, x, y, directory)
    baseline = _load_baseline(baseline_checkpoint, x, y) if baseline_checkpoint else None
    identity = {
        "checkpoint": directory,
        "model": _model_identity(directory, variables, spec),
        "baseline_checkpoint": baseline[2] if baseline else None,
        "data": data_hash(x, y),
        "settings": json.loads(ev.to_json()),
    }
    prepare_workdir(workdir, identity, overwrite=overwrite)  # the first write
    progress = progress or ("auto" if log is not None else "off")
    logger = evaluation_log.EvaluationLog(workdir, console=log, progress=progress)
    try:
        return _evaluate(config, ev, workdir, model, variables, directory, modes, want_msa,
                         x, y, order, baseline, rb_info, logger)  # fmt: skip
    finally:
        logger.close()


def _evaluate(config, ev, workdir, model, variables, directory, modes, want_msa, x, y, order,
              baseline, rb_info, log) -> dict[str, Any]:  # fmt: skip
    from hpm_jax import reports  # matplotlib is imported only when writing

    n_dev = jax.device_count()
    baseline_checkpoint = baseline[2] if baseline else None
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
        b_model, b_vars, b_dir = baseline  # checked before anything was written
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
        "order": f"{order}, fixed batches of {batch_size}",
        "devices": n_dev,
        "threat_model": {"norm": ev.norm, "eps": float(ev.eps)},
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
        "provenance": provenance.record(x, y, variables),
    }
    if rb_info is not None:
        from hpm_jax.zoo import evaluation as rb_eval

        report["robustbench"] = rb_eval.model_info(rb_info, report)
        with open(os.path.join(workdir, MODEL_INFO), "w") as f:
            json.dump(report["robustbench"], f, indent=2)
    with open(os.path.join(workdir, REPORT), "w") as f:
        json.dump(report, f, indent=1)
    report["files"] = reports.write_all(report, workdir)
    if evaluation_log.write_tensorboard(report, workdir) is None:
        log("[evaluate] tensorboardX is not installed: no TensorBoard record (the 'train' extra)")
    log(f"[evaluate] report: {os.path.join(workdir, REPORT)}")
    return report


if __name__ == "__main__":  # the program lives in hpm_jax.cli.evaluate (flags, errors)
    from hpm_jax.cli.evaluate import console_main

    console_main()
