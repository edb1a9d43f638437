"""What `AutoAttack.run` returns: per-point flags, accuracies after each attack, checks.

report = AutoAttack(target, eps=8 / 255).run(x, y, batch_size=500)
report.robust_accuracy, report.robust_accuracy_after["apgd-ce"], report.flagged
report.to_json("eval/report.json")          # everything but x_adv
np.save("eval/x_adv.npy", report.x_adv)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from hpm_jax.attacks import checks, versions
from hpm_jax.attacks import precision as precision_lib

# How a randomized model's points are judged (`rand_verdict`).
RAND_VERDICTS = {
    "rerun": "the model re-run once on each attack's output decides (the reference's rule)",
    "any_draw": "a break by any random draw during an attack counts, and the final "
    "re-evaluation must agree (stricter than the reference)",
}


@dataclasses.dataclass
class AutoAttackReport:
    """The result of `AutoAttack.run`.

    robust: (n,) bool, the per-sample worst case (correct on the clean image, after every
    attack and in the final re-evaluation of x_adv); robust_accuracy is its mean. For a
    randomized model, `rand_verdict` says how it was judged (RAND_VERDICTS): by default, as
    the reference, by one run of the model on each attack's output, the final re-evaluation
    reported beside.
    final_accuracy: the judge's accuracy on x_adv alone, re-evaluated in the original batches.
    robust_accuracy_after: robust accuracy after each attack of the chain, in order (before
    the final re-evaluation); times: seconds spent in each attack (summed over resumes).
    checks: the sanity checks; `flagged` lists the suspicious ones.
    precision: the matmul / convolution precision every program ran at; logit_tolerance:
    the relative decision margin under which a changed verdict was a near tie (checks,
    resume; `precision`)."""

    x_adv: np.ndarray
    robust: np.ndarray
    clean: np.ndarray
    clean_accuracy: float
    robust_accuracy: float
    final_accuracy: float
    robust_accuracy_after: dict[str, float]
    times: dict[str, float]
    attacks: list[str]
    attack_settings: dict[str, dict[str, Any]]
    version: str
    norm: str
    eps: float
    seed: int
    batch_size: int
    bucket_sizes: tuple[int, ...]
    num_examples: int
    num_devices: int
    checks: list[checks.CheckResult]
    resumed: bool = False
    rand_verdict: str | None = None
    loop: str = "auto"
    precision: str = precision_lib.DEFAULT
    logit_tolerance: float = precision_lib.FLOAT32_FLOOR

    @property
    def flagged(self) -> list[checks.CheckResult]:
        return [c for c in self.checks if c.flagged]

    def to_dict(self) -> dict[str, Any]:
        """Everything but x_adv (save that with np.save(path, report.x_adv))."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "x_adv"}
        d["robust"] = np.asarray(self.robust, bool).tolist()
        d["clean"] = np.asarray(self.clean, bool).tolist()
        d["bucket_sizes"] = list(self.bucket_sizes)
        d["checks"] = [c.to_dict() for c in self.checks]
        return json.loads(json.dumps(d, default=versions.jsonable))

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text
