"""Attacks under one contract, and the AutoAttack chain that runs them.

    from hpm_jax.attacks import AutoAttack, apgd, apgd_targeted, fab, fab_targeted, square
    logits_fn = hpm_jax.models.logits_fn(model, variables)         # a pytree: weights traced
    report = AutoAttack(logits_fn, norm="Linf", eps=8 / 255).run(x, y, batch_size=500)
    report.robust_accuracy, report.robust_accuracy_after, report.checks
    msa = mixed_surrogate_attack(hpm_fn, {"fc": fc_fn, "ste": hpm_fn}, x, y, eps=8 / 255,
                                 batch_size=500)                 # dynamic defenses (msa.py)
    res = apgd(logits_fn, x, y, key=jax.random.key(0), eps=8 / 255)   # AttackResult

Every attack is `attack(logits_fn, x, y, *, key, norm, eps, ..., judge_fn=None)` returning
`AttackResult(x_adv, robust)` and declaring its norms and abilities (`types`); `AttackSpec`
puts attacks of your own into an AutoAttack chain. Each iterative attack is an init / step /
finish triple (`ApgdSteps`, `FabSteps`, `SquareSteps`) run by the one `driver`, which owns
the restarts, the shrinking to the points still robust and the host or `lax` loop. The
geometry (norms, projections, random starts, per-row keys) is `geometry`, the batching
(buckets, rows) `batching`, the argument checks and traced logits functions `contract`,
the matmul precision of the programs and the logit tolerance it implies `precision`.

Prefer pytree logits functions (`hpm_jax.models.logits_fn(model, variables)` or
`jax.tree_util.Partial(model.apply, variables)`): their weights are traced arguments of the
compiled attacks, never constants, and new weights of the same shapes compile nothing.

The modules are `apgd_attack`, `fab_attack` and `square_attack`; `hpm_jax.attacks.apgd` etc.
are the functions.
"""

from hpm_jax.attacks.apgd_attack import apgd, apgd_targeted
from hpm_jax.attacks.autoattack import AutoAttack
from hpm_jax.attacks.chain_report import AutoAttackReport
from hpm_jax.attacks.checks import CheckResult
from hpm_jax.attacks.fab_attack import fab, fab_targeted
from hpm_jax.attacks.msa import MSAReport, mixed_surrogate_attack
from hpm_jax.attacks.square_attack import square
from hpm_jax.attacks.types import Attack, AttackResult, declare
from hpm_jax.attacks.versions import AttackSpec
from hpm_jax.runtime.identity import WorkdirMismatchError

__all__ = [
    "Attack",
    "AttackResult",
    "AttackSpec",
    "AutoAttack",
    "AutoAttackReport",
    "CheckResult",
    "MSAReport",
    "WorkdirMismatchError",
    "apgd",
    "apgd_targeted",
    "declare",
    "fab",
    "fab_targeted",
    "mixed_surrogate_attack",
    "square",
]
