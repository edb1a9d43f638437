"""Periodic, asynchronous Orbax checkpoints of the training state, resumable after a kill.

    checkpoints = TrainCheckpoints(workdir, every_steps=500, keep=3)
    step = checkpoints.latest_step()                   # None in a fresh workdir
    state = checkpoints.restore(step, abstract_state, run_info)   # checks it is this run's
    checkpoints.save(step, state, run_info)            # only every `every_steps` (or force)
    checkpoints.close()                                # waits for the last write

Each checkpoint WORKDIR/checkpoints/<step>/ holds two items: `state` (the training state)
and `run` (JSON: the config and the identity of the run). Orbax writes a checkpoint into a
temporary directory and renames it when every array is written (on GCS it marks it with a
commit file), so a checkpoint that a SIGKILL interrupts is never listed as the latest:
`latest_step` only sees finalized ones, and the next run deletes the leftovers. A finalized
checkpoint damaged afterwards (a disk or copy fault: Orbax's JSON metadata, OCDBT manifests
and compressed chunks fail to read when torn) is named in one line by `restore_latest`,
moved to WORKDIR/damaged_checkpoints/ and the run resumes from the one before (or step 0):
checkpoints are a cache of the training so far.

Resuming from a workdir written by another run (a different model, dataset, objective or
seed) fails with `WorkdirMismatchError` (`hpm_jax.runtime.identity`) naming the differing
keys; other config changes (more steps, another evaluation schedule) are allowed and listed
on the console.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

from hpm_jax.runtime.identity import WorkdirMismatchError, check_identity

CHECKPOINTS = "checkpoints"
DAMAGED = "damaged_checkpoints"


def _key_name(key: Any) -> str:
    # Dict keys, sequence indices and NamedTuple fields (optax states) all by their bare name:
    # Orbax's metadata turns NamedTuples into dicts, so `.trace` must compare equal to `trace`.
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {
        "/".join(_key_name(k) for k in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


class TrainCheckpoints:
    """An Orbax `CheckpointManager` for one run's training state (keep-last-N, async)."""

    def __init__(self, workdir: str, *, every_steps: int, keep: int, async_save: bool = True):
        if every_steps < 1 or keep < 1:
            raise ValueError(
                f"checkpoint.every_steps ({every_steps}) and checkpoint.keep ({keep}) must be >= 1."
            )
        self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
        self.every_steps = every_steps
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # what a killed run left half-written
        )
        # Handlers named up front, so metadata can be read before anything is restored.
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "run": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        """The step of the newest finalized checkpoint, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(
        self, step: int, state: Any, run_info: Mapping[str, Any], *, force: bool = False
    ) -> bool:
        """Start writing `state` at `step` if it is a checkpoint step (or `force`); returns
        whether it did. The write continues in the background; `state` may then be donated."""
        # Decided here: Orbax's own interval policy would also save the first step of a run.
        if not force and step % self.every_steps:
            return False
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), run=ocp.args.JsonSave(dict(run_info))
            ),
            force=True,
        )

    def run_info(self, step: int) -> dict[str, Any]:
        restored = self._manager.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore()))
        return restored["run"]

    def restore(self, step: int, abstract_state: Any, run_info: Mapping[str, Any]) -> Any:
        """The state saved at `step`, placed as `abstract_state`'s shardings say.

        Raises:
          WorkdirMismatchError: the checkpoint was written by another run (its identity differs)
            or holds a differently shaped state; the message lists the differences.
        """
        stored = self.run_info(step)
        fix = (
            f"Use a new --workdir for a different run, or delete {self.directory} to start "
            "this one over."
        )
        check_identity(
            stored["identity"],
            run_info["identity"],
            what=f"{self.directory} holds checkpoints of a different run (step {step})",
            fix=fix,
        )
        stored_shapes = _shapes(self._manager.item_metadata(step)["state"])
        wanted = _shapes(abstract_state)
        mismatched = [
            f"{k}: checkpoint {stored_shapes.get(k)}, now {wanted.get(k)}"
            for k in sorted(set(stored_shapes) | set(wanted))
            if stored_shapes.get(k) != wanted.get(k)
        ]
        if mismatched:
            shown = "\n  ".join(mismatched[:20])
            raise WorkdirMismatchError(
                f"The training state in {self.directory} (step {step}) does not fit this "
                f"config ({len(mismatched)} differences, e.g. weight averaging switched on or "
                f"off):\n  {shown}\n{fix}"
            )
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
        return restored["state"]

    def restore_latest(
        self, abstract_state: Any, run_info: Mapping[str, Any], log: Callable[[str], Any]
    ) -> tuple[int | None, Any, dict[str, Any] | None]:
        """(step, state, stored run info) of the newest checkpoint that reads back whole,
        or (None, None, None). A damaged one is named to `log` and moved aside; a checkpoint
        of another run is WorkdirMismatchError (not damage: nothing is moved)."""
        for step in sorted(self.all_steps(), reverse=True):
            try:
                stored = self.run_info(step)
                return step, self.restore(step, abstract_state, run_info), stored
            except WorkdirMismatchError:
                raise
            except Exception as e:  # Orbax and TensorStore raise many types on a torn file
                aside = os.path.join(os.path.dirname(self.directory), DAMAGED, str(step))
                reason = " ".join(str(e).split())[:160] or type(e).__name__
                log(f"checkpoint {self.directory}/{step} is damaged ({reason}); moved to "
                    f"{aside}, resuming from the checkpoint before it.")  # fmt: skip
                if jax.process_index() == 0:  # one shared directory: one process moves
                    os.makedirs(os.path.dirname(aside), exist_ok=True)
                    shutil.rmtree(aside, ignore_errors=True)
                    shutil.move(os.path.join(self.directory, str(step)), aside)
                self._manager.reload()
        return None, None, None

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for the last write and stop the manager's threads (a second call does nothing)."""
        if self._manager is not None:
            self._manager.wait_until_finished()
            self._manager.close()
            self._manager = None
