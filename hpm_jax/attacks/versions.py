"""Which attacks an AutoAttack version runs, with which settings (the reference's `_set_version`).

    from hpm_jax.attacks import versions
    versions.attack_settings("standard", "Linf")
    # [("apgd-ce", {...n_restarts=1}), ("apgd-t", {...n_target_classes=9}), ("fab-t", ...),
    #  ("square", {... n_queries=5000})]
    chain = versions.build_chain("plus", "Linf", options={"square": {"n_queries": 1000}})
    chain = versions.fit_to_classes(chain, num_classes=10)   # n_target_classes <= C - 1

| version  | attacks (settings)                                                                 |
|----------|------------------------------------------------------------------------------------|
| standard | apgd-ce (1 restart), apgd-t (9 targets), fab-t (9 targets), square (5000 queries);  |
|          | L1: apgd-ce with 5 restarts and largereps, apgd-t with 5 targets and largereps      |
| plus     | apgd-ce, apgd-dlr (5 restarts each), fab (5 restarts), square, apgd-t, fab-t        |
|          | (9 targets each); L1: the same settings (no largereps), as the reference            |
| rand     | apgd-ce, apgd-dlr with eot_iter=20 on a randomized model f(x, key)                  |
| [names]  | the reference's constructor defaults: APGD and FAB 5 restarts, FAB-T 1, 9 targets   |

APGD runs 100 iterations with rho 0.75, FAB 100 iterations, Square p_init 0.8, as the
reference. Every attack is ported for Linf, L2 and L1. For L1 the reference's `plus` only
logs "please check" and runs the Linf/L2 settings; so does ours (`standard` L1 is the one
with largereps and 5 restarts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from hpm_jax.attacks import types
from hpm_jax.attacks.apgd_attack import apgd, apgd_targeted
from hpm_jax.attacks.fab_attack import fab, fab_targeted
from hpm_jax.attacks.square_attack import square

ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
VERSIONS = ("standard", "plus", "rand")

_FUNCTIONS: dict[str, types.Attack] = {
    "apgd-ce": apgd,
    "apgd-dlr": apgd,
    "apgd-t": apgd_targeted,
    "fab": fab,
    "fab-t": fab_targeted,
    "square": square,
}
# What the chain passes to every attack besides its settings.
_CONTRACT = frozenset({"key", "norm", "eps", "judge_fn"})


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack of a chain: `fn(logits_fn, x, y, *, key, norm, eps, judge_fn, **kwargs)`
    following the attack contract (`types`). Put AttackSpecs in a custom `version` list to
    run attacks of your own in the chain; declare what your function supports with
    `types.declare` (a plain function is taken to support every norm and nothing more)."""

    name: str
    fn: Callable[..., types.AttackResult]
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def attack(self) -> types.Attack:
        """The function with its declarations (`types.Attack`)."""
        return types.declared(self.fn)


def attack_settings(version: str, norm: str) -> list[tuple[str, dict[str, Any]]]:
    """The attacks of a named version and their settings, as the reference's `_set_version`
    (n_target_classes is capped at C - 1 by `fit_to_classes`)."""
    apgd = dict(n_iter=100, eot_iter=1, rho=0.75)
    apgd_t = dict(n_iter=100, n_target_classes=9, n_restarts=1, eot_iter=1, rho=0.75)
    fab_t = dict(n_iter=100, n_target_classes=9, n_restarts=1)
    square = dict(n_queries=5000, p_init=0.8, n_restarts=1)
    if version == "standard":
        if norm == "L1":
            return [
                ("apgd-ce", {**apgd, "loss": "ce", "n_restarts": 5, "use_largereps": True}),
                ("apgd-t", {**apgd_t, "n_target_classes": 5, "use_largereps": True}),
                ("fab-t", fab_t),
                ("square", square),
            ]
        return [
            ("apgd-ce", {**apgd, "loss": "ce", "n_restarts": 1}),
            ("apgd-t", apgd_t),
            ("fab-t", fab_t),
            ("square", square),
        ]
    if version == "plus":
        return [
            ("apgd-ce", {**apgd, "loss": "ce", "n_restarts": 5}),
            ("apgd-dlr", {**apgd, "loss": "dlr", "n_restarts": 5}),
            ("fab", dict(n_iter=100, n_restarts=5)),
            ("square", square),
            ("apgd-t", apgd_t),
            ("fab-t", fab_t),
        ]
    if version == "rand":
        rand = {**apgd, "n_restarts": 1, "eot_iter": 20}
        return [("apgd-ce", {**rand, "loss": "ce"}), ("apgd-dlr", {**rand, "loss": "dlr"})]
    raise ValueError(f"version must be one of {VERSIONS} or a list of attacks, got {version!r}.")


