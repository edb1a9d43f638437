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

from hpm_jax.extras import optional_import

tensorboardX = optional_import("tensorboardX", extra="train")

JSONL = "metrics.jsonl"
TENSORBOARD = "tensorboard"


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (a torn last line, from a killed run, is skipped)."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


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
        kept = [r for r in read_jsonl(self._jsonl_path) if r.get("step", 0) <= start_step]
        tmp = self._jsonl_path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, self._jsonl_path)  # the old file stays whole until the new one is
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
