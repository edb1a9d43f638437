"""`hpm-evaluate` (and `python -m hpm_jax.evaluate`): the flags around
`hpm_jax.evaluation.evaluate.run`.

    hpm-evaluate --config=configs/fashion_mnist.py --checkpoint=DIR --workdir=OUT \\
        --baseline_checkpoint=/tmp/fmnist_at/model --config.evaluation.num_examples=1000
    hpm-evaluate --robustbench Carmon2019Unlabeled --workdir /tmp/carmon_eval
    hpm-evaluate --config=configs/cifar10.py --check_config   # the config alone; writes nothing
    # several hosts (a pod): the same command on each, plus --multihost or
    #   --coordinator_address=HOST0:1234 --num_processes=N --process_id=I   (hpm_jax.cli.multihost)
    # each host attacks its share of the fixed batches; process 0 writes the report.
"""

from __future__ import annotations

import jax
from absl import flags

from hpm_jax import cli
from hpm_jax.cli import multihost
from hpm_jax.models.export import CheckpointMismatchError
from hpm_jax.runtime.identity import WorkdirMismatchError

PROG = "hpm-evaluate"
with cli.program_imports(PROG):  # the core install: one line naming the extra
    from hpm_jax import data
    from hpm_jax.evaluation import evaluate, reports
_CONFIG = cli.define_config_flag()
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Model directory (model.json) to evaluate.")
_ROBUSTBENCH = flags.DEFINE_string(
    "robustbench", None, "A RobustBench model name to evaluate instead of --checkpoint "
    "(e.g. Carmon2019Unlabeled): the leaderboard's eps, RobustBench's subset and order.",
)  # fmt: skip
_DATASET = flags.DEFINE_string(
    "dataset", "cifar10", "With --robustbench: cifar10, cifar100 or imagenet."
)
_THREAT_MODEL = flags.DEFINE_string("threat_model", "Linf", "With --robustbench: Linf or L2.")
_MODEL_DIR = flags.DEFINE_string(
    "model_dir", "./models", "With --robustbench: RobustBench's checkpoint cache, "
    "MODEL_DIR/<dataset>/<threat_model>/<name>.pt.",
)  # fmt: skip
_DOWNLOAD = flags.DEFINE_bool(
    "download", True, "With --robustbench: download a missing checkpoint (--nodownload: "
    "fail naming the file to place).",
)  # fmt: skip
_WORKDIR = flags.DEFINE_string("workdir", None, "report.json, summary.md, plots, state go here.")
_BASELINE = flags.DEFINE_string(
    "baseline_checkpoint", None, "Optional separate FC model, evaluated with AutoAttack."
)
_CHECK_CONFIG = flags.DEFINE_bool(
    "check_config", False, "Only load and check the config and its evaluation settings, print "
    "one line and exit: loads no model or data, writes nothing, needs no --checkpoint or "
    "--workdir. launch/tpu.sh --program=evaluate runs it locally before it creates a TPU.",
)  # fmt: skip
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Discard the workdir's state and report when they belong to an "
    "evaluation with other settings (instead of stopping with an error).",
)  # fmt: skip


def main(argv: list[str], overrides: list[str]) -> None:
    del argv  # cli.run refuses positional arguments
    rb = None
    if _ROBUSTBENCH.value:
        if _CHECKPOINT.value:
            cli.fail(PROG, "give --checkpoint or --robustbench, not both.")
        cli.require(PROG, **({} if _CHECK_CONFIG.value else {"workdir": _WORKDIR.value}))
        rb = {"name": _ROBUSTBENCH.value, "dataset": _DATASET.value,
              "threat_model": _THREAT_MODEL.value, "model_dir": _MODEL_DIR.value,
              "download": _DOWNLOAD.value}  # fmt: skip
        config = evaluate.load_robustbench_config(rb, _CONFIG.value, overrides)
    else:
        run = {} if _CHECK_CONFIG.value else {"checkpoint": _CHECKPOINT.value,
                                              "workdir": _WORKDIR.value}  # fmt: skip
        cli.require(PROG, config=_CONFIG.value, **run)
        config = evaluate.load_evaluation_config(_CONFIG.value, overrides)
    if _CHECK_CONFIG.value:
        ev = evaluate.evaluation_config(config)
        print(f"{PROG}: config OK: {_CONFIG.value or 'robustbench'}: {config.dataset.name}, "
              f"{ev.norm} eps={float(ev.eps):g}, {ev.version}, {ev.num_examples or 'all'} "
              f"points in batches of {ev.batch_size}")  # fmt: skip
        return
    cli.default_verbosity()  # WARNING unless --verbosity/-v says otherwise (Orbax's INFO)
    cli.quiet_attack_logger()
    multihost.initialize()
    try:
        report = evaluate.run(config, _CHECKPOINT.value, _WORKDIR.value, robustbench=rb,
                              baseline_checkpoint=_BASELINE.value, overwrite=_OVERWRITE.value,
                              progress="auto")  # fmt: skip
    except WorkdirMismatchError as error:  # the workdir's, or an attack state file's
        message = cli.one_line(error)
        if "--overwrite" not in message:  # a state file the workdir's identity did not cover
            message += " Or pass --overwrite to discard it."
        cli.fail(PROG, message)
    if jax.process_index() == 0:
        print(reports.table(report))


def console_main() -> None:
    """The `hpm-evaluate` console script. User errors are one line on stderr and exit code 2
    (`hpm_jax.cli`); nothing is written before them."""
    # else --help lists neither --config nor, as a script, any flag
    cli.show_in_help(__name__, _CONFIG, *multihost.FLAGS)
    errors = (evaluate.EvaluationSetupError, data.DatasetNotFoundError, CheckpointMismatchError)
    cli.run(PROG, main, user_errors=errors)


if __name__ == "__main__":
    console_main()
