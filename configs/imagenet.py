"""ImageNet: HPM fine-tuning of a robust ResNet-50 (Linf eps = 4/255), PGD-AT, on TPU.

    python -m hpm_jax.convert --arch resnet50 --checkpoint Salman2020Do_R50.pt --out /tmp/salman_r50
    python -m hpm_jax.train --config=configs/imagenet.py --workdir=/tmp/in_r50_hpm \
        --config.init.checkpoint=/tmp/salman_r50
    launch/tpu.sh --tpu=hpm-v4 --zone=us-central2-b --accelerator=v4-32 --bucket=my-bucket \
        --config=configs/imagenet.py --workdir=runs/in_r50_hpm \
        -- --config.init.checkpoint=/mnt/my-bucket/salman_r50
    python -m hpm_jax.train --config=configs/imagenet.py:local --workdir=/tmp/in_local
    python -m hpm_jax.evaluate --config=configs/imagenet.py --checkpoint=/tmp/in_r50_hpm/model \
        --workdir=/tmp/in_eval         # AutoAttack / MSA at Linf 4/255 on 5000 val images

Variants (comma-separated): `fc` (fine-tune the FC head instead: the baseline), `local` (a
tiny ResNet-18-shaped network from scratch for a few steps). The global batch of 512 is
split over every device of every host; computation in bfloat16 (parameters in float32).
Data: TFDS `imagenet2012` as array_record (manual download, see hpm_jax.data). The
`evaluation` section (`hpm_jax.evaluate`) attacks at the training threat model (Linf 4/255,
RobustBench's) on RobustBench's 5000 validation images with full AutoAttack budgets.
"""

import ml_collections

VARIANTS = ("fc", "local")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = set(arg.split(",")) if arg else set()
    if variants - set(VARIANTS):
        raise ValueError(f"Unknown variant(s) {sorted(variants - set(VARIANTS))}; use {VARIANTS}.")

    config = ml_collections.ConfigDict()
    config.seed = 0

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "imagenet2012"
    config.dataset.train_split = "train"
    config.dataset.eval_split = "validation"
    config.dataset.data_dir = ""
    config.dataset.augment = "auto"  # inception crop + flip; eval: resize 256, center 224

    config.model = ml_collections.ConfigDict()
    config.model.name = "resnet50"
    config.model.num_classes = 1000
    config.model.head = "hpm"
    config.model.kwargs = ml_collections.ConfigDict({"dtype": "bfloat16"})
    # ~0.5 examples per class in a 512-image batch: P_ema dominates the mixture.
    config.model.head_kwargs = ml_collections.ConfigDict(
        {"mixing": "count", "pseudo_count": 1.0, "ema_decay": 0.99}
    )

    config.init = ml_collections.ConfigDict()
    config.init.checkpoint = "/tmp/salman_r50"
    config.init.prototype_examples = 100000  # ~100 per class

    config.objective = ml_collections.ConfigDict()
    config.objective.name = "pgd_at"
    config.objective.trades_beta = 6.0
    config.objective.hpm_weight = 1.0
    config.objective.fc_weight = 1.0
    config.objective.prototype_features = "auto"  # TRADES: clean, PGD-AT: adversarial

    config.attack = ml_collections.ConfigDict()
    config.attack.norm = "Linf"
    config.attack.eps = 4 / 255
    config.attack.step_size = 8 / 255 / 3  # Salman et al.: 3 steps of 2 * eps / 3
    config.attack.num_steps = 3
    config.attack.random_start = "auto"
    config.attack.bn_mode = "auto"
    config.attack.mode = "hpm"

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 512
    config.train.num_steps = 5000  # ~2 epochs
    config.train.learning_rate = 0.02
    config.train.momentum = 0.9
    config.train.nesterov = True
    config.train.weight_decay = 1e-4
    config.train.schedule = "cosine"
    config.train.warmup_steps = 200
    config.train.piecewise_boundaries = (0.5, 0.75)
    config.train.piecewise_factor = 0.1
    config.train.ema_decay = 0.0
    config.train.log_every_steps = 100

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 500
    config.eval.every_steps = 1000
    config.eval.num_examples = 5000
    config.eval.attack = ml_collections.ConfigDict(
        {"num_steps": 10, "step_size": 1 / 255, "random_start": "uniform"}
    )

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 500
    config.checkpoint.keep = 3
    config.checkpoint.async_save = True

    if "fc" in variants:
        config.model.head = "fc"
    if "local" in variants:
        config.model.kwargs = ml_collections.ConfigDict(
            {"dtype": "float32", "stage_sizes": (1, 1, 1, 1), "bottleneck": False,
             "image_size": 224}
        )  # fmt: skip
        config.init.checkpoint = ""
        config.init.prototype_examples = 256
        config.attack.num_steps = 1
        config.train.batch_size = 16
        config.train.num_steps = 20
        config.train.warmup_steps = 2
        config.train.log_every_steps = 5
        config.eval.batch_size = 16
        config.eval.every_steps = 0
        config.eval.num_examples = 64
        config.eval.attack.num_steps = 2
        config.checkpoint.every_steps = 10

    # hpm_jax.evaluate (knobs: hpm_jax.evaluate.default_evaluation_config): AutoAttack on the
    # FC and l2-EMA heads, MSA on HPM, at the threat model the model was trained for.
    full = "local" not in variants
    config.evaluation = ml_collections.ConfigDict()
    config.evaluation.num_examples = 5000 if full else 32  # RobustBench: 5000 val images
    # HPM's batch context (part of the result), near training's 512; a multiple of 1, 2 or 4
    # devices (--config.evaluation.batch_size=512 on 8 or 16).
    config.evaluation.batch_size = 500 if full else 16
    config.evaluation.norm = config.attack.norm
    config.evaluation.eps = config.attack.eps  # RobustBench: 4/255 Linf
    config.evaluation.seed = 0
    config.evaluation.version = "standard"
    # The standard version's full budgets, spelled out so that each is overridable, e.g.
    # --config.evaluation.attack_options.square.n_queries=1000; `local`: tiny ones.
    config.evaluation.attack_options = ml_collections.ConfigDict(
        {
            "apgd-ce": {"n_iter": 100 if full else 5},
            "apgd-t": {"n_iter": 100 if full else 5, "n_target_classes": 9 if full else 1},
            "fab-t": {"n_iter": 100 if full else 5, "n_target_classes": 9 if full else 1},
            "square": {"n_queries": 5000 if full else 20},
        }
    )
    config.evaluation.msa = "auto"  # MSA when the model has an HPM head
    config.evaluation.surrogates = ("fc", "ema_l2", "soft", "ste")
    config.evaluation.naive_autoattack = True
    config.evaluation.curve_eps = ()
    config.evaluation.curve_attacks = ("apgd-ce",)
    config.evaluation.run_checks = True
    return config
