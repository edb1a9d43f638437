"""CIFAR-10: HPM fine-tuning of RobustBench-style models (Linf eps = 8/255, or L2 0.5), TRADES.

    python -m hpm_jax.convert --arch wide_resnet --checkpoint Carmon2019Unlabeled.pt \
        --arch_kwargs depth=28,width=10 --out runs/carmon2019
    python -m hpm_jax.train --config=configs/cifar10.py --workdir=runs/c10_wrn_hpm \
        --config.init.checkpoint=runs/carmon2019
    python -m hpm_jax.train --config=configs/cifar10.py:dm_wrn --workdir=runs/c10_dm_hpm \
        --config.init.checkpoint=runs/gowal2020          # a converted DMWideResNet checkpoint
    python -m hpm_jax.evaluate --config=configs/cifar10.py --checkpoint=runs/c10_wrn_hpm/model \
        --workdir=runs/c10_eval        # AutoAttack / MSA at the training threat model
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

The backbone, FC weights and batch-norm statistics come from `init.checkpoint`, which
every variant but `local` requires (`--config.init.checkpoint=DIR`); HPM prototypes start
at the class means of the training features. Data: TFDS `cifar10` prepared as array_record
(`tfds build cifar10 --file_format=array_record`). The values:
`hpm_jax.config_sections.cifar_config`, which configs/cifar100.py shares.
"""

import ml_collections

from hpm_jax import config_lib, config_sections

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
VARIANTS = config_sections.CIFAR_VARIANTS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config_sections.cifar_config(
        config_lib.parse_variants(arg, VARIANTS),
        name="cifar10",
        num_classes=10,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        pseudo_count=10.0,
    )
