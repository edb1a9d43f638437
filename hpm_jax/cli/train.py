"""`hpm-train` (and `python -m hpm_jax.train`): the flags around `hpm_jax.training.train.run`.

    hpm-train --config=configs/fashion_mnist.py --workdir=/tmp/fmnist_at
    hpm-train --config=configs/imagenet.py --check_config     # the config alone; writes nothing
    hpm-train --config=configs/cifar10.py --workdir=/tmp/wrn \\
        --config.init.checkpoint=/tmp/carmon2019 --config.train.num_steps=2000
    # several hosts: the same command on each, plus
    #   --coordinator_address=HOST0:1234 --num_processes=N --process_id=I   (or --multihost)
"""

from __future__ import annotations

import json

import jax
from absl import flags

from hpm_jax import cli, config_lib
from hpm_jax.cli import multihost

PROG = "hpm-train"
with cli.program_imports(PROG):  # the core install: one line naming the extra
    from hpm_jax.training import train
_CONFIG = cli.define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and the final model go here.")
_CHECK_CONFIG = flags.DEFINE_bool(
    "check_config", False, "Only load and check the config (sections, keys, values, the model "
    "it builds, init.checkpoint named), print one line and exit: reads no data, writes "
    "nothing, needs no --workdir. launch/tpu.sh runs it locally before it creates a TPU."
)  # fmt: skip


def main(argv: list[str], overrides: list[str]) -> None:
    del argv  # cli.run refuses positional arguments
    if _CHECK_CONFIG.value:
        cli.require(PROG, config=_CONFIG.value)
        config = config_lib.load_config(_CONFIG.value, overrides)
        train.check_config(config)
        what = f"{config.model.name} ({config.model.head} head) on {config.dataset.name}"
        print(f"{PROG}: config OK: {_CONFIG.value}: {what}, "
              f"init.checkpoint={config.init.checkpoint!r}")  # fmt: skip
        return
    cli.require(PROG, config=_CONFIG.value, workdir=_WORKDIR.value)
    config = config_lib.load_config(_CONFIG.value, overrides)
    cli.default_verbosity()  # WARNING unless --verbosity/-v is given: Orbax logs reads at INFO
    multihost.initialize()
    summary = train.run(config, _WORKDIR.value)
    if jax.process_index() == 0:
        print(json.dumps(summary, indent=2), flush=True)


def console_main() -> None:
    """The `hpm-train` console script: setup errors as one line, exit code 2 (hpm_jax.cli)."""
    # else --help lists neither --config nor, as hpm-train, any flag
    cli.show_in_help(__name__, _CONFIG, *multihost.FLAGS)
    cli.run(PROG, main, user_errors=train.SETUP_ERRORS)


if __name__ == "__main__":
    console_main()
