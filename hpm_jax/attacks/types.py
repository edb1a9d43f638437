"""What an attack is: its signature, its result, and what it declares to the chain.

    from hpm_jax.attacks import types
    res = apgd(logits_fn, x, y, key=key, eps=8 / 255)     # types.AttackResult(x_adv, robust)
    apgd.norms, apgd.can_shrink, apgd.randomized          # ("Linf", "L2", "L1"), True, True

    @types.declare(norms=("Linf",), options=("n_steps",))  # an attack of your own
    def my_attack(logits_fn, x, y, *, key, norm, eps, judge_fn=None, n_steps=10): ...
    AutoAttack(fn, version=[AttackSpec("mine", my_attack, {"n_steps": 20})], ...)

Every attack is `attack(logits_fn, x, y, *, key, norm, eps, judge_fn=None, **settings)`
returning `AttackResult(x_adv, robust)`: x_adv within eps of x in [0, 1], robust True where the
judge (default `logits_fn`) still classifies x_adv as y. An `Attack` also declares, as plain
attributes, what the AutoAttack chain needs to know about it without looking inside: the norms
it is ported for, whether it can shrink its batch to the points still robust (then it takes
`compact` and `bucket_sizes`), whether it attacks randomized models f(x, key) (it takes
`randomized`), and the settings it accepts. A plain function in an `AttackSpec` is taken as
declaring every norm, no shrinking, no randomized models and unchecked settings.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol

import jax

NORMS = ("Linf", "L2", "L1")
LogitsFn = Callable[..., jax.Array]


class AttackResult(NamedTuple):
    """x_adv: (B, H, W, C) in [0, 1] within eps of x. robust: (B,) bool, True where the judge
    still classifies x_adv as y (a point the judge gets wrong on x counts as not robust)."""

    x_adv: jax.Array
    robust: jax.Array


class Attack(Protocol):
    """An attack under the contract, with its declarations (see the module docstring)."""

    norms: tuple[str, ...]
    can_shrink: bool
    randomized: bool
    options: frozenset[str] | None

    def __call__(self, logits_fn: LogitsFn, x: jax.Array, y: jax.Array, /, *, key: jax.Array,
                 norm: str, eps: Any, judge_fn: LogitsFn | None = None,
                 **settings: Any) -> AttackResult: ...  # fmt: skip


class Declared:
    """A function with the declarations of `Attack` (made by `declare`; its name, docstring
    and signature are the function's)."""

    def __init__(self, fn: Callable[..., AttackResult], *, norms: Iterable[str],
                 can_shrink: bool, randomized: bool, options: Iterable[str] | None):  # fmt: skip
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.name = f"{fn.__module__}.{fn.__qualname__}"  # stable: state files record it
        self.norms = tuple(norms)
        self.can_shrink = bool(can_shrink)
        self.randomized = bool(randomized)
        self.options = None if options is None else frozenset(options)

    def __call__(self, *args: Any, **kwargs: Any) -> AttackResult:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<attack {self.name}>"


def declare(
    *,
    norms: Iterable[str] = NORMS,
    can_shrink: bool = False,
    randomized: bool = False,
    options: Iterable[str] | None = None,
) -> Callable[[Callable[..., AttackResult]], Declared]:
    """A decorator: `fn` as an `Attack` with these declarations. options: the settings it
    takes besides the contract's (key, norm, eps, judge_fn, and compact / bucket_sizes /
    randomized where declared); None leaves them unchecked."""
    for norm in norms:
        if norm not in NORMS:
            raise ValueError(f"norms must be among {NORMS}, got {norm!r}.")
    return lambda fn: Declared(fn, norms=norms, can_shrink=can_shrink, randomized=randomized,
                               options=options)  # fmt: skip


def declared(fn: Callable[..., AttackResult]) -> Attack:
    """`fn` with its declarations: itself if it has them, else the plain function's defaults."""
    if isinstance(fn, Declared):
        return fn
    return Declared(fn, norms=NORMS, can_shrink=False, randomized=False, options=None)
