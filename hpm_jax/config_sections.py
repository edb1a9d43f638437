"""The sections the experiment configs (configs/*.py) are built from, with the values they share.

    from hpm_jax import config_lib, config_sections as sections

    def get_config(arg=None):
        variants = config_lib.parse_variants(arg, ("fc", "local"))
        config = sections.training_config(
            dataset=sections.dataset("cifar10"),
            model=sections.model("wide_resnet", num_classes=10, kwargs={"depth": 28, "width": 10}),
            init=sections.init(None),  # None: fine-tunes the model the user names
            ...
        )
        if "local" in variants:
            config.train.num_steps = 50  # a variant changes only what differs
        config.evaluation = sections.evaluation(config.attack, num_examples=64)
        return config

Each function returns one section as a `ConfigDict` of plain values: the arguments are what
the configs choose differently, the rest is fixed here, so a change here shows in every
config. Config files are loaded by path (`config_lib.load_config`), not imported as a
package, so a definition that more than one file builds on lives here too: the CIFAR
configs (`cifar_config`: configs/cifar10.py and cifar100.py call it with their dataset's
values) and the Fashion-MNIST one (`fashion_mnist_config`: configs/fashion_mnist.py, and
configs/fashion_mnist_study.py, which adds a study section to its `hpm` variant).

`init.checkpoint` is "" for a config that trains from scratch and None for one that
fine-tunes a pretrained model, which the user names with --config.init.checkpoint=DIR
(`hpm_jax.training.model_init` refuses to start without it); no config has a default path.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import ml_collections

ConfigDict = ml_collections.ConfigDict

# The sections of a training config, in the order the files list them.
TRAINING_SECTIONS = (
    "dataset",
    "model",
    "init",
    "objective",
    "attack",
    "train",
    "eval",
    "checkpoint",
)


def training_config(*, seed: int = 0, **sections: ConfigDict) -> ConfigDict:
    """A config with `seed` and every section of `TRAINING_SECTIONS` (each required), in order;
    the `evaluation` section (`evaluation`) is added by the caller after its variants."""
    missing = [name for name in TRAINING_SECTIONS if name not in sections]
    extra = sorted(set(sections) - set(TRAINING_SECTIONS))
    if missing or extra:
        raise TypeError(f"training_config: missing sections {missing}, unknown {extra}.")
    config = ConfigDict()
    config.seed = seed
    for name in TRAINING_SECTIONS:
        config[name] = sections[name]
    return config


def dataset(name: str, *, eval_split: str = "test") -> ConfigDict:
    """A TFDS dataset (`hpm_jax.data`): train on "train", evaluate on `eval_split`."""
    return ConfigDict(
        {
            "name": name,
            "train_split": "train",
            "eval_split": eval_split,  # held out from training
            "data_dir": "",  # "" = TFDS's default directory
            # "auto": the dataset's standard augmentation (CIFAR: pad 4 + random crop + flip;
            # ImageNet: inception crop + flip, eval resize 256 and center 224; Fashion-MNIST: none)
            "augment": "auto",
        }
    )


def model(
    name: str,
    *,
    num_classes: int,
    kwargs: Mapping[str, Any],
    head: str = "hpm",
    pseudo_count: float = 10.0,
) -> ConfigDict:
    """`get_model(name, num_classes=, head=, **kwargs)`; `head` is "fc", "hpm" or "l2".

    `head_kwargs` go to prototype heads (see hpm_jax.models.HPMHead); `pseudo_count` is the
    weight of P_ema against a class's batch mean, smaller for fewer examples per class.
    """
    return ConfigDict(
        {
            "name": name,
            "num_classes": num_classes,
            "head": head,
            "kwargs": dict(kwargs),
            "head_kwargs": {"mixing": "count", "pseudo_count": pseudo_count, "ema_decay": 0.99},
        }
    )


def init(checkpoint: str | None, *, prototype_examples: int = 0) -> ConfigDict:
    """Where training starts. `checkpoint`: "" = from scratch; None = a pretrained model the
    user must name (--config.init.checkpoint=DIR, a save_model / hpm_jax.convert directory).
    `prototype_examples`: training images for the initial HPM prototypes; 0 = all."""
    return ConfigDict({"checkpoint": checkpoint, "prototype_examples": prototype_examples})


def objective(name: str) -> ConfigDict:
    """The training objective: "pgd_at" or "trades"."""
    return ConfigDict(
        {
            "name": name,
            "trades_beta": 6.0,
            "hpm_weight": 1.0,  # HPM heads: CE (or TRADES) on the HPM logits ...
            "fc_weight": 1.0,  # ... plus this much of it on the FC logits
            "prototype_features": "auto",  # TRADES: clean, PGD-AT: adversarial
        }
    )


def attack(*, eps: float, step_size: float, num_steps: int, norm: str = "Linf") -> ConfigDict:
    """The PGD attack inside training (and the threat model `evaluation` defaults to)."""
    return ConfigDict(
        {
            "norm": norm,
            "eps": eps,
            "step_size": step_size,
            "num_steps": num_steps,
            "random_start": "auto",  # uniform for PGD-AT, 0.001 * normal for TRADES
            "bn_mode": "auto",  # train for PGD-AT, eval for TRADES (as their references)
            "mode": "hpm",  # HPM heads: the logits the attack differentiates
        }
    )


def train(
    *,
    batch_size: int,
    num_steps: int,
    learning_rate: float,
    warmup_steps: int,
    weight_decay: float = 5e-4,
    ema_decay: float = 0.0,
    log_every_steps: int = 100,
) -> ConfigDict:
    """SGD with Nesterov momentum 0.9 on a cosine schedule (the global batch)."""
    return ConfigDict(
        {
            "batch_size": batch_size,
            "num_steps": num_steps,
            "learning_rate": learning_rate,
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": weight_decay,
            "schedule": "cosine",  # or "piecewise", "constant"
            "warmup_steps": warmup_steps,
            "piecewise_boundaries": (0.5, 0.75),
            "piecewise_factor": 0.1,
            "ema_decay": ema_decay,  # weight averaging (e.g. 0.999); 0 = off
            "log_every_steps": log_every_steps,
        }
    )


def eval_(
    *,
    batch_size: int,
    every_steps: int,
    num_examples: int,
    attack_steps: int,
    attack_step_size: float,
) -> ConfigDict:
    """The `eval` section: training's held-out monitoring (clean and PGD accuracy).

    `every_steps` 0: only at the end; `num_examples`: the first N of the eval split, 0 = all.
    The PGD attack is the training attack's settings, overridden by `eval.attack`.
    """
    return ConfigDict(
        {
            "batch_size": batch_size,
            "every_steps": every_steps,
            "num_examples": num_examples,
            "attack": {
                "num_steps": attack_steps,
                "step_size": attack_step_size,
                "random_start": "uniform",
            },
        }
    )


def checkpoint(*, every_steps: int, keep: int = 3) -> ConfigDict:
    """Orbax training checkpoints: every `every_steps`, the last `keep`, written asynchronously."""
    return ConfigDict({"every_steps": every_steps, "keep": keep, "async_save": True})


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


def evaluation(attack: ConfigDict | None = None, **changes: Any) -> ConfigDict:
    """The `evaluation` section (`hpm_jax.evaluate`, the demo and the study): every knob with
    its default (full AutoAttack budgets), then `changes` (a key that is not a knob is a
    TypeError). The threat model (norm, eps) is the training attack's, `attack`, when given.
    `hpm_jax.evaluate.default_evaluation_config` is this."""
    values: dict[str, Any] = {
        "num_examples": 1000,  # first N of the eval split; 0 = all
        "batch_size": 250,  # fixed batches in order: HPM's batch context, part of the result
        "norm": str(attack.get("norm", "Linf")) if attack is not None else "Linf",
        # None: the training eps (config.attack.eps); a config with neither is an error.
        "eps": attack.get("eps") if attack is not None else None,
        "seed": 0,
        # AutoAttack version for every row: "standard", "plus", "rand", or attack names
        # separated by commas ("apgd-ce,apgd-t,square"; those take the reference's defaults).
        "version": "standard",
        # {attack: {setting: value}} over the version's settings, e.g. reduced budgets:
        # {"square": {"n_queries": 1000}, "apgd-t": {"n_target_classes": 3}} (attack_budgets).
        # On the command line: --config.evaluation.attack_options.apgd-t.n_target_classes=3
        # (when the config lists the attack; the hyphen is fine, keys split at dots only).
        "attack_options": {},
        "msa": "auto",  # "auto": when the model has an HPM head; "required"; "off"
        "surrogates": ("fc", "ema_l2", "soft", "ste"),  # MSA's surrogates (HPM head modes)
        "naive_autoattack": True,  # plain AutoAttack on HPM through its STE gradient
        "curve_eps": (),  # robust accuracy vs eps at these radii, e.g. (0.05, 0.1); () = none
        "curve_attacks": ("apgd-ce",),  # the attacks of each curve point (names)
        "run_checks": True,
        # An .npz with `x` (N, H, W, C) float in [0, 1] and `y` (N,) int labels to evaluate
        # instead of the dataset's eval split ("" = the split).
        "data_file": "",
        # "source": the first num_examples in the data source's order; "robustbench":
        # RobustBench's subset and order (CIFAR's original test order, ImageNet's listed ids;
        # hpm_jax.zoo.evaluation).
        "order": "source",
    }
    unknown = sorted(set(changes) - set(values))
    if unknown:
        raise TypeError(f"evaluation: unknown knob(s) {unknown}; the knobs are {sorted(values)}.")
    return ConfigDict({**values, **changes})


# ---- configs that more than one file builds on -----------------------------------------------

FASHION_MNIST_VARIANTS = ("local", "hpm")


def fashion_mnist_config(variants: Collection[str]) -> ConfigDict:
    """configs/fashion_mnist.py: the small CNN, PGD-AT from scratch on a laptop CPU.

    `hpm`: a short HPM fine-tuning of an adversarially trained FC model (init.checkpoint);
    `local`: fewer steps. The evaluation section has the demo's reduced budgets.
    """
    config = training_config(
        dataset=dataset("fashion_mnist"),
        model=model(
            "small_cnn",
            num_classes=10,
            head="fc",
            kwargs={
                "in_channels": 1,
                "image_size": 28,
                "channels": (16, 32, 64),
                "num_features": 256,
            },
        ),
        init=init(""),  # from scratch
        objective=objective("pgd_at"),
        attack=attack(eps=0.1, step_size=0.04, num_steps=3),
        train=train(batch_size=128, num_steps=1000, learning_rate=0.05, warmup_steps=50),
        eval=eval_(
            batch_size=1000, every_steps=0, num_examples=0, attack_steps=10, attack_step_size=0.025
        ),
        checkpoint=checkpoint(every_steps=200, keep=2),
    )
    if "hpm" in variants:  # a short fine-tuning of an adversarially trained FC model
        config.model.head = "hpm"
        config.init.checkpoint = None  # the FC model: --config.init.checkpoint=DIR
        config.init.prototype_examples = 10000
        config.train.num_steps = 200
        config.train.learning_rate = 0.01
        config.train.warmup_steps = 0
        config.checkpoint.every_steps = 100
    if "local" in variants:
        config.train.num_steps = config.train.num_steps // 5
        config.train.log_every_steps = 20
        config.train.warmup_steps = min(config.train.warmup_steps, 10)
        config.eval.num_examples = 2000
        config.checkpoint.every_steps = 50
    # Reduced budgets, chosen so that the whole demo fits in 15 minutes on a 2-core CPU; the
    # report and the demo's table state them. Full AutoAttack: attack_options = {}.
    config.evaluation = evaluation(
        config.attack,
        num_examples=256,  # the first N test images, in order
        batch_size=128,  # HPM's batch context (as in training): part of the result
        attack_options=demo_budgets(),
    )
    return config


CIFAR_VARIANTS = ("wrn", "dm_wrn", "fc", "l2", "local")


def cifar_config(
    variants: Collection[str],
    *,
    name: str,
    num_classes: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    pseudo_count: float,
) -> ConfigDict:
    """configs/cifar10.py and cifar100.py: TRADES fine-tuning of a RobustBench-style WRN-28-10
    (Linf 8/255) with an HPM head, for the TFDS dataset `name`.

    `mean`, `std`: the dataset's normalisation, inside the DeepMind WRN (`dm_wrn`; RobustBench's
    WideResNet has none); `pseudo_count`: the HPM head's. Variants: see configs/cifar10.py.
    """
    dm = "dm_wrn" in variants
    if dm:  # DeepMind's WRN with SiLU, e.g. Gowal2020Uncovering_28_10_extra
        arch, kwargs = "dm_wide_resnet", {"depth": 28, "width": 10, "mean": mean, "std": std}
    else:  # RobustBench WideResNet (`wrn`, the default): no normalisation inside
        arch, kwargs = "wide_resnet", {"depth": 28, "width": 10}
    config = training_config(
        dataset=dataset(name),
        model=model(arch, num_classes=num_classes, kwargs=kwargs, pseudo_count=pseudo_count),
        init=init(None),  # the converted RobustBench model: --config.init.checkpoint=DIR
        objective=objective("trades"),
        attack=attack(eps=8 / 255, step_size=2 / 255, num_steps=10),
        train=train(
            batch_size=128,
            num_steps=3900,  # 10 epochs of 50000
            learning_rate=0.01,
            warmup_steps=0,
            ema_decay=0.999,
            log_every_steps=50,
        ),
        # Monitoring; AutoAttack / MSA give the final numbers.
        eval=eval_(
            batch_size=500,
            every_steps=1000,
            num_examples=1000,
            attack_steps=20,
            attack_step_size=2 / 255,
        ),
        checkpoint=checkpoint(every_steps=500, keep=3),
    )
    if "fc" in variants:
        config.model.head = "fc"
    if "l2" in variants:  # RobustBench's L2 threat model
        config.attack.norm, config.attack.eps, config.attack.step_size = "L2", 0.5, 0.125
        config.eval.attack.step_size = 0.125
    local = "local" in variants
    if local:  # a WRN-10-1 from scratch for a few steps
        config.model.kwargs.depth, config.model.kwargs.width = 10, 1
        config.init.checkpoint = ""
        config.init.prototype_examples = 1000
        config.attack.num_steps = 2
        config.attack.step_size = 4 / 255
        config.train.batch_size = 32
        config.train.num_steps = 50
        config.train.learning_rate = 0.05
        config.train.log_every_steps = 10
        config.eval.every_steps = 0
        config.eval.num_examples = 200
        config.eval.batch_size = 100
        config.eval.attack.num_steps = 5
        config.checkpoint.every_steps = 25
    # AutoAttack on the FC and l2-EMA heads, MSA on HPM, at the training threat model (8/255
    # Linf or 0.5 L2, RobustBench's), full budgets on the first 1000 test images (`local`:
    # the demo's budgets). batch_size: HPM's batch context (part of the result), a multiple
    # of 1, 2, 4 and 8 devices.
    config.evaluation = evaluation(
        config.attack,
        num_examples=64 if local else 1000,
        batch_size=32 if local else 200,
        attack_options=demo_budgets() if local else attack_budgets(),
    )
    return config
