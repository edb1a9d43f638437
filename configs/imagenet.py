"""ImageNet: HPM fine-tuning of a robust ResNet-50 (Linf eps = 4/255), PGD-AT, on TPU.

    python -m hpm_jax.convert --arch resnet50 --checkpoint Salman2020Do_R50.pt --out runs/salman_r50
    python -m hpm_jax.train --config=configs/imagenet.py --workdir=runs/in_r50_hpm \
        --config.init.checkpoint=runs/salman_r50
    launch/tpu.sh --tpu=hpm-v4 --zone=us-central2-b --accelerator=v4-32 --bucket=my-bucket \
        --config=configs/imagenet.py --workdir=runs/in_r50_hpm \
        -- --config.init.checkpoint=/mnt/my-bucket/salman_r50
    python -m hpm_jax.train --config=configs/imagenet.py:local --workdir=/tmp/in_local
    python -m hpm_jax.evaluate --config=configs/imagenet.py --checkpoint=runs/in_r50_hpm/model \
        --workdir=runs/in_eval         # AutoAttack / MSA at Linf 4/255 on 5000 val images

Variants (comma-separated): `fc` (fine-tune the FC head instead: the baseline), `local` (a
tiny ResNet-18-shaped network from scratch for a few steps). The global batch of 512 is
split over every device of every host; computation in bfloat16 (parameters in float32).
`init.checkpoint`, the robust model, is required but for `local`
(`--config.init.checkpoint=DIR`). Data: TFDS `imagenet2012` as array_record (manual
download, see hpm_jax.data). The `evaluation` section (`hpm_jax.evaluate`) attacks at the
training threat model (Linf 4/255, RobustBench's) on RobustBench's 5000 validation images
with full AutoAttack budgets. Values not stated here: the defaults in
`hpm_jax.config_sections.DEFAULTS`.
"""

import ml_collections

from hpm_jax import config_lib
from hpm_jax import config_sections as common

VARIANTS = ("fc", "local")
# `local`'s evaluation: a few iterations of each attack, to try the pipeline.
TINY_BUDGETS = {"apgd_iter": 5, "target_classes": 1, "fab_iter": 5, "square_queries": 20}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = config_lib.parse_variants(arg, VARIANTS)
    local = "local" in variants
    if local:  # a tiny ResNet-18-shaped network
        kwargs = dict(dtype="float32", stage_sizes=(1, 1, 1, 1), bottleneck=False, image_size=224)
    else:
        kwargs = dict(dtype="bfloat16")  # computation; parameters in float32
    config = common.training_config(
        dataset=dict(name="imagenet2012", eval_split="validation"),
        model=dict(
            name="resnet50",
            num_classes=1000,
            kwargs=kwargs,
            # ~0.5 examples per class in a 512-image batch: P_ema dominates the mixture.
            head_kwargs=dict(pseudo_count=1.0),
        ),
        init=dict(checkpoint=None, prototype_examples=100000),  # ~100 per class
        objective=dict(name="pgd_at"),
        # Salman et al.: 3 steps of 2 * eps / 3.
        attack=dict(eps=4 / 255, step_size=8 / 255 / 3, num_steps=3),
        train=dict(
            batch_size=512,
            num_steps=5000,  # ~2 epochs
            learning_rate=0.02,
            warmup_steps=200,
            weight_decay=1e-4,
        ),
        eval=dict(
            batch_size=500,
            every_steps=1000,
            num_examples=5000,
            attack=dict(num_steps=10, step_size=1 / 255),
        ),
        checkpoint=dict(every_steps=500, keep=3),
    )
    if "fc" in variants:
        config.model.head = "fc"
    if local:  # from scratch for a few steps
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

    # AutoAttack on the FC and l2-EMA heads, MSA on HPM, at the training threat model (4/255
    # Linf, RobustBench's) with full budgets on RobustBench's 5000 validation images (`local`:
    # tiny ones). batch_size: HPM's batch context (part of the result), near training's 512;
    # a multiple of 1, 2 or 4 devices (--config.evaluation.batch_size=512 on 8 or 16).
    config.evaluation = common.evaluation(
        config.attack,
        num_examples=32 if local else 5000,
        batch_size=16 if local else 500,
        attack_options=common.attack_budgets(**TINY_BUDGETS if local else {}),
    )
    return config
