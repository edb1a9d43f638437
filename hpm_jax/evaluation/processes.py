"""Who does what in an evaluation run by several processes (`jax.distributed`, one per host):
whole batches shared out (or every batch over every host), one writer, waiting for the others
through the workdir.

    me = Processes.current()              # this process's index among jax.process_count()
    me.owns(b)                            # batch b is this process's to attack
    me.writer                             # process 0: the only one that writes report files
    mesh = me.mesh()                      # the devices a batch runs on
    me.barrier("workdir ready")           # every process here before any goes on
    me.read_done(path, log, what)         # a stage's "done" file, as process 0 finds it
    me.wait_for(paths, what, log)         # until the other processes' result files are there
    me.agree(done)                        # process 0's verdicts (list of bools), on every process

`evaluation.batch_sharding` says how the processes share the work. A batch gives what one
process with the devices of its mesh gives, whoever attacks it, so a run killed in one mode
resumes in the other. The mesh's device count matters in one place only: AutoAttack's
bucket sizes are multiples of lcm(4, devices) (`batching.bucket_sizes`), so its rows (not
MSA's exact batches) may differ where the modes' meshes differ in that (2 hosts of 4
devices: 4 per batch in process mode, 8 in global mode), and an AutoAttack batch killed
midway is then not resumed in the other mode: its state file names other bucket_sizes
(WorkdirMismatchError; delete that batch_NNNNN.json and the batch is redone).

"process" (the default): an evaluation's fixed batches are its unit of work: batch b belongs
to process b mod N and runs on that process's devices alone (HPM judges a point in its batch,
so a batch is never split across hosts). What a batch gives depends on the seed and b only
(`AutoAttack.run(first_batch=b)`), never on N, so 1, 2 or 64 processes write the same
report. The processes meet through the workdir, which must be one filesystem all hosts see
(NFS, Filestore, a gcsfuse bucket as `launch/tpu.sh` mounts): each writes the result files
of its own batches, and every process waits for all of them before it merges a section.
Waiting polls the files instead of blocking in a collective, so a process may wait for hours
(the others' share of a long MSA) without a collective's timeout.

"global": every batch is sharded over all devices of all processes (one global mesh), and
all processes attack every batch together, in the same order (SPMD: each attack step's
programs are collectives across hosts), for a model or a batch too big for one host's
devices. The processes must make identical decisions: which batches are done is process 0's
verdict (`agree`), every process reads the attack state files to resume from the same point,
and only process 0 writes them (`writes_batches`), the batch results and x_adv. The batch
size must be a multiple of the number of all devices.

Programs that chain stages (the demo, the study) decide whether a stage is done by process
0's look at its files (`read_done`), so that every process runs it, or skips it, together.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from hpm_jax.runtime import integrity
from hpm_jax.runtime.sharding import make_mesh

BATCH_SHARDINGS = ("process", "global")
ALL = -1  # `attacker` in global mode: every process attacked the batch
_POLL_SECONDS = (0.05, 0.5)  # first and longest pause between looks at the files
_SAY_EVERY_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class Processes:
    """This process (`index`) among `count`; one process: index 0 of 1. `sharding`: how a
    batch is placed, "process" (on one process's devices) or "global" (over all of them)."""

    index: int
    count: int
    sharding: str = "process"

    def __post_init__(self):
        if self.sharding not in BATCH_SHARDINGS:
            raise ValueError(f"sharding must be one of {BATCH_SHARDINGS}, got {self.sharding!r}.")

    @classmethod
    def current(cls, sharding: str = "process") -> Processes:
        return cls(jax.process_index(), jax.process_count(), sharding)

    @property
    def is_global(self) -> bool:
        """Whether every batch spans every process (all attack it together)."""
        return self.sharding == "global"

    @property
    def writer(self) -> bool:
        """Whether this process writes the report, summary, plots, TensorBoard and log.txt."""
        return self.index == 0

    @property
    def writes_batches(self) -> bool:
        """Whether this process writes the result and attack state files of the batches it
        attacks: each its own in process mode, the writer alone in global mode."""
        return self.writer or not self.is_global

    @property
    def attacker(self) -> int:
        """Who attacks this process's batches, as a batch result records it: this process, or
        `ALL` (global mode)."""
        return ALL if self.is_global else self.index

    def owns(self, batch: int) -> bool:
        """Whether this process attacks batch `batch` (global mode: every process, each)."""
        return self.is_global or batch % self.count == self.index

    def mesh(self) -> Mesh:
        """The devices a batch runs on: this process's only (nothing crosses hosts), or in
        global mode every device of every process."""
        return make_mesh(jax.devices() if self.is_global else jax.local_devices())

    def barrier(self, name: str) -> None:
        """Every process reaches this point before any goes past it (a no-op alone)."""
        if self.count > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(name)

    def agree(self, flags: Sequence[bool]) -> list[bool]:
        """Process 0's `flags`, on every process (one broadcast; alone: `flags`). For the
        decisions after which the processes must do the same thing (attack a batch together
        in global mode, run a stage of the demo or the study): each process's own look at a
        shared filesystem may differ (a file being written, a stale cache); process 0's is
        the one they all follow."""
        flags = [bool(f) for f in flags]
        if self.count == 1 or not flags:
            return flags
        from jax.experimental import multihost_utils

        shared = multihost_utils.broadcast_one_to_all(np.asarray(flags, np.bool_))
        return [bool(f) for f in np.asarray(shared)]

    def read_done(
        self, path: str, log: Callable[[str], Any] | None, what: str
    ) -> dict[str, Any] | None:
        """The content of a stage's "done" file (JSON, `integrity.write_json`) when process 0
        finds it whole, on every process; None on every process when it does not (a damaged
        file is named to `log` as `what`, e.g. "the stage runs again"). A process that cannot
        read what process 0 read gets the error naming the file (the workdir is then not on
        one filesystem that all hosts share)."""
        content = integrity.read_json_or_none(path, log if self.writer else None, what)
        if not self.agree([content is not None])[0]:
            return None
        return content if content is not None else integrity.read_json(path)

    def wait_for(
        self, paths: Sequence[str], what: str, log: Callable[[str], Any] | None = None
    ) -> None:
        """Return once every file of `paths` exists (the other processes write them); say
        every minute what is still missing. One look per pause, at the first file missing
        (a shared filesystem's metadata calls can be slow and billed)."""
        missing = list(paths)
        pause, start, said = _POLL_SECONDS[0], time.monotonic(), time.monotonic()
        while missing:
            if os.path.exists(missing[0]):
                missing.pop(0)
                continue
            if log is not None and time.monotonic() - said > _SAY_EVERY_SECONDS:
                said = time.monotonic()
                log(f"[evaluate] process {self.index}: waiting for {len(missing)} {what} from "
                    f"other processes ({time.monotonic() - start:.0f} s so far)")  # fmt: skip
            time.sleep(pause)
            pause = min(2 * pause, _POLL_SECONDS[1])
