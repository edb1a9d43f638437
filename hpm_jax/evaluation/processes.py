"""Who does what in an evaluation run by several processes (`jax.distributed`, one per host):
whole batches shared out, one writer, waiting for the others through the workdir.

    me = Processes.current()              # this process's index among jax.process_count()
    me.owns(b)                            # batch b is this process's to attack
    me.writer                             # process 0: the only one that writes report files
    mesh = me.mesh()                      # this process's own devices: a batch never spans hosts
    me.barrier("workdir ready")           # every process here before any goes on
    me.agree(os.path.exists(done))        # process 0's answer, on every process
    me.read_done(path, log, what)         # a stage's "done" file, as process 0 finds it
    me.wait_for(paths, what, log)         # until the other processes' result files are there

An evaluation's fixed batches are its unit of work: batch b belongs to process
b mod N and runs on that process's devices alone (HPM judges a point in its batch, so a batch
is never split across hosts). What a batch gives depends on the seed and b only
(`AutoAttack.run(first_batch=b)`), never on N, so 1, 2 or 64 processes write the same
report. The processes meet through the workdir, which must be one filesystem all hosts see
(NFS, Filestore, a gcsfuse bucket as `launch/tpu.sh` mounts): each writes the result files
of its own batches, and every process waits for all of them before it merges a section.
Waiting polls the files instead of blocking in a collective, so a process may wait for hours
(the others' share of a long MSA) without a collective's timeout. Programs that chain stages
(the demo, the study) decide whether a stage is done by process 0's look at its files
(`read_done`), so that every process runs it, or skips it, together.
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

_POLL_SECONDS = (0.05, 0.5)  # first and longest pause between looks at the files
_SAY_EVERY_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class Processes:
    """This process (`index`) among `count`; one process: index 0 of 1."""

    index: int
    count: int

    @classmethod
    def current(cls) -> Processes:
        return cls(jax.process_index(), jax.process_count())

    @property
    def writer(self) -> bool:
        """Whether this process writes the report, summary, plots, TensorBoard and log.txt."""
        return self.index == 0

    def owns(self, batch: int) -> bool:
        return batch % self.count == self.index

    def mesh(self) -> Mesh:
        """The devices of this process only: its batches run there, nothing crosses hosts."""
        return make_mesh(jax.local_devices())

    def barrier(self, name: str) -> None:
        """Every process reaches this point before any goes past it (a no-op alone)."""
        if self.count > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(name)

    def agree(self, value: bool) -> bool:
        """Process 0's `value` on every process (one collective; alone: `value`). For the
        decisions after which the processes must do the same thing, e.g. run a stage whose
        programs they run together: each process's own look at a shared filesystem may differ
        (a file being written, a stale cache), process 0's is the one they follow."""
        if self.count == 1:
            return bool(value)
        from jax.experimental import multihost_utils

        return bool(multihost_utils.broadcast_one_to_all(np.int32(bool(value))))

    def read_done(
        self, path: str, log: Callable[[str], Any] | None, what: str
    ) -> dict[str, Any] | None:
        """The content of a stage's "done" file (JSON, `integrity.write_json`) when process 0
        finds it whole, on every process; None on every process when it does not (a damaged
        file is named to `log` as `what`, e.g. "the stage runs again"). A process that cannot
        read what process 0 read gets the error naming the file (the workdir is then not on
        one filesystem that all hosts share)."""
        content = integrity.read_json_or_none(path, log if self.writer else None, what)
        if not self.agree(content is not None):
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
