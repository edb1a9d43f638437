"""Pretrained robust models by name: the RobustBench leaderboards, as hpm-jax Flax models.

    from hpm_jax.interop.zoo import MODELS, load_robustbench
    model, variables = load_robustbench("Carmon2019Unlabeled", model_dir="./models")
    info = MODELS["cifar10", "Linf", "Carmon2019Unlabeled"]   # arch, kwargs, clean/AA accuracy

or from the shell: `hpm-convert --robustbench Carmon2019Unlabeled --out /tmp/carmon2019`.
"""

from hpm_jax.interop.zoo.download import CheckpointUnavailableError
from hpm_jax.interop.zoo.robustbench import checkpoint_path, entry, load_robustbench
from hpm_jax.interop.zoo.robustbench_table import EPS, MODELS, RobustBenchModel

__all__ = [
    "EPS",
    "MODELS",
    "CheckpointUnavailableError",
    "RobustBenchModel",
    "checkpoint_path",
    "entry",
    "load_robustbench",
]
