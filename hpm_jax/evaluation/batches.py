"""One attack section of an evaluation, batch by batch: each fixed batch a unit of work with its
own result file, the batches shared out over the processes, the results merged in batch order.

    results = BatchResults(os.path.join(workdir, "state", "msa_hpm"))
    report, x_adv, owners = run_by_batches(attack, x, y, batch_size, results, processes,
                                           merge_msa, log=log, on_batch=bar)
    # attack(x_b, y_b, first_batch=b, state_path=..., run_checks=b == 0) -> (report dict, x_adv_b)

A batch's attack is `AutoAttack.run` / `mixed_surrogate_attack` on that batch alone with
`first_batch=b`, which keys its randomness by the batch's index in the whole evaluation: each
batch gets exactly what one run over all the data gives it (a batch's attacks never look at
another batch), so the merged report equals that run's whatever the number of processes, and
whichever process attacked which batch. With `evaluation.batch_sharding="global"` every process
attacks every batch, together, and the writer alone writes the files below; which batches are
done is the writer's verdict (`Processes.agree`), so that all attack the same ones.

Files, in the section's directory (`WORKDIR/state/NAME/`):
* `batch_00012.json` (+ `.prev`, `.adv/`): the AutoAttack state of batch 12 while it runs; a
  killed run resumes it there (`hpm_jax.attacks.resume`), on whichever process owns the
  batch in the new run. Deleted once the batch's result is written.
* `batch_00012.npz`: the batch's result, written atomically by the one process that owned it
  (global mode: by the writer): x_adv and the attack's report (JSON, per-point flags
  included). A batch with a result is done; a run restarted with another number of processes,
  or in the other mode, skips it.

`merge_autoattack` / `merge_msa` put the batches' reports together as one run's: per-point
flags concatenated, accuracies counted over all points, times summed; the opening sanity
checks are batch 0's (they look at the first batch, as in one run) and the closing ones are
recomputed over all points.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from hpm_jax.attacks import checks
from hpm_jax.evaluation.processes import Processes
from hpm_jax.runtime import integrity

_CLOSING = ("square", "final_reevaluation", "perturbation")  # AutoAttack's checks after the chain


class BatchResults:
    """The per-batch files of one section (see the module docstring)."""

    def __init__(self, directory: str):
        self.directory = directory

    def result_path(self, batch: int) -> str:
        return os.path.join(self.directory, f"batch_{batch:05d}.npz")

    def state_path(self, batch: int) -> str:
        return os.path.join(self.directory, f"batch_{batch:05d}.json")

    def done(self, batch: int, log: Callable[[str], Any] | None = None) -> bool:
        """Whether batch `batch` has a readable result; a damaged one is named to `log` and
        counts as not done (the batch is attacked again)."""
        try:
            self.load(batch)
        except FileNotFoundError:
            return False
        except integrity.DamagedFileError as e:
            if log is not None:
                log(f"[evaluate] {e.path} is damaged ({e.reason}); batch {batch} is attacked again")
            return False
        return True

    def save(self, batch: int, report: dict[str, Any], x_adv: np.ndarray, process: int) -> None:
        """The batch's result, atomically; then its attack state, no longer needed, goes.
        `process`: who attacked it (`Processes.attacker`: an index, or `processes.ALL`)."""
        os.makedirs(self.directory, exist_ok=True)
        meta = {"batch": batch, "process": process, "report": report}
        with integrity.atomic_file(self.result_path(batch)) as f:
            np.savez_compressed(f, x_adv=x_adv, meta=np.asarray(json.dumps(meta)))
        state = self.state_path(batch)
        for path in (state, state + ".prev"):
            if os.path.exists(path):
                os.remove(path)
        shutil.rmtree(state + ".adv", ignore_errors=True)

    def load(self, batch: int) -> tuple[dict[str, Any], np.ndarray, int]:
        """(report, x_adv, the process that attacked it, `processes.ALL` for all of them
        together). A zip checks itself (a CRC per
        member, its directory at the end): a torn or edited file is a DamagedFileError."""
        path = self.result_path(batch)
        try:
            with np.load(path, allow_pickle=False) as f:
                meta, x_adv = json.loads(str(f["meta"])), f["x_adv"]
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise integrity.DamagedFileError(
                path, f"{type(e).__name__}: {e}", "delete it and run again: that batch is redone"
            ) from None
        if meta.get("batch") != batch:
            raise integrity.DamagedFileError(path, f"it holds batch {meta.get('batch')}")
        return meta["report"], x_adv, int(meta["process"])


Attack = Callable[..., tuple[dict[str, Any], np.ndarray]]
Merge = Callable[[list[dict[str, Any]], np.ndarray, np.ndarray], dict[str, Any]]


def run_by_batches(
    attack: Attack,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    results: BatchResults,
    processes: Processes,
    merge: Merge,
    *,
    log: Callable[[str], Any] | None = None,
    on_batch: Callable[[int, int], Any] | None = None,
) -> tuple[dict[str, Any], np.ndarray, list[int]]:
    """Attack this process's batches that have no result yet, wait for the other processes'
    results, merge. Returns (the merged report, x_adv of all points, the process that attacked
    each batch). `on_batch(done, n)`: `done` of this process's n batches are done (called
    before the first and after each). In global mode every process attacks every batch not
    done by the writer's account, and the writer alone saves the results."""
    n_batches = -(-len(x) // batch_size)
    mine = [b for b in range(n_batches) if processes.owns(b)]
    done = [results.done(b, log) for b in mine]
    if processes.is_global:  # all attack every batch together: all skip the same ones
        done = processes.agree(done)
    todo = [b for b, d in zip(mine, done, strict=True) if not d]
    if on_batch is not None:
        on_batch(len(mine) - len(todo), len(mine))
    for i, b in enumerate(todo):
        rows = slice(b * batch_size, (b + 1) * batch_size)
        report, x_adv = attack(x[rows], y[rows], first_batch=b, state_path=results.state_path(b),
                               run_checks=b == 0)  # fmt: skip
        if processes.writes_batches:
            results.save(b, report, x_adv, processes.attacker)
        if on_batch is not None:
            on_batch(len(mine) - len(todo) + i + 1, len(mine))
    paths = [results.result_path(b) for b in range(n_batches)]
    processes.wait_for(paths, f"batch results in {results.directory}", log)
    loaded = [results.load(b) for b in range(n_batches)]
    x_adv = np.concatenate([part[1] for part in loaded])
    return merge([part[0] for part in loaded], x_adv, x), x_adv, [part[2] for part in loaded]


def _count(fraction: float, n: int) -> int:
    """The number of points behind an accuracy of a batch of n (exact: n is far below 2**52)."""
    return round(fraction * n)


def merge_autoattack(parts: list[dict[str, Any]], x_adv: np.ndarray, x: np.ndarray):
    """The `AutoAttackReport.to_dict()` of one run over all batches, from the batches' own
    (in batch order; batch 0 ran the opening checks)."""
    first = parts[0]
    sizes = [p["num_examples"] for p in parts]
    n = sum(sizes)
    clean = np.concatenate([np.asarray(p["clean"], bool) for p in parts])
    robust = np.concatenate([np.asarray(p["robust"], bool) for p in parts])

    def over_all(get: Callable[[dict[str, Any]], float]) -> float:
        return sum(_count(get(p), k) for p, k in zip(parts, sizes, strict=True)) / n

    after = {a: over_all(lambda p, a=a: p["robust_accuracy_after"][a]) for a in first["attacks"]}
    reevaluations = [c for p in parts for c in p["checks"] if c["name"] == "final_reevaluation"]
    lost, regained, ties = (sum(c["details"][key] for c in reevaluations)
                            for key in ("lost", "regained", "near_ties"))  # fmt: skip
    # The check counts changed verdicts; these flags hold the batches' summed counts (the
    # near ties as changed verdicts at near-tie points).
    was = np.r_[np.ones(lost, bool), np.zeros(regained, bool), np.ones(ties, bool)]
    tie = np.r_[np.zeros(lost + regained, bool), np.ones(ties, bool)]
    closing = [
        checks.check_square({"clean": float(clean.mean()), **after}),
        checks.check_final_reevaluation(was, ~was, tie),
        checks.check_perturbation(x_adv, x, norm=first["norm"], eps=first["eps"]),
    ]
    opening = [c for c in first["checks"] if c["name"] not in _CLOSING]
    times = {a: sum(p["times"].get(a, 0.0) for p in parts) for a in first["attacks"]}
    return {
        **first,
        "robust": robust.tolist(),
        "clean": clean.tolist(),
        "clean_accuracy": float(clean.mean()),
        "robust_accuracy": float(robust.mean()),
        "final_accuracy": over_all(lambda p: p["final_accuracy"]),
        "robust_accuracy_after": after,
        "times": times,
        "num_examples": n,
        "checks": [*opening, *[json.loads(json.dumps(c.to_dict())) for c in closing]],
        "resumed": any(p["resumed"] for p in parts),
    }


def merge_msa(parts: list[dict[str, Any]], x_adv: np.ndarray, x: np.ndarray):
    """The `MSAReport.to_dict()` of one run over all batches, from the batches' own."""
    chain = merge_autoattack([p["chain"] for p in parts], x_adv, x)
    after = chain["robust_accuracy_after"]
    per_surrogate = {  # after each surrogate's last attack, as mixed_surrogate_attack says
        name: after[[a for a in after if a.endswith(f"@{name}")][-1]]
        for name in parts[0]["surrogates"]
    }
    return {
        **parts[0],
        "clean_accuracy": chain["clean_accuracy"],
        "robust_accuracy": chain["robust_accuracy"],
        "final_reevaluation_accuracy": chain["final_accuracy"],
        "per_surrogate": per_surrogate,
        "robust_accuracy_after": after,
        "robust": chain["robust"],
        "chain": chain,
    }
