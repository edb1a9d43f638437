"""Attacks under one contract, and the AutoAttack chain that runs them.

    from hpm_jax.attacks import AutoAttack, apgd, apgd_targeted, fab_targeted, square
    report = AutoAttack(logits_fn, norm="Linf", eps=8 / 255).run(x, y, batch_size=500)
    res = apgd(logits_fn, x, y, key=jax.random.key(0), eps=8 / 255)   # AttackResult

Every attack is `attack(logits_fn, x, y, *, key, norm, eps, ..., judge_fn=None)` returning
`AttackResult(x_adv, robust)` (see `common`). Attack modules are imported on first use, so
`import hpm_jax.attacks` stays cheap and one missing attack does not break the others.
"""

from __future__ import annotations

import importlib

from hpm_jax.attacks.common import AttackResult

_LAZY = {
    "AutoAttack": "autoattack",
    "AutoAttackReport": "autoattack",
    "AttackSpec": "versions",
    "apgd": "apgd",
    "apgd_targeted": "apgd",
    "fab_targeted": "fab",
    "square": "square",
}

__all__ = ["AttackResult", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f"hpm_jax.attacks.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'hpm_jax.attacks' has no attribute {name!r}")
