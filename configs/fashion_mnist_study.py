"""Fashion-MNIST, small CNN: the HPM design-space study (`hpm_jax.study`) on a 2-core CPU.

    python -m hpm_jax.study --config=configs/fashion_mnist_study.py --workdir=/tmp/study \
        --config.init.checkpoint=/tmp/hpm_demo/at/model      # the demo's PGD-AT model
    python -m hpm_jax.study --config=configs/fashion_mnist_study.py --workdir=/tmp/study \
        --config.study.seeds="(0, 1, 2)" --config.evaluation.num_examples=1000   # larger

configs/fashion_mnist.py (the study fine-tunes with its `hpm` variant: 200 steps, lr 0.01)
with a `study` section: the default HPM head and single-knob changes of it, 2 training
seeds, and the demo's reduced evaluation budgets (256 test points in batches of 128, MSA
with surrogates fc, ema_l2, soft, ste) without the naive AutoAttack row, which a study does
not need. Every point starts from `init.checkpoint`, by default the demo's PGD-AT model.
"""

import importlib.util
import os

import ml_collections


def _fashion_mnist_config(arg):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fashion_mnist.py")
    spec = importlib.util.spec_from_file_location("_hpm_fashion_mnist_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = set(arg.split(",")) if arg else set()
    config = _fashion_mnist_config(",".join(sorted(variants | {"hpm"})))
    config.init.checkpoint = "/tmp/hpm_demo/at/model"  # launch/demo.sh's default workdir
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
