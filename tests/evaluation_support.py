"""The evaluation and study harness shared by tests/test_evaluate.py, tests/test_study.py and
tests/test_crash_campaign.py (no tests here): a tiny HPM model trained on real Fashion-MNIST
and a tiny evaluation config; a tiny study config and its table::

    _, variables = train_tiny(n_steps=10)      # (model, variables with class-mean prototypes)
    config = tiny_config(num_examples=16)      # the evaluation settings overridden
    comparable(report)                         # the report less what differs between runs
    study_rows(study.run(tiny_study_config(base_model), workdir, log=None))

Everything is built when called, from fixed seeds, so every caller gets the same values.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hpm_jax import config_lib, data
from hpm_jax.evaluation import evaluate
from hpm_jax.experiments import study
from hpm_jax.models import get_model
from hpm_jax.models.prototypes import init_prototypes

# ---------------------------------------------------------------- evaluation

EVAL_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "fashion_mnist.py")
ARCH = dict(in_channels=1, image_size=28, channels=[8, 16, 16], num_features=32)
EPS = 0.1


def tiny_config(**evaluation):
    """The Fashion-MNIST config with tiny evaluation settings, `evaluation` overriding them."""
    config = config_lib.load_config(EVAL_CONFIG)
    with config.unlocked():
        config.evaluation = evaluate.default_evaluation_config()
        settings = dict(
            num_examples=24,
            batch_size=8,  # 4 devices; 3 fixed batches
            eps=EPS,
            # Tiny budgets: APGD-CE for the gradient part, a few Square queries.
            version="apgd-ce,square",
            attack_options={"apgd-ce": {"n_iter": 3, "n_restarts": 1}, "square": {"n_queries": 4}},
            surrogates=("fc", "ste"),
        )
        config.evaluation.update({**settings, **evaluation})
    return config


def train_tiny(n_steps=40, batch=64):
    """A few SGD steps of CE on the FC logits, then P_ema = class means: a weak but real model."""
    model = get_model("small_cnn", num_classes=10, head="hpm", **ARCH)
    source = data.get_source("fashion_mnist", "train")
    x = np.stack([source[i]["image"] for i in range(n_steps * batch // 4)]).astype(np.float32)
    x = x.reshape(-1, 28, 28, 1) / 255.0
    y = np.asarray([source[i]["label"] for i in range(len(x))], np.int32)
    variables = model.init(jax.random.key(0), jnp.asarray(x[:2]))
    opt = optax.sgd(0.1, momentum=0.9)

    @jax.jit
    def step(params, stats, opt_state, xb, yb):
        def loss(p):
            logits, upd = model.apply(
                {**variables, "params": p, "batch_stats": stats}, xb, train=True, mode="fc",
                mutable=["batch_stats"],
            )  # fmt: skip
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), upd

        (_, upd), g = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = opt.update(g, opt_state)
        return optax.apply_updates(params, updates), upd["batch_stats"], opt_state

    params, stats = variables["params"], variables["batch_stats"]
    opt_state = opt.init(params)
    for i in range(n_steps):
        j = (i * batch) % len(x)
        params, stats, opt_state = step(
            params, stats, opt_state, x[j : j + batch], y[j : j + batch]
        )
    variables = {**variables, "params": params, "batch_stats": stats}
    batches = [{"image": jnp.asarray(x[i : i + 128]), "label": jnp.asarray(y[i : i + 128])}
               for i in range(0, len(x), 128)]  # fmt: skip
    return model, init_prototypes(model, variables, batches)


def comparable(tree):
    """The report without what differs between runs (wall-clock times, dates, resume marks,
    paths)."""
    if isinstance(tree, dict):
        drop = {"times", "seconds", "total_seconds", "resumed", "files", "date"}
        return {k: comparable(v) for k, v in tree.items() if k not in drop}
    if isinstance(tree, list):
        return [comparable(v) for v in tree]
    return tree


# ---------------------------------------------------------------- study

STUDY_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "fashion_mnist_study.py")
TINY_MODEL = [
    "model.kwargs.channels=(4, 8, 8)",
    "model.kwargs.num_features=16",
]
TINY_STUDY = [
    *TINY_MODEL,
    "train.num_steps=2",
    "train.warmup_steps=0",
    "train.batch_size=16",
    "train.log_every_steps=2",
    "eval.num_examples=16",
    "eval.batch_size=16",
    "eval.attack.num_steps=1",
    "checkpoint.every_steps=2",
    "init.prototype_examples=64",
    "evaluation.num_examples=16",
    "evaluation.batch_size=8",
    "evaluation.version='apgd-ce'",  # MSA: APGD-CE through each surrogate; a compile less
    "evaluation.attack_options={'apgd-ce': {'n_iter': 2, 'n_restarts': 1}}",
    "evaluation.surrogates=('fc', 'ste')",
    "study.points={'default': (), 'convex': (\"model.head_kwargs.mixing='convex'\",)}",
    "study.run=()",
    "study.seeds=(0,)",  # two seeds double the time; test_summary_over_seeds covers them
]


def tiny_study_config(base_model, extra=()):
    """The study config at TINY_STUDY from the model `base_model`, `extra` overrides last."""
    return study.load_study_config(
        STUDY_CONFIG, [*TINY_STUDY, f"init.checkpoint={base_model}", *extra]
    )


def study_rows(table):
    """The figures of a study table, as JSON would read them back."""
    return json.loads(json.dumps({k: table[k] for k in ("rows", "baseline", "per_seed")}))
