"""Fashion-MNIST, small CNN: the HPM design-space study (`hpm_jax.study`) on a 2-core CPU.

    python -m hpm_jax.study --config=configs/fashion_mnist_study.py --workdir=/tmp/study \
        --config.init.checkpoint=/tmp/hpm_demo/at/model      # the demo's PGD-AT model
    python -m hpm_jax.study --config=configs/fashion_mnist_study.py --workdir=/tmp/study \
        --config.init.checkpoint=/tmp/hpm_demo/at/model \
        --config.study.seeds="(0, 1, 2)" --config.evaluation.num_examples=1000   # larger

configs/fashion_mnist.py (the study fine-tunes with its `hpm` variant: 200 steps, lr 0.01;
`:local` as that file's) with a `study` section: the default HPM head and single-knob
changes of it, 2 training seeds, and the demo's reduced evaluation budgets (256 test points
in batches of 128, MSA with surrogates fc, ema_l2, soft, ste) without the naive AutoAttack
row, which a study does not need. Every point starts from `init.checkpoint`, an FC model
the user names (e.g. the demo's WORKDIR/at/model); the study refuses to start without it.
"""

import ml_collections

from hpm_jax import config_lib

fashion_mnist = config_lib.load_module("fashion_mnist.py", relative_to=__file__)
VARIANTS = fashion_mnist.VARIANTS  # `hpm` is always on


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = config_lib.parse_variants(arg, VARIANTS)
    config = fashion_mnist.get_config(",".join(sorted(variants | {"hpm"})))
    # "": hpm_jax.study names the missing --config.init.checkpoint=DIR itself.
    config.init.checkpoint = ""
    config.evaluation.naive_autoattack = False
    config.evaluation.run_checks = False  # the demo reports them for the default point

    config.study = ml_collections.ConfigDict()
    # name -> overrides of the fine-tuning config (--config.KEY=VALUE without the prefix).
    config.study.points = ml_collections.ConfigDict(
        {
            "default": (),  # count mixing, m = 10, beta = 0.99, adversarial EMA features
            "convex": ("model.head_kwargs.mixing='convex'",),  # lam = 0.5
            "pseudo_count_2": ("model.head_kwargs.pseudo_count=2.0",),  # batch means weigh more
            "fc_weight_0": ("objective.fc_weight=0.0",),  # no auxiliary CE on the FC logits
            "ema_clean": ("objective.prototype_features='clean'",),
            "steps_400": ("train.num_steps=400",),  # twice the fine-tuning
        }
    )
    # The rows run, in order: 5 points x 2 seeds fit ~45 minutes on the 2-core CPU (one point
    # and seed measured at ~300 s under load: 127 s fine-tuning, 171 s evaluation);
    # fc_weight_0 is left out for time (--config.study.run=() runs every point).
    config.study.run = ("default", "convex", "pseudo_count_2", "ema_clean", "steps_400")
    config.study.seeds = (0, 1)
    config.study.baseline = True
    return config
