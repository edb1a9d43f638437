"""`hpm-study` (and `python -m hpm_jax.study`): the flags around `hpm_jax.experiments.study.run`.

    hpm-study --config=configs/fashion_mnist_study.py --workdir=/tmp/study \\
        --config.init.checkpoint=/tmp/hpm_demo/at/model           # the demo's PGD-AT model
    hpm-study --config=configs/fashion_mnist_study.py --check_config  # the config alone

On several hosts: the same command on each, plus `hpm_jax.cli.multihost`'s flags.
"""

from __future__ import annotations

from absl import flags, logging

from hpm_jax import cli
from hpm_jax.cli import multihost
from hpm_jax.models import export as model_export

PROG = "hpm-study"
with cli.program_imports(PROG):  # the core install: one line naming the extra
    from hpm_jax import data
    from hpm_jax.evaluation import evaluate
    from hpm_jax.experiments import study
    from hpm_jax.training import train
_CONFIG = cli.define_config_flag(
    help_string="Config file, path.py or path.py:variant (its :hpm variant is fine-tuned) with "
    "an optional study section; override keys as --config.study.seeds='(0, 1)'."
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "points/NAME/seed_S/, baseline/, study.json, study.md and study.png."
)
_CHECK_CONFIG = flags.DEFINE_bool(
    "check_config", False, "Only build and check every point's config (training and "
    "evaluation), print one line and exit: reads no data or model, writes nothing, needs no "
    "--workdir. launch/tpu.sh --program=study runs it locally before it creates a TPU.",
)  # fmt: skip


def main(argv: list[str], overrides: list[str]) -> None:
    del argv  # cli.run refuses positional arguments
    if _CHECK_CONFIG.value:
        cli.require(PROG, config=_CONFIG.value)
        config = study.load_study_config(_CONFIG.value, overrides)
        points = study.point_configs(config)
        print(f"{PROG}: config OK: {_CONFIG.value}: {len(config.study.points)} point(s), "
              f"{len(points)} run(s) of point x seed, init.checkpoint="
              f"{config.init.checkpoint!r}")  # fmt: skip
        return
    cli.require(PROG, config=_CONFIG.value, workdir=_WORKDIR.value)
    logging.set_verbosity(logging.WARNING)  # Orbax logs every read and write at INFO
    cli.quiet_attack_logger()
    config = study.load_study_config(_CONFIG.value, overrides)
    multihost.initialize()  # several hosts: the same command on each (hpm_jax.cli.multihost)
    study.run(config, _WORKDIR.value)


def console_main() -> None:
    """`hpm-study`: user errors are one line and exit code 2 (`hpm_jax.cli`)."""
    cli.show_in_help(__name__, _CONFIG, *multihost.FLAGS)
    errors = (study.StudyError, *train.SETUP_ERRORS, evaluate.EvaluationSetupError,
              data.DatasetNotFoundError, model_export.CheckpointMismatchError)  # fmt: skip
    cli.run(PROG, main, user_errors=errors)


if __name__ == "__main__":
    console_main()
