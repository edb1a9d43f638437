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

The values: `hpm_jax.config_sections.fashion_mnist_config` (configs/fashion_mnist_study.py
builds on it), from the sections every config shares.
Data: TFDS `fashion_mnist` when prepared, else the Debian package `dataset-fashion-mnist`.
"""

import ml_collections

from hpm_jax import config_lib, config_sections

VARIANTS = config_sections.FASHION_MNIST_VARIANTS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config_sections.fashion_mnist_config(config_lib.parse_variants(arg, VARIANTS))
