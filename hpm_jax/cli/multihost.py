"""The multi-host flags every program that runs on a pod shares (hpm-train, hpm-evaluate),
defined once here, and joining the processes with `jax.distributed`.

    from hpm_jax.cli import multihost
    cli.show_in_help(__name__, _CONFIG, *multihost.FLAGS)  # --help lists them
    multihost.initialize()                                 # in main, before any device is used

On every host the same command, plus either `--multihost` (Cloud TPU pods, SLURM: the
settings come from the environment) or all three of
`--coordinator_address=HOST0:1234 --num_processes=N --process_id=I` (anywhere, e.g. N
processes on one machine). Without them the program runs as one process. The flags are
defined when this module is first imported, so two programs imported in one interpreter
(the tests) share them instead of defining them twice.
"""

from __future__ import annotations

import jax
from absl import app, flags

COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-host runs."
)
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..N-1.")
MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "jax.distributed.initialize() with settings detected from the "
    "environment (Cloud TPU pods, SLURM); instead of the three flags above."
)  # fmt: skip
CPU_COLLECTIVES = flags.DEFINE_string(
    "cpu_collectives", "gloo", "Collectives of the CPU backend in multi-process runs."
)
FLAGS = (COORDINATOR, NUM_PROCESSES, PROCESS_ID, MULTIHOST, CPU_COLLECTIVES)


def initialize() -> None:
    """Join the processes of a multi-host run (before anything touches a device); nothing
    without the flags. Some but not all of the three explicit flags is a UsageError."""
    explicit = [COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value]
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise app.UsageError(
                "Give all of --coordinator_address, --num_processes and --process_id, or none."
            )
        jax.config.update("jax_cpu_collectives_implementation", CPU_COLLECTIVES.value)
        jax.distributed.initialize(
            coordinator_address=COORDINATOR.value,
            num_processes=NUM_PROCESSES.value,
            process_id=PROCESS_ID.value,
        )
    elif MULTIHOST.value:
        jax.config.update("jax_cpu_collectives_implementation", CPU_COLLECTIVES.value)
        jax.distributed.initialize()
