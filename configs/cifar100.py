"""CIFAR-100: HPM fine-tuning of RobustBench-style Linf models (eps = 8/255), TRADES.

    python -m hpm_jax.convert --arch dm_wide_resnet --checkpoint Gowal2020_70_16_extra.pt \
        --arch_kwargs "depth=70,width=16,mean=(0.5071,0.4865,0.4409),std=(0.2673,0.2564,0.2762)" \
        --out runs/gowal_c100
    python -m hpm_jax.train --config=configs/cifar100.py:dm_wrn --workdir=runs/c100_dm_hpm \
        --config.init.checkpoint=runs/gowal_c100 --config.model.kwargs.depth=70 \
        --config.model.kwargs.width=16
    python -m hpm_jax.train --config=configs/cifar100.py --workdir=runs/c100_wrn_hpm \
        --config.init.checkpoint=runs/c100_wrn        # a converted WideResNet checkpoint

The CIFAR-10 experiment (configs/cifar10.py, same variants: `wrn`, `dm_wrn`, `fc`, `l2`,
`local`) with 100 classes, CIFAR-100's normalisation for the DeepMind WRN, and a
pseudo-count scaled to the ~1.3 examples per class of a 128-image batch. `init.checkpoint`
is required but for `local`. Data: TFDS `cifar100` as array_record. Evaluation
(`hpm_jax.evaluate`) as CIFAR-10's: AutoAttack / MSA at the training threat model (8/255
Linf; `:l2` 0.5 L2), full budgets, the first 1000 test images.
"""

import ml_collections

from hpm_jax import config_lib

cifar10 = config_lib.load_module("cifar10.py", relative_to=__file__)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
VARIANTS = cifar10.VARIANTS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = cifar10.get_config(arg)  # checks the variants
    config.dataset.name = "cifar100"
    config.model.num_classes = 100
    # Few examples of each class per batch: weigh P_ema more against a class's batch mean.
    config.model.head_kwargs.pseudo_count = 2.0
    if "dm_wrn" in config_lib.parse_variants(arg, VARIANTS):  # normalisation inside the WRN
        config.model.kwargs.mean, config.model.kwargs.std = CIFAR100_MEAN, CIFAR100_STD
    return config
