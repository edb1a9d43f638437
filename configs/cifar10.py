"""CIFAR-10: HPM fine-tuning of RobustBench-style models (Linf eps = 8/255, or L2 0.5), TRADES.

    python -m hpm_jax.convert --arch wide_resnet --checkpoint Carmon2019Unlabeled.pt \
        --arch_kwargs depth=28,width=10 --out /tmp/carmon2019
    python -m hpm_jax.train --config=configs/cifar10.py --workdir=/tmp/c10_wrn_hpm \
        --config.init.checkpoint=/tmp/carmon2019
    python -m hpm_jax.train --config=configs/cifar10.py:dm_wrn --workdir=/tmp/c10_dm_hpm \
        --config.init.checkpoint=/tmp/gowal2020          # a converted DMWideResNet checkpoint
    python -m hpm_jax.evaluate --config=configs/cifar10.py --checkpoint=/tmp/c10_wrn_hpm/model \
        --workdir=/tmp/c10_eval        # AutoAttack / MSA at the training threat model
    launch/tpu.sh --tpu=hpm-v4 --zone=us-central2-b --accelerator=v4-8 --bucket=my-bucket \
        --config=configs/cifar10.py --workdir=runs/c10_wrn_hpm \
        -- --config.init.checkpoint=/mnt/my-bucket/carmon2019

Variants (comma-separated): `wrn` (default: `wide_resnet`, TRADES-style WRN-28-10, e.g.
Carmon2019Unlabeled; depth 34 via --config.model.kwargs.depth=34), `dm_wrn`
(`dm_wide_resnet`, DeepMind's WRN-28-10 with SiLU, e.g. Gowal2020Uncovering_28_10_extra),
`fc` (fine-tune the FC head instead: the baseline), `l2` (the L2 threat model, eps = 0.5,
for RobustBench's L2 models), `local` (a WRN-10-1 trained from scratch for a few steps, to
try the pipeline on a laptop).

The `evaluation` section (`hpm_jax.evaluate`) attacks at the training threat model
(`attack.norm`, `attack.eps`: RobustBench's 8/255 Linf or 0.5 L2) with full AutoAttack
budgets on the first 1000 test images in batches of 200; `--config.evaluation.eps=...`
changes it.

The backbone, FC weights and batch-norm statistics come from `init.checkpoint`; HPM
prototypes start at the class means of the training features. Data: TFDS `cifar10`
prepared as array_record (`tfds build cifar10 --file_format=array_record`).
"""

import ml_collections

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
VARIANTS = ("wrn", "dm_wrn", "fc", "l2", "local")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = set(arg.split(",")) if arg else set()
    if variants - set(VARIANTS):
        raise ValueError(f"Unknown variant(s) {sorted(variants - set(VARIANTS))}; use {VARIANTS}.")

    config = ml_collections.ConfigDict()
    config.seed = 0

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "cifar10"
    config.dataset.train_split = "train"
    config.dataset.eval_split = "test"
    config.dataset.data_dir = ""
    config.dataset.augment = "auto"  # pad 4 + random crop + flip

    config.model = ml_collections.ConfigDict()
    config.model.num_classes = 10
    config.model.head = "hpm"
    if "dm_wrn" in variants:
        config.model.name = "dm_wide_resnet"
        config.model.kwargs = ml_collections.ConfigDict(
            {"depth": 28, "width": 10, "mean": CIFAR10_MEAN, "std": CIFAR10_STD}
        )
    else:  # RobustBench WideResNet: no normalisation inside (mean/std None)
        config.model.name = "wide_resnet"
        config.model.kwargs = ml_collections.ConfigDict({"depth": 28, "width": 10})
    config.model.head_kwargs = ml_collections.ConfigDict(
        {"mixing": "count", "pseudo_count": 10.0, "ema_decay": 0.99}
    )

    config.init = ml_collections.ConfigDict()
    config.init.checkpoint = "/tmp/carmon2019" if "dm_wrn" not in variants else "/tmp/gowal2020"
    config.init.prototype_examples = 0  # every training image

    config.objective = ml_collections.ConfigDict()
    config.objective.name = "trades"
    config.objective.trades_beta = 6.0
    config.objective.hpm_weight = 1.0
    config.objective.fc_weight = 1.0
    config.objective.prototype_features = "auto"  # TRADES: clean, PGD-AT: adversarial

    config.attack = ml_collections.ConfigDict()
    config.attack.norm = "Linf"
    config.attack.eps = 8 / 255
    config.attack.step_size = 2 / 255
    config.attack.num_steps = 10
    config.attack.random_start = "auto"
    config.attack.bn_mode = "auto"
    config.attack.mode = "hpm"

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 128
    config.train.num_steps = 3900  # 10 epochs of 50000
    config.train.learning_rate = 0.01
    config.train.momentum = 0.9
    config.train.nesterov = True
    config.train.weight_decay = 5e-4
    config.train.schedule = "cosine"
    config.train.warmup_steps = 0
    config.train.piecewise_boundaries = (0.5, 0.75)
    config.train.piecewise_factor = 0.1
    config.train.ema_decay = 0.999
    config.train.log_every_steps = 50

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 500
    config.eval.every_steps = 1000
    config.eval.num_examples = 1000  # monitoring; AutoAttack / MSA give the final numbers
    config.eval.attack = ml_collections.ConfigDict(
        {"num_steps": 20, "step_size": 2 / 255, "random_start": "uniform"}
    )

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 500
    config.checkpoint.keep = 3
    config.checkpoint.async_save = True

    if "fc" in variants:
        config.model.head = "fc"
    if "l2" in variants:  # RobustBench's L2 threat model
        config.attack.norm, config.attack.eps, config.attack.step_size = "L2", 0.5, 0.125
        config.eval.attack.step_size = 0.125
    if "local" in variants:
        config.model.kwargs.depth, config.model.kwargs.width = 10, 1
        config.init.checkpoint = ""  # from scratch: no checkpoint needed
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

    # hpm_jax.evaluate (knobs: hpm_jax.evaluate.default_evaluation_config): AutoAttack on the
    # FC and l2-EMA heads, MSA on HPM, at the threat model the model was trained for.
    config.evaluation = ml_collections.ConfigDict()
    config.evaluation.num_examples = 1000 if "local" not in variants else 64
    # HPM's batch context (part of the result); a multiple of 1, 2, 4 and 8 devices.
    config.evaluation.batch_size = 200 if "local" not in variants else 32
    config.evaluation.norm = config.attack.norm
    config.evaluation.eps = config.attack.eps  # RobustBench: 8/255 Linf, 0.5 L2
    config.evaluation.seed = 0
    config.evaluation.version = "standard"
    # The standard version's full budgets, spelled out so that each is overridable, e.g.
    # --config.evaluation.attack_options.apgd-t.n_target_classes=3; `local`: the demo's.
    full = "local" not in variants
    config.evaluation.attack_options = ml_collections.ConfigDict(
        {
            "apgd-ce": {"n_iter": 100 if full else 20},
            "apgd-t": {"n_iter": 100 if full else 20, "n_target_classes": 9 if full else 1},
            "fab-t": {"n_iter": 100 if full else 10, "n_target_classes": 9 if full else 1},
            "square": {"n_queries": 5000 if full else 200},
        }
    )
    config.evaluation.msa = "auto"  # MSA when the model has an HPM head
    config.evaluation.surrogates = ("fc", "ema_l2", "soft", "ste")
    config.evaluation.naive_autoattack = True
    config.evaluation.curve_eps = ()
    config.evaluation.curve_attacks = ("apgd-ce",)
    config.evaluation.run_checks = True
    return config
