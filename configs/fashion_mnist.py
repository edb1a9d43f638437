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
fine-tunes an FC checkpoint, which `--config.init.checkpoint=DIR` names (required).
The evaluation section (`hpm_jax.evaluate`, the demo) has reduced budgets: 256 test images
in batches of 128, APGD 20 iterations, 1 target class, FAB 10, Square 200 queries.
configs/fashion_mnist_study.py builds on this file's `hpm` variant. Values not stated here:
the defaults in `hpm_jax.config_sections.DEFAULTS`.
Data: TFDS `fashion_mnist` when prepared, else the Debian package `dataset-fashion-mnist`.
"""

import ml_collections

from hpm_jax import config_lib
from hpm_jax import config_sections as common

VARIANTS = ("local", "hpm")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = config_lib.parse_variants(arg, VARIANTS)
    config = common.training_config(
        dataset=dict(name="fashion_mnist"),
        model=dict(
            name="small_cnn",
            num_classes=10,
            head="fc",
            kwargs=dict(in_channels=1, image_size=28, channels=(16, 32, 64), num_features=256),
        ),
        init=dict(checkpoint=""),  # from scratch
        objective=dict(name="pgd_at"),
        attack=dict(eps=0.1, step_size=0.04, num_steps=3),
        train=dict(batch_size=128, num_steps=1000, learning_rate=0.05, warmup_steps=50),
        eval=dict(
            batch_size=1000,
            every_steps=0,
            num_examples=0,
            attack=dict(num_steps=10, step_size=0.025),
        ),
        checkpoint=dict(every_steps=200, keep=2),
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
    config.evaluation = common.evaluation(
        config.attack,
        num_examples=256,  # the first N test images, in order
        batch_size=128,  # HPM's batch context (as in training): part of the result
        attack_options=common.demo_budgets(),
    )
    return config
