"""Training metrics to TensorBoard event files, `metrics.jsonl` and the console.

    writer = MetricWriter(workdir, start_step=0)
    writer.write(100, {"loss": 1.23, "images_per_second": 850.0})
    writer.close()
    read_jsonl(os.path.join(workdir, "metrics.jsonl"))     # [{"step": 100, "loss": 1.23, ...}]

Event files are written by tensorboardX (pure Python, no TensorFlow) under WORKDIR/tensorboard;
`tensorboard --logdir WORKDIR/tensorboard` shows them. `metrics.jsonl` holds one JSON object
per logged step. A run resumed from step k first drops what an interrupted run had logged
after k (those steps are recomputed), in both the JSON lines and TensorBoard (purge_step).
Only process 0 writes; the others get a writer that does nothing.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from hpm_jax.runtime import integrity
from hpm_jax.runtime.extras import optional_import

tensorboardX = optional_import("tensorboardX", extra="train")

JSONL = "metrics.jsonl"
TENSORBOARD = "tensorboard"


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (a torn last line, from a killed run, is skipped)."""
    return _read_jsonl(path)[0]


def _read_jsonl(path: str) -> tuple[list[dict[str, Any]], int]:
    """(records, number of damaged lines). Each record is a JSON object on its own line:
    a torn, zeroed or garbled line cannot parse as one and is dropped."""
    if not os.path.exists(path):
        return [], 0
    records, damaged = [], 0
    with open(path, "rb") as f:
        for line in f:
            try:
                record = json.loads(line.decode())
            except (UnicodeDecodeError, json.JSONDecodeError):
                record = None
            if isinstance(record, dict):
                records.append(record)
            elif line.strip(b"\n"):
                damaged += 1
    return records, damaged


def _plain(value: Any) -> float | int:
    value = np.asarray(value).item()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # JSON has no NaN/inf; keep them visible as strings
    return value


class MetricWriter:
    """Scalars per step to TensorBoard and JSON lines (process 0 only)."""

    def __init__(self, workdir: str, *, start_step: int = 0, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl_path = os.path.join(workdir, JSONL)
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        records, damaged = _read_jsonl(self._jsonl_path)
        if damaged:  # a log, not a state: named and dropped, the run goes on
            print(f"{self._jsonl_path}: {damaged} damaged line(s) dropped.", flush=True)
        kept = [r for r in records if r.get("step", 0) <= start_step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        integrity.write_bytes(self._jsonl_path, text.encode())  # the old file whole till then
        self._jsonl = open(self._jsonl_path, "a")
        self._tb = tensorboardX.SummaryWriter(
            os.path.join(workdir, TENSORBOARD), purge_step=start_step + 1 if start_step else None
        )

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)):
                self._tb.add_scalar(name, value, global_step=int(step))
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def format_progress(step: int, num_steps: int, scalars: Mapping[str, Any], keys) -> str:
    """One console line: 'step 100/1000  loss 1.2345  adv_acc 0.41  850 images/s'."""
    parts = [f"step {step}/{num_steps}"]
    for key in keys:
        if key in scalars:
            value = _plain(scalars[key])
            parts.append(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}")
    return "  ".join(parts)
