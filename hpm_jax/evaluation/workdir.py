"""What an evaluation's workdir holds, and making it ready: resume the same evaluation, refuse
(or, with overwrite, discard) another one.

    prepare_workdir(workdir, identity)    # identity: checkpoint, model hash, data hash, settings

WORKDIR/state/evaluation.json records the identity of the evaluation the state files belong
to; an evaluation of another checkpoint, data or settings is a `WorkdirMismatchError`
(`hpm_jax.runtime.identity`) naming what changed, before anything is touched. It is written
atomically with a checksum; a damaged copy is an `integrity.DamagedFileError` saying so and
what to do (the programs: one line, exit 2), never taken for another evaluation.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hpm_jax.evaluation import log as evaluation_log
from hpm_jax.runtime import integrity
from hpm_jax.runtime.identity import check_identity

REPORT, SUMMARY, STATE_DIR, ADV_DIR = "report.json", "summary.md", "state", "adversarial"
IDENTITY = "evaluation.json"  # in STATE_DIR: what the state there belongs to
MODEL_INFO = "model_info.json"  # RobustBench's fields, for --robustbench models
# Everything an evaluation writes: what `overwrite` deletes.
OUTPUTS = (REPORT, SUMMARY, STATE_DIR, ADV_DIR, "robustness.png", "eps_curves.png", MODEL_INFO,
           evaluation_log.LOG, evaluation_log.TENSORBOARD)  # fmt: skip


def prepare_workdir(
    workdir: str, identity: dict[str, Any], *, overwrite: bool = False, write: bool = True
) -> None:
    """Make `workdir` ready for the evaluation `identity` describes. Its state and report are
    resumed when they belong to the same evaluation; another evaluation's are an
    WorkdirMismatchError (nothing is touched) or, with `overwrite`, deleted. `write=False`
    only checks (the processes of a multi-host run other than the writer)."""
    import shutil

    path = os.path.join(workdir, STATE_DIR, IDENTITY)
    current = json.loads(json.dumps(identity))
    stored = None
    if os.path.isfile(path) and not overwrite:
        stored = integrity.read_json(
            path,
            fix=f"it records which checkpoint, data and settings the state in {workdir} belongs "
            "to. If that is this evaluation, delete the file and run again: it resumes (each "
            "attack's state still checks the data and settings). Else pass --overwrite "
            "(run(..., overwrite=True)) to start afresh, or use another --workdir",
        )
    if stored is not None and not overwrite:
        check_identity(
            stored,
            current,
            what=f"{workdir} holds an evaluation with other settings",
            fix="resuming it would mix the two. Pass --overwrite (run(..., overwrite=True)) to "
            "discard it, or another --workdir.",
            inline=4,
        )
    if not write:
        return
    if overwrite:
        for name in OUTPUTS:
            target = os.path.join(workdir, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.remove(target)
        stored = None
    if stored is None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        integrity.write_json(path, current)
