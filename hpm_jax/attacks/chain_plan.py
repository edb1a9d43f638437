"""An AutoAttack run's plan, fixed before the first attack: the buckets a batch may shrink
into, the fixed batches, the attacks fitted to the model's classes, their settings, and the
fingerprint of all that (with the data) that a state file must match to be resumed.

    plan = make_plan(autoattack, x, y, batch_size=500, first_batch=0)
    plan.sizes, plan.batches, plan.names, plan.fingerprint
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from hpm_jax.attacks import batching, contract, versions
from hpm_jax.attacks.resume import data_hash
from hpm_jax.attacks.versions import AttackSpec


@dataclasses.dataclass(frozen=True)
class ChainPlan:
    """What `make_plan` fixed for one run (see the module docstring)."""

    batch_size: int
    sizes: tuple[int, ...]
    batches: list[np.ndarray]
    specs: list[AttackSpec]
    settings: dict[str, dict[str, Any]]
    fingerprint: dict[str, Any]
    num_devices: int
    first_batch: int  # the index of batches[0] among the evaluation's batches (the keys')

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]


def make_plan(
    chain: Any, x: np.ndarray, y: np.ndarray, batch_size: int, first_batch: int
) -> ChainPlan:
    """The plan of `chain` (an `AutoAttack`, typed Any: its module imports this one) on
    (x, y): buckets, batches, the attacks fitted to the model's number of classes (checked
    against the labels and the judge), and the fingerprint a state file must match to be
    resumed."""
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if not isinstance(first_batch, int | np.integer) or first_batch < 0:
        raise ValueError(f"first_batch must be an integer >= 0, got {first_batch!r}.")
    n_dev = chain.mesh.devices.size
    if chain.compact:
        step = batching.ladder_step(chain.mesh.devices.flat)
        sizes = chain.bucket_sizes or batching.bucket_sizes(int(batch_size), n_dev, step=step)
        batching.check_bucket_sizes(sizes, batch_size, n_dev)
        sizes = tuple(sorted(set(sizes), reverse=True))
    else:  # the exact batches: batch_size rows, the last batch its own size
        sizes = (int(batch_size),)
    probe = jax.ShapeDtypeStruct((sizes[0], *x.shape[1:]), x.dtype)
    num_classes = contract.output_classes(chain.judge_fn, probe, "judge_fn",
                                          randomized=chain.randomized)  # fmt: skip
    if chain.separate_judge:
        loss_classes = contract.output_classes(chain.logits_fn, probe, "logits_fn",
                                               randomized=chain.randomized)  # fmt: skip
        if loss_classes != num_classes:
            raise ValueError(f"judge_fn scores {num_classes} classes but logits_fn {loss_classes}.")
    if chain.num_classes is not None and chain.num_classes != num_classes:
        raise ValueError(
            f"num_classes={chain.num_classes} but the model outputs {num_classes} logits."
        )
    # Against the model's own classes (num_classes is optional): a label >= C is never
    # predicted, so every point would count as broken, a silent robust accuracy of 0.
    contract.check_labels(y, num_classes)
    specs = versions.fit_to_classes(chain.attacks, num_classes)
    settings = {s.name: {k: versions.jsonable(v) for k, v in s.kwargs.items()} for s in specs}
    fingerprint = {
        "data": data_hash(x, y),
        "num_examples": len(x),
        "norm": chain.norm,
        "eps": chain.eps,
        "seed": chain.seed,
        "batch_size": int(batch_size),
        "first_batch": int(first_batch),
        "bucket_sizes": list(sizes),
        "attacks": [[s.name, versions.fn_name(s.fn), settings[s.name]] for s in specs],
        "separate_judge": chain.separate_judge,
        "randomized": chain.randomized,
        "compact": chain.compact,
        "rand_verdict": chain.rand_verdict,
        "precision": chain.precision,
    }
    return ChainPlan(
        batch_size=int(batch_size),
        sizes=sizes,
        batches=batching.batch_slices(len(x), int(batch_size)),
        specs=specs,
        settings=settings,
        fingerprint=fingerprint,
        num_devices=int(n_dev),
        first_batch=int(first_batch),
    )
