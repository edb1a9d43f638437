"""What every experiment config (configs/*.py) shares: the sections, their keys in order, and
every default, in one table (`DEFAULTS`); the configs state only their experiment's values.

    from hpm_jax import config_lib, config_sections as common

    def get_config(arg=None):
        variants = config_lib.parse_variants(arg, ("local",))
        config = common.training_config(
            dataset=dict(name="cifar10"),
            model=dict(name="wide_resnet", num_classes=10, kwargs=dict(depth=28, width=10)),
            init=dict(checkpoint=None),  # None: fine-tunes the model the user names
            ...
        )
        if "local" in variants:
            config.train.num_steps = 50  # a variant changes only what differs
        config.evaluation = common.evaluation(config.attack, num_examples=64)
        return config

`training_config` fills each section from `DEFAULTS`: a key the config leaves out takes its
default, a key marked `REQUIRED` must be given, and a key that is not in the table is a
TypeError naming the keys (but for the free dicts in `OPEN`: a model's constructor kwargs,
the HPM head's kwargs, the evaluation's attack options). Keys are inserted in the table's
order, however a file orders its values: the order `ConfigDict.to_json` writes, as run
records store a config. `evaluation` is the `evaluation` section alone: `hpm_jax.evaluate`
fills a config's missing knobs from it.

`init.checkpoint` is "" for a config that trains from scratch and None for one that
fine-tunes a pretrained model, which the user names with --config.init.checkpoint=DIR
(`hpm_jax.training.model_init` refuses to start without it); no config has a default path.
Config files are loaded by path (`config_lib.load_config`); one that builds on another
experiment loads that file (`config_lib.load_module`), as configs/cifar100.py does.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import ml_collections

ConfigDict = ml_collections.ConfigDict


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # a key each config must give: no value fits every experiment

# Every section, its keys in order and their defaults. A dict of defaults is a sub-section,
# filled the same way; an empty dict is free (any keys).
DEFAULTS: dict[str, dict[str, Any]] = {
    "dataset": {  # a TFDS dataset (hpm_jax.data)
        "name": REQUIRED,
        "train_split": "train",
        "eval_split": "test",  # held out from training
        "data_dir": "",  # "" = TFDS's default directory
        # "auto": the dataset's standard augmentation (CIFAR: pad 4 + random crop + flip;
        # ImageNet: inception crop + flip, eval resize 256 and center 224; Fashion-MNIST: none)
        "augment": "auto",
    },
    "model": {  # get_model(name, num_classes=, head=, **kwargs)
        "name": REQUIRED,
        "num_classes": REQUIRED,
        "head": "hpm",  # "fc", "hpm" or "l2"
        "kwargs": {},
        # Prototype heads (hpm_jax.models.HPMHead). pseudo_count: the weight of P_ema against
        # a class's batch mean, smaller for fewer examples of a class per batch.
        "head_kwargs": {"mixing": "count", "pseudo_count": 10.0, "ema_decay": 0.99},
    },
    "init": {  # where training starts
        # "" = from scratch; None = a pretrained model the user must name
        # (--config.init.checkpoint=DIR, a save_model / hpm_jax.convert directory).
        "checkpoint": REQUIRED,
        "prototype_examples": 0,  # training images for the initial HPM prototypes; 0 = all
    },
    "objective": {
        "name": REQUIRED,  # "pgd_at" or "trades"
        "trades_beta": 6.0,
        "hpm_weight": 1.0,  # HPM heads: CE (or TRADES) on the HPM logits ...
        "fc_weight": 1.0,  # ... plus this much of it on the FC logits
        "prototype_features": "auto",  # TRADES: clean, PGD-AT: adversarial
    },
    "attack": {  # the attack inside training (and the threat model `evaluation` takes)
        "method": "pgd",  # "pgd", or "apgd": APGD's schedule, momentum and best iterate
        "norm": "Linf",
        "eps": REQUIRED,
        "step_size": REQUIRED,  # PGD's; APGD sets its own (2 eps, halved at checkpoints)
        "num_steps": REQUIRED,  # PGD steps, or APGD iterations (one more gradient per run)
        "loss": "auto",  # CE for PGD-AT, KL for TRADES; APGD with PGD-AT may take "dlr"
        "restarts": 1,  # APGD runs per batch; the highest-loss iterate over them is kept
        "random_start": "auto",  # PGD: uniform for PGD-AT, 0.001 * normal for TRADES
        "bn_mode": "auto",  # train for PGD-AT, eval for TRADES (as their references)
        "mode": "hpm",  # HPM heads: the logits the attack differentiates
    },
    "train": {  # SGD with Nesterov momentum on a schedule; the global batch
        "batch_size": REQUIRED,
        "num_steps": REQUIRED,
        "learning_rate": REQUIRED,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "schedule": "cosine",  # or "piecewise", "constant"
        "warmup_steps": REQUIRED,
        "piecewise_boundaries": (0.5, 0.75),
        "piecewise_factor": 0.1,
        "ema_decay": 0.0,  # weight averaging (e.g. 0.999); 0 = off
        "log_every_steps": 100,
    },
    "eval": {  # training's held-out monitoring (clean and PGD accuracy)
        "batch_size": REQUIRED,
        "every_steps": REQUIRED,  # 0: only at the end
        "num_examples": REQUIRED,  # the first N of the eval split; 0 = all
        # The training attack's settings, overridden by these.
        "attack": {"num_steps": REQUIRED, "step_size": REQUIRED, "random_start": "uniform"},
    },
    "checkpoint": {  # Orbax training checkpoints, written asynchronously
        "every_steps": REQUIRED,
        "keep": 3,
        "async_save": True,
    },
    # hpm_jax.evaluate, the demo and the study; defaults: full AutoAttack budgets.
    "evaluation": {
        "num_examples": 1000,  # first N of the eval split; 0 = all
        "batch_size": 250,  # fixed batches in order: HPM's batch context, part of the result
        "norm": "Linf",  # `evaluation(attack)`: the training attack's
        # None: the training eps (config.attack.eps); a config with neither is an error.
        "eps": None,
        "seed": 0,
        # AutoAttack version for every row: "standard", "plus", "rand", or attack names
        # separated by commas ("apgd-ce,apgd-t,square"; those take the reference's defaults).
        "version": "standard",
        # {attack: {setting: value}} over the version's settings, e.g. reduced budgets:
        # {"square": {"n_queries": 1000}, "apgd-t": {"n_target_classes": 3}} (attack_budgets).
        # On the command line: --config.evaluation.attack_options.apgd-t.n_target_classes=3
        # (when the config lists the attack; keys split at dots only).
        "attack_options": {},
        "msa": "auto",  # "auto": when the model has an HPM head; "required"; "off"
        "surrogates": ("fc", "ema_l2", "soft", "ste"),  # MSA's surrogates (HPM head modes)
        "naive_autoattack": True,  # plain AutoAttack on HPM through its STE gradient
        "curve_eps": (),  # robust accuracy vs eps at these radii, e.g. (0.05, 0.1); () = none
        "curve_attacks": ("apgd-ce",),  # the attacks of each curve point (names)
        "run_checks": True,
        # How the attacks iterate (hpm_jax.attacks.driver): "auto" (one jitted call per
        # iteration for gradient attacks on CPU, one lax loop otherwise), "lax" or "host".
        "loop": "auto",
        # An .npz with `x` (N, H, W, C) float in [0, 1] and `y` (N,) int labels to evaluate
        # instead of the dataset's eval split ("" = the split).
        "data_file": "",
        # "source": the first num_examples in the data source's order; "robustbench":
        # RobustBench's subset and order (CIFAR's original test order, ImageNet's listed ids;
        # hpm_jax.zoo.evaluation).
        "order": "source",
        # Float32 matmul / convolution precision of every attack program: "high" (the
        # reference's: CPU float32, GPU TF32, TPU 3 bfloat16 passes), "highest" (float32
        # everywhere) or "default" (TPU: 1 bfloat16 pass). hpm_jax.attacks.precision.
        "precision": "high",
        # How a multi-process run (one process per host) shares out the batches, never the
        # result (hpm_jax.evaluation.processes): "process", each batch on one process's
        # devices; "global", each batch over every device of every process, all attacking
        # it together (a model or batch too big for one host's devices).
        "batch_sharding": "process",
    },
}
# Free dicts with defaults: keys beyond the table's are kept (e.g. any HPMHead field).
OPEN = frozenset({"model.head_kwargs"})
# The sections of a training config, in order; `evaluation` is added after the variants.
TRAINING_SECTIONS = tuple(name for name in DEFAULTS if name != "evaluation")


def section(name: str, values: Mapping[str, Any]) -> ConfigDict:
    """The section `name` of `DEFAULTS` with `values` over its defaults (see the module)."""
    return ConfigDict(_filled(DEFAULTS[name], values, name))


def _filled(defaults: Mapping[str, Any], values: Mapping[str, Any], where: str) -> dict:
    unknown = [key for key in values if key not in defaults]
    if unknown and where not in OPEN:
        raise TypeError(
            f"{where}: unknown key(s) {sorted(unknown)}; its keys are {list(defaults)} "
            "(hpm_jax.config_sections.DEFAULTS)."
        )
    out = {}
    for key, default in defaults.items():
        if key not in values:
            if default is REQUIRED:
                raise TypeError(f"{where}.{key} is required: the config must give it.")
            out[key] = copy.deepcopy(default)
        elif isinstance(default, dict) and default:  # a sub-section
            out[key] = _filled(default, values[key], f"{where}.{key}")
        else:
            out[key] = copy.deepcopy(values[key])
    out.update({key: copy.deepcopy(values[key]) for key in unknown})
    return out


def training_config(*, seed: int = 0, **sections: Mapping[str, Any]) -> ConfigDict:
    """A config with `seed` and every section of `TRAINING_SECTIONS` (each required), in that
    order, each `section(name, values)`; the `evaluation` section (`evaluation`) is added by
    the caller after its variants."""
    missing = [name for name in TRAINING_SECTIONS if name not in sections]
    extra = sorted(set(sections) - set(TRAINING_SECTIONS))
    if missing or extra:
        raise TypeError(f"training_config: missing sections {missing}, unknown {extra}.")
    config = ConfigDict()
    config.seed = seed
    for name in TRAINING_SECTIONS:
        config[name] = section(name, sections[name])
    return config


def evaluation(attack: ConfigDict | None = None, **changes: Any) -> ConfigDict:
    """The `evaluation` section: its defaults, the threat model (norm, eps) of the training
    attack `attack` when given, then `changes`. `hpm_jax.evaluate.default_evaluation_config`
    is this."""
    threat = {}
    if attack is not None:
        threat = {"norm": str(attack.get("norm", "Linf")), "eps": attack.get("eps")}
    return section("evaluation", {**threat, **changes})


def attack_budgets(
    *,
    apgd_iter: int = 100,
    target_classes: int = 9,
    fab_iter: int = 100,
    square_queries: int = 5000,
) -> dict[str, dict[str, int]]:
    """`evaluation.attack_options` for the standard version (APGD-CE, APGD-T, FAB-T, Square),
    spelled out so that each is overridable, e.g.
    --config.evaluation.attack_options.apgd-t.n_target_classes=3; the defaults are its full
    budgets."""
    return {
        "apgd-ce": {"n_iter": apgd_iter},
        "apgd-t": {"n_iter": apgd_iter, "n_target_classes": target_classes},
        "fab-t": {"n_iter": fab_iter, "n_target_classes": target_classes},
        "square": {"n_queries": square_queries},
    }


def demo_budgets() -> dict[str, dict[str, int]]:
    """The demo's reduced budgets (~2.5x below what fits 15 minutes on a 2-core CPU; measured:
    APGD-CE at 50 iterations ~47 s and APGD-T with 2 targets ~86 s on 256 points of one head,
    so MSA's 4 surrogates at those budgets would alone take ~15 minutes)."""
    return attack_budgets(apgd_iter=20, target_classes=1, fab_iter=10, square_queries=200)
