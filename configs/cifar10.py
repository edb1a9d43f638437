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
(`tfds build cifar10 --file_format=array_record`). configs/cifar100.py is
this experiment with CIFAR-100's values. Values not stated here: the defaults in
`hpm_jax.config_sections.DEFAULTS`.
"""

import ml_collections

from hpm_jax import config_lib
from hpm_jax import config_sections as common

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
VARIANTS = ("wrn", "dm_wrn", "fc", "l2", "local")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = config_lib.parse_variants(arg, VARIANTS)
    if "dm_wrn" in variants:  # DeepMind's WRN with SiLU, e.g. Gowal2020Uncovering_28_10_extra
        arch = "dm_wide_resnet"
        kwargs = dict(depth=28, width=10, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    else:  # RobustBench WideResNet (`wrn`, the default): no normalisation inside
        arch, kwargs = "wide_resnet", dict(depth=28, width=10)
    config = common.training_config(
        dataset=dict(name="cifar10"),
        model=dict(
            name=arch,
            num_classes=10,
            kwargs=kwargs,
            head_kwargs=dict(pseudo_count=10.0),  # the HPM head: hpm_jax.models.HPMHead
        ),
        init=dict(checkpoint=None),  # the converted RobustBench model: --config.init.checkpoint
        objective=dict(name="trades"),
        attack=dict(eps=8 / 255, step_size=2 / 255, num_steps=10),
        train=dict(
            batch_size=128,
            num_steps=3900,  # 10 epochs of 50000
            learning_rate=0.01,
            warmup_steps=0,
            ema_decay=0.999,
            log_every_steps=50,
        ),
        # Monitoring; AutoAttack / MSA give the final numbers.
        eval=dict(
            batch_size=500,
            every_steps=1000,
            num_examples=1000,
            attack=dict(num_steps=20, step_size=2 / 255),
        ),
        checkpoint=dict(every_steps=500, keep=3),
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
    config.evaluation = common.evaluation(
        config.attack,
        num_examples=64 if local else 1000,
        batch_size=32 if local else 200,
        attack_options=common.demo_budgets() if local else common.attack_budgets(),
    )
    return config
