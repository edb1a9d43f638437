"""Fashion-MNIST with the small CNN: adversarial training from scratch on a laptop CPU.

    python -m hpm_jax.train --config=configs/fashion_mnist.py --workdir=/tmp/fmnist_at
    python -m hpm_jax.train --config=configs/fashion_mnist.py:hpm --workdir=/tmp/fmnist_hpm \
        --config.init.checkpoint=/tmp/fmnist_at/model          # HPM fine-tuning of that model
    python -m hpm_jax.train --config=configs/fashion_mnist.py:local --workdir=/tmp/fmnist_local
    python -m hpm_jax.evaluate --config=configs/fashion_mnist.py --workdir=/tmp/fmnist_eval \
        --checkpoint=/tmp/fmnist_hpm/model                    # AutoAttack (FC, l2-EMA), MSA (HPM)
    python -m hpm_jax.demo --config=configs/fashion_mnist.py --workdir=/tmp/fmnist  # all of it

Default: PGD-AT, Linf eps = 0.1, 3 PGD steps of 0.04 with a uniform random start, SGD with
momentum, cosine schedule, 1000 steps of 128 (2.1 epochs). Measured on the 2-core CPU
(2 host devices, shared: load ~10): 12.4 min of training, 7 CPU-minutes with the final
evaluation; test accuracy clean 74.4%, PGD-10 (eps 0.1) 59.2% on all 10000.
Variants (comma-separated, e.g. `:hpm,local`): `local` is smaller and faster; `hpm`
fine-tunes an FC checkpoint (`init.checkpoint`) with the HPM head.
Data: TFDS `fashion_mnist` when prepared, else the Debian package `dataset-fashion-mnist`.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = set(arg.split(",")) if arg else set()
    unknown = variants - {"local", "hpm"}
    if unknown:
        raise ValueError(f"Unknown variant(s) {sorted(unknown)} of fashion_mnist; use local, hpm.")

    config = ml_collections.ConfigDict()
    config.seed = 0

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "fashion_mnist"
    config.dataset.train_split = "train"
    config.dataset.eval_split = "test"  # held out from training
    config.dataset.data_dir = ""  # "" = TFDS's default directory
    config.dataset.augment = "auto"  # Fashion-MNIST: none

    config.model = ml_collections.ConfigDict()
    config.model.name = "small_cnn"
    config.model.num_classes = 10
    config.model.head = "fc"  # "fc", "hpm" or "l2"
    config.model.kwargs = ml_collections.ConfigDict(
        {"in_channels": 1, "image_size": 28, "channels": (16, 32, 64), "num_features": 256}
    )
    # HPM / l2 head options (get_model routes them to the head): see hpm_jax.models.HPMHead.
    config.model.head_kwargs = ml_collections.ConfigDict(
        {"mixing": "count", "pseudo_count": 10.0, "ema_decay": 0.99}
    )

    config.init = ml_collections.ConfigDict()
    config.init.checkpoint = ""  # a save_model / hpm_jax.convert directory; "" = from scratch
    config.init.prototype_examples = 0  # training images for the initial prototypes; 0 = all

    config.objective = ml_collections.ConfigDict()
    config.objective.name = "pgd_at"  # or "trades"
    config.objective.trades_beta = 6.0
    config.objective.hpm_weight = 1.0  # HPM heads: CE (or TRADES) on the HPM logits ...
    config.objective.fc_weight = 1.0  # ... plus this much of it on the FC logits
    config.objective.prototype_features = "auto"  # TRADES: clean, PGD-AT: adversarial

    # The attack inside training.
    config.attack = ml_collections.ConfigDict()
    config.attack.norm = "Linf"
    config.attack.eps = 0.1
    config.attack.step_size = 0.04
    config.attack.num_steps = 3
    config.attack.random_start = "auto"  # uniform for PGD-AT, 0.001 * normal for TRADES
    config.attack.bn_mode = "auto"  # train for PGD-AT, eval for TRADES (as their references)
    config.attack.mode = "hpm"  # HPM heads: the logits the attack differentiates

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 128
    config.train.num_steps = 1000
    config.train.learning_rate = 0.05
    config.train.momentum = 0.9
    config.train.nesterov = True
    config.train.weight_decay = 5e-4
    config.train.schedule = "cosine"  # or "piecewise", "constant"
    config.train.warmup_steps = 50
    config.train.piecewise_boundaries = (0.5, 0.75)
    config.train.piecewise_factor = 0.1
    config.train.ema_decay = 0.0  # weight averaging (e.g. 0.999); 0 = off
    config.train.log_every_steps = 100

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 1000
    config.eval.every_steps = 0  # 0: only at the end
    config.eval.num_examples = 0  # first N of the eval split; 0 = all
    # The held-out PGD attack: the training attack's settings, overridden by these.
    config.eval.attack = ml_collections.ConfigDict(
        {"num_steps": 10, "step_size": 0.025, "random_start": "uniform"}
    )

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 200
    config.checkpoint.keep = 2
    config.checkpoint.async_save = True

    # hpm_jax.evaluate and the demo's evaluation (knobs: evaluate.default_evaluation_config).
    # Reduced budgets, chosen so that the whole demo fits in 15 minutes on a 2-core CPU; the
    # report and the demo's table state them. Full AutoAttack: attack_options = {}.
    config.evaluation = ml_collections.ConfigDict()
    config.evaluation.num_examples = 256  # the first N test images, in order
    config.evaluation.batch_size = 128  # HPM's batch context (as in training): part of the result
    config.evaluation.norm = "Linf"
    config.evaluation.eps = 0.1  # the training eps
    config.evaluation.seed = 0
    config.evaluation.version = "standard"  # APGD-CE, APGD-T, FAB-T, Square
    # Measured on the 2-core CPU under load: APGD-CE (50 iterations) took ~47 s and APGD-T
    # (2 targets) ~86 s on 256 points of one head, so MSA's 4 surrogates at those budgets
    # alone would take ~15 minutes; these budgets are ~2.5x smaller.
    config.evaluation.attack_options = ml_collections.ConfigDict(
        {
            "apgd-ce": {"n_iter": 20},
            "apgd-t": {"n_iter": 20, "n_target_classes": 1},
            "fab-t": {"n_iter": 10, "n_target_classes": 1},
            "square": {"n_queries": 200},
        }
    )
    config.evaluation.msa = "auto"  # MSA when the model has an HPM head ("required", "off")
    config.evaluation.surrogates = ("fc", "ema_l2", "soft", "ste")
    config.evaluation.naive_autoattack = True  # also plain AutoAttack through HPM's STE
    config.evaluation.curve_eps = ()  # e.g. (0.05, 0.1, 0.15): robust accuracy vs eps
    config.evaluation.curve_attacks = ("apgd-ce",)
    config.evaluation.run_checks = True

    if "hpm" in variants:  # a short fine-tuning of an adversarially trained FC model
        config.model.head = "hpm"
        config.train.num_steps = 200
        config.train.learning_rate = 0.01
        config.train.warmup_steps = 0
        config.init.prototype_examples = 10000
        config.checkpoint.every_steps = 100
    if "local" in variants:
        config.train.num_steps = config.train.num_steps // 5
        config.train.log_every_steps = 20
        config.train.warmup_steps = min(config.train.warmup_steps, 10)
        config.eval.num_examples = 2000
        config.checkpoint.every_steps = 50
    return config