def custom_settings(name: str) -> dict[str, Any]:
    """Settings of an attack named in a custom list: the reference's constructor defaults."""
    table = {
        "apgd-ce": dict(n_iter=100, eot_iter=1, rho=0.75, loss="ce", n_restarts=5),
        "apgd-dlr": dict(n_iter=100, eot_iter=1, rho=0.75, loss="dlr", n_restarts=5),
        "fab": dict(n_iter=100, n_restarts=5),
        "square": dict(n_queries=5000, p_init=0.8, n_restarts=1),
        "apgd-t": dict(n_iter=100, n_target_classes=9, n_restarts=1, eot_iter=1, rho=0.75),
        "fab-t": dict(n_iter=100, n_target_classes=9, n_restarts=1),
    }
    if name not in table:
        raise ValueError(
            f"unknown attack {name!r}; the chain knows {ATTACK_NAMES} (or pass an AttackSpec)."
        )
    return dict(table[name])


def attack_fn(name: str) -> types.Attack:
    """The function that runs the attack called `name`."""
    return _FUNCTIONS[name]


def _check_spec(spec: AttackSpec, norm: str, randomized: bool) -> None:
    """What the attack declares (`types.Attack`) against what the chain asks of it."""
    attack = spec.attack
    if randomized and not attack.randomized:
        raise ValueError(
            f"{spec.name} cannot attack a randomized model (it does not declare "
            "randomized=True); use version='rand' or APGD attacks only."
        )
    if norm not in attack.norms:
        raise ValueError(
            f"{spec.name} is not ported for norm {norm!r}; leave it out of the chain (custom "
            f"version), e.g. {[n for n in ('apgd-ce', 'apgd-t', 'fab-t') if n != spec.name]}."
        )
    if attack.options is None:
        return
    unknown = sorted(set(spec.kwargs) - attack.options - _CONTRACT)
    if unknown:
        raise TypeError(
            f"attack {spec.name!r} ({fn_name(spec.fn)}) takes no {unknown}; its options are "
            f"{sorted(attack.options | _CONTRACT)}."
        )


def build_chain(
    version: str | Sequence[str | AttackSpec],
    norm: str,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    randomized: bool = False,
) -> list[AttackSpec]:
    """The attacks of `version` (a name, or a list of names and AttackSpecs) with `options`
    ({attack name: {setting: value}}) applied over their settings. Raises clear errors for
    unknown names, duplicates, options for absent attacks, unsupported norms and settings."""
    options = dict(options or {})
    if isinstance(version, str):
        entries: list[Any] = attack_settings(version, norm)
    else:
        if not version:
            raise ValueError("a custom version needs at least one attack.")
        entries = [v if isinstance(v, AttackSpec) else (v, custom_settings(v)) for v in version]
    specs = [
        AttackSpec(e.name, e.fn, dict(e.kwargs))
        if isinstance(e, AttackSpec)
        else AttackSpec(e[0], attack_fn(e[0]), e[1])
        for e in entries
    ]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"each attack may appear once in a chain, got {names}.")
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"attack_options name {unknown}, which are not in the chain {names}.")
    specs = [AttackSpec(s.name, s.fn, {**s.kwargs, **options.get(s.name, {})}) for s in specs]
    for s in specs:
        if randomized:
            s.kwargs["randomized"] = True
        _check_spec(s, norm, randomized)
    return specs


def fit_to_classes(specs: Sequence[AttackSpec], num_classes: int) -> list[AttackSpec]:
    """The chain with n_target_classes capped at C - 1; losses that need more classes than
    the model has raise (the reference only warns, then fails inside the attack)."""
    fitted = []
    for s in specs:
        kwargs = dict(s.kwargs)
        uses_dlr = s.name == "apgd-t" or kwargs.get("loss") == "dlr"
        if uses_dlr and num_classes <= 2:
            raise ValueError(
                f"with only {num_classes} classes it is not possible to use the DLR loss "
                f"({s.name}); remove it from the chain."
            )
        if s.name == "apgd-t" and num_classes == 3:
            raise ValueError(
                "with only 3 classes it is not possible to use the targeted DLR loss "
                "(apgd-t); remove it from the chain."
            )
        if "n_target_classes" in kwargs:
            kwargs["n_target_classes"] = min(int(kwargs["n_target_classes"]), num_classes - 1)
        fitted.append(AttackSpec(s.name, s.fn, kwargs))
    return fitted


def jsonable(v: Any) -> Any:
    """A setting as JSON can hold it (numbers, strings, lists; anything else by repr)."""
    if isinstance(v, bool | int | float | str) or v is None:
        return v
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, list | tuple):
        return [jsonable(u) for u in v]
    return repr(v)


def fn_name(fn: Callable) -> str:
    """A stable name for an attack function (state files record it)."""
    if isinstance(fn, types.Declared):
        return fn.name
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
