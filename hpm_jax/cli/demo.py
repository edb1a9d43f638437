"""`hpm-demo` (and `python -m hpm_jax.demo`, `launch/demo.sh`): the flags around `demo.run`.

    hpm-demo --workdir=/tmp/hpm_demo                                     # configs/fashion_mnist.py
    hpm-demo --config=configs/fashion_mnist.py:local --workdir=/tmp/hpm_demo_local \\
        --config.evaluation.num_examples=1000                            # any override
"""

from __future__ import annotations

from absl import flags, logging

from hpm_jax import cli
from hpm_jax.cli import multihost
from hpm_jax.models import export as model_export

PROG = "hpm-demo"
with cli.program_imports(PROG):  # the core install: one line naming the extra
    from hpm_jax import data
    from hpm_jax.evaluation import evaluate
    from hpm_jax.experiments import demo
    from hpm_jax.training import train
_CONFIG = cli.define_config_flag(
    help_string="Config file, path.py or path.py:variant (default: configs/fashion_mnist.py); "
    "its :hpm variant is the fine-tuning stage. Override keys as --config.train.num_steps=100."
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "One directory per stage (at, hpm, analysis, eval) and summary.json."
)


def main(argv: list[str], overrides: list[str]) -> None:
    del argv  # cli.run refuses positional arguments
    cli.require(PROG, workdir=_WORKDIR.value)
    at_config, hpm_config = demo.stage_configs(_CONFIG.value or demo.DEFAULT_CONFIG, overrides)
    logging.set_verbosity(logging.WARNING)  # Orbax logs every read and write at INFO
    cli.quiet_attack_logger()
    multihost.initialize()  # several hosts: the same command on each (hpm_jax.cli.multihost)
    demo.run(at_config, hpm_config, _WORKDIR.value)


def console_main() -> None:
    """The demo's command line: user errors are one line and exit code 2 (`hpm_jax.cli`)."""
    cli.show_in_help(__name__, _CONFIG, *multihost.FLAGS)
    errors = (*train.SETUP_ERRORS, evaluate.EvaluationSetupError, data.DatasetNotFoundError,
              model_export.CheckpointMismatchError)  # fmt: skip
    cli.run(PROG, main, user_errors=errors)


if __name__ == "__main__":
    console_main()
