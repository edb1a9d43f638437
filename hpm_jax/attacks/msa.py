"""The Mixed Surrogate Attack (MSA): AutoAttack through several surrogates, judged by the target.

    from hpm_jax.attacks.msa import mixed_surrogate_attack
    report = mixed_surrogate_attack(
        target_fn,                                    # the dynamic model, e.g. HPM in eval mode
        {"fc": fc_fn, "ema_l2": l2_fn, "soft": soft_fn, "ste": target_fn},
        x, y, norm="Linf", eps=0.1, batch_size=250,
    )
    report.robust_accuracy            # per-sample worst case, every verdict the target's
    report.per_surrogate              # robust accuracy after each surrogate's attacks
    report.robust_accuracy_after      # after each attack: "apgd-ce@fc", ..., "square"

docs/design.md section 2. A dynamic defense such as HPM classifies a point in the context of its
batch and exposes a straight-through gradient, so a single gradient attack may overestimate
its robustness. MSA runs the gradient attacks of an AutoAttack version (APGD-CE, APGD-T,
FAB-T for "standard") once per surrogate, taking loss and gradient from the surrogate while
the target decides success and the kept iterate, then Square (gradient-free) against the
target itself. A point is robust only if the target classifies it correctly on the clean
image and after every attack (the per-sample worst case) and in the final re-evaluation of
the composed adversarial batch.

Batch context: the data is cut into fixed batches of `batch_size` in the given order, and
every model call sees exactly one of them (`AutoAttack(..., compact=False)`): no padded or
repeated row, the last batch at its own size, a batch that does not split over the devices
replicated on them. So the target always judges a point among the other points of its own
batch, as they are being attacked, and a break counts at the iterate where it happens.
Targeted attacks aim at the surrogate's highest classes other than y. Batch size and order
are part of the result, and the report records them. The chain is
AutoAttack's, so MSA logs the same lines, writes the same resumable state file and runs the
same sanity checks on the target.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpm_jax.attacks import contract, types, versions
from hpm_jax.attacks import precision as precision_lib
from hpm_jax.attacks.autoattack import AutoAttack
from hpm_jax.attacks.chain_report import AutoAttackReport
from hpm_jax.attacks.resume import StateStore
from hpm_jax.runtime.sharding import make_mesh

# The surrogates of an HPM model, as head modes: backbone + FC head, l2 against the EMA
# prototypes only, HPM with soft assignments in the forward pass, the true HPM forward.
DEFAULT_SURROGATES = ("fc", "ema_l2", "soft", "ste")
_GRADIENT_FREE = ("square",)


class ThroughSurrogate(types.Declared):
    """An attack of the chain whose loss and gradient come from `surrogate` instead of the
    chain's model; success is judged by the chain's judge (the target), which the chain
    always passes. It declares what the attack it wraps declares."""

    def __init__(self, surrogate_name: str, surrogate: Callable[..., Any], attack: types.Attack):
        inner = types.declared(attack)
        super().__init__(self._through, norms=inner.norms, can_shrink=inner.can_shrink,
                         randomized=inner.randomized, options=inner.options)  # fmt: skip
        self.surrogate_name, self.surrogate, self.attack = surrogate_name, surrogate, attack
        self.name = f"{versions.fn_name(attack)} through surrogate {surrogate_name!r}"

    def _through(self, logits_fn, x, y, *, judge_fn, **kwargs) -> types.AttackResult:
        if judge_fn is None:  # the surrogate would judge its own attack
            raise ValueError(f"{self!r} needs the target as judge_fn; got None.")
        del logits_fn  # the target gives no gradient here; it judges
        return self.attack(self.surrogate, x, y, judge_fn=judge_fn, **kwargs)

    def __repr__(self) -> str:  # stable across runs: the state file's fingerprint uses it
        return self.name


@dataclasses.dataclass
class MSAReport:
    """The result of `mixed_surrogate_attack`.

    Every verdict is the target's, each point judged inside its own batch.

    robust: (n,) bool per sample: the target classifies the point correctly on the clean
    batch, at every judged iterate of every attack and in the final re-evaluation;
    robust_accuracy: its mean, the per-sample worst case and the number to report. One rule
    says "broken" in every attack (APGD, FAB, Square alike): at some judged iterate, in its
    exact batch as it stood then with every image within eps, the target misclassifies the
    point; that image is its adversarial example, whatever happens to the batch later.
    final_reevaluation_accuracy: the target's accuracy on the composed adversarial batches
    alone (each point's first adversarial image, from whichever attack, beside the other
    points' images). It is >= robust_accuracy; the two differ only by batch-context effects:
    a point broken while its batch held other iterates that is classified correctly again
    among the composed images (the check "final_reevaluation" counts them). A
    batch-independent target gives equal figures. per_surrogate: robust accuracy after the
    attacks of each surrogate, cumulative in `surrogates` order; robust_accuracy_after:
    after each attack ("apgd-ce@fc", ..., "square"). chain: the underlying AutoAttack report
    (checks, times, settings)."""

    robust: np.ndarray
    x_adv: np.ndarray
    clean_accuracy: float
    robust_accuracy: float
    final_reevaluation_accuracy: float
    per_surrogate: dict[str, float]
    robust_accuracy_after: dict[str, float]
    surrogates: list[str]
    batch_size: int
    order: str
    chain: AutoAttackReport

    @property
    def flagged(self):
        return self.chain.flagged

    def to_dict(self) -> dict[str, Any]:
        """Everything but x_adv, JSON-ready."""
        return {
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "final_reevaluation_accuracy": self.final_reevaluation_accuracy,
            "per_surrogate": self.per_surrogate,
            "robust_accuracy_after": self.robust_accuracy_after,
            "surrogates": self.surrogates,
            "batch_size": self.batch_size,
            "order": self.order,
            "robust": np.asarray(self.robust, bool).tolist(),
            "chain": self.chain.to_dict(),
        }

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text


def msa_chain(
    surrogates: Mapping[str, Callable[..., Any]],
    *,
    norm: str,
    version: str | Sequence[str] = "standard",
    attack_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[versions.AttackSpec]:
    """The MSA attack list: each gradient attack of `version` through each surrogate (named
    "attack@surrogate", surrogate-major order), then the gradient-free attacks against the
    target. `attack_options` ({attack name: settings}) apply to every copy of an attack."""
    if not surrogates:
        raise ValueError("MSA needs at least one surrogate, e.g. {'fc': fc_logits_fn}.")
    bad = [name for name in surrogates if not name or "@" in name]
    if bad:
        raise ValueError(f"surrogate names must be non-empty and free of '@', got {bad}.")
    base = versions.build_chain(version, norm, options=attack_options)
    gradient = [s for s in base if s.name not in _GRADIENT_FREE]
    free = [s for s in base if s.name in _GRADIENT_FREE]
    specs = [
        versions.AttackSpec(f"{s.name}@{name}", ThroughSurrogate(name, fn, s.fn), dict(s.kwargs))
        for name, fn in surrogates.items()
        for s in gradient
    ]
    return specs + free


def mixed_surrogate_attack(
    target_fn: Callable[..., Any],
    surrogates: Mapping[str, Callable[..., Any]],
    x: np.ndarray,
    y: np.ndarray,
    *,
    norm: str = "Linf",
    eps: float,
    batch_size: int,
    version: str | Sequence[str] = "standard",
    seed: int = 0,
    attack_options: Mapping[str, Mapping[str, Any]] | None = None,
    state_path: str | Path | StateStore | None = None,
    num_classes: int | None = None,
    mesh=None,
    loop: str = "auto",
    run_checks: bool = True,
    log: Callable[[str], Any] | None = print,
    precision: str = precision_lib.DEFAULT,
    logit_tolerance: float | None = None,
    first_batch: int = 0,
) -> MSAReport:
    """Run MSA on (x, y): x (n, H, W, C) in [0, 1], y (n,) int labels, in fixed batches of
    `batch_size` in the given order (a multiple of the device count splits each batch over the
    devices; other sizes run replicated).

    target_fn: the model under evaluation (batch-coupled is fine); it judges every attack.
    surrogates: {name: logits_fn} supplying loss and gradient, in the order they run.
    version: the AutoAttack version whose attacks MSA runs ("standard": APGD-CE, APGD-T,
        FAB-T through each surrogate, Square against the target) or a list of names.
    state_path: a resumable state file (or its `resume.StateStore`), as AutoAttack's; loop
        ("auto", "lax", "host"): how every attack iterates, as AutoAttack's; first_batch: the
        index of x's first batch in a larger evaluation; the rest (precision and
        logit_tolerance included: every program of every surrogate runs at `precision`) as
        AutoAttack.
    """
    mesh = make_mesh() if mesh is None else mesh
    # The weights replicated on the mesh once (one copy of the arrays the surrogates share
    # with the target), not once per attack call.
    memo: dict = {}
    target_fn = contract.place(target_fn, mesh, memo)
    placed = {name: contract.place(fn, mesh, memo) for name, fn in surrogates.items()}
    specs = msa_chain(placed, norm=norm, version=version, attack_options=attack_options)
    chain = AutoAttack(
        target_fn,
        norm=norm,
        eps=eps,
        version=specs,
        seed=seed,
        num_classes=num_classes,
        mesh=mesh,
        compact=False,
        loop=loop,
        run_checks=run_checks,
        log=log,
        precision=precision,
        logit_tolerance=logit_tolerance,
    )
    report = chain.run(x, y, batch_size=batch_size, state_path=state_path, first_batch=first_batch)
    after = dict(report.robust_accuracy_after)
    per_surrogate = {
        name: after[[s.name for s in specs if s.name.endswith(f"@{name}")][-1]]
        for name in surrogates
    }
    return MSAReport(
        robust=report.robust,
        x_adv=report.x_adv,
        clean_accuracy=report.clean_accuracy,
        robust_accuracy=report.robust_accuracy,
        final_reevaluation_accuracy=report.final_accuracy,
        per_surrogate=per_surrogate,
        robust_accuracy_after=after,
        surrogates=list(surrogates),
        batch_size=int(batch_size),
        order=f"input order, fixed batches of {batch_size}",
        chain=report,
    )
