"""The evaluation's console, log file, progress bars and TensorBoard record.

    log = EvaluationLog(workdir, console=print, progress="auto")   # appends to workdir/log.txt
    AutoAttack(fn, ..., log=log).run(x, y, batch_size=250)
    with log.bar("autoattack_fc", total=40, initial=0) as bar:   # one per section, per batch
        bar.set(1)
    log.close()
    write_tensorboard(report, workdir)      # results and settings: workdir/tensorboard

Every line the attacks log (AutoAttack's wording: "initial accuracy: ...", "apgd-ce - 1/1 -
...", "robust accuracy: ...") goes to `log.txt` and to `console`. One progress bar per
section (AutoAttack on a head, MSA), per batch this process attacks, with rate and ETA
(`hpm_jax.runtime.progress`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from hpm_jax.evaluation import provenance
from hpm_jax.runtime import progress

LOG = "log.txt"
TENSORBOARD = "tensorboard"  # as the training's (hpm_jax.training.metrics)


class EvaluationLog:
    """A `log` callable for the attacks: each line to log.txt and to `console`. Without a
    workdir (the processes of a multi-host run other than the writer): to `console` only."""

    def __init__(self, workdir: str | None, *, console: Callable[[str], Any] | None = print,
                 progress: str | None = "auto"):  # fmt: skip
        # print would write through live bars; echo writes above them
        self.console = progress_echo if console is print else console
        self.progress = "off" if progress is None else progress
        self.path = None if workdir is None else os.path.join(workdir, LOG)
        self._file = None if self.path is None else open(self.path, "a")
        if self._file is not None:
            self._file.write(f"# {provenance.now()} evaluation (hpm-jax "
                             f"{provenance.package_version('hpm-jax')})\n")  # fmt: skip
            self._file.flush()

    def __call__(self, text: str) -> None:
        if self._file is not None:
            self._file.write(text + "\n")
            self._file.flush()
        if self.console is not None:
            self.console(text)

    def bar(self, name: str, total: int, initial: int = 0) -> progress.Bar:
        """A progress bar (in this log's mode) over `total` batches, `initial` done before."""
        return progress.Bar(name, total, unit="batch", initial=initial, mode=self.progress)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def progress_echo(text: str) -> None:
    progress.echo(text)


def _scalars(report: dict[str, Any]) -> dict[str, float]:
    """The report's accuracies as TensorBoard tags: HEAD/clean_accuracy, HEAD/KIND/... ."""
    out: dict[str, float] = {}
    for head, row in report["heads"].items():
        out[f"{head}/clean_accuracy"] = row["clean_accuracy"]
        for kind, entry in row.items():
            if not isinstance(entry, dict):
                continue
            for key in ("robust_accuracy", "final_reevaluation_accuracy"):
                if isinstance(entry.get(key), int | float):
                    out[f"{head}/{kind}/{key}"] = entry[key]
            for attack, acc in entry.get("robust_accuracy_after", {}).items():
                out[f"{head}/{kind}/after/{attack}"] = acc
    return out


def hparams(report: dict[str, Any]) -> dict[str, Any]:
    """The settings as TensorBoard hparams (scalars and strings only)."""
    out: dict[str, Any] = {"checkpoint": str(report["checkpoint"]), "dataset": report["dataset"],
                           "num_examples": report["num_examples"]}  # fmt: skip
    for key, value in report["settings"].items():
        if isinstance(value, bool | int | float | str):
            out[f"evaluation.{key}"] = value
        elif value is not None:
            out[f"evaluation.{key}"] = str(value)
    return out


def write_tensorboard(report: dict[str, Any], workdir: str) -> str | None:
    """Results (scalars at step 0; robust accuracy vs eps curves at step = 1e4 * eps) and the
    settings (hparams) to event files under workdir/tensorboard. None without tensorboardX."""
    try:
        from tensorboardX import SummaryWriter
    except ModuleNotFoundError:
        return None
    logdir = os.path.join(workdir, TENSORBOARD)
    writer = SummaryWriter(logdir)
    try:
        scalars = _scalars(report)
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, global_step=0)
        for head, points in report.get("curves", {}).items():
            for eps, acc in points.items():
                writer.add_scalar(f"{head}/curve_robust_accuracy", acc,
                                  global_step=round(1e4 * float(eps)))  # fmt: skip
        metrics = {f"hparam/{k}": v for k, v in scalars.items() if not k.count("/after/")}
        writer.add_hparams(hparams(report), metrics, name="hparams")
    finally:
        writer.close()
    return logdir
