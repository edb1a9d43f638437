"""Logits functions of a model, and its training forward: the one place that calls `apply`.

    from hpm_jax.models import forward, head_logits_fn, logits_fn, logits_fns
    target = logits_fn(model, variables)                  # eval mode, the model's own output
    fc = logits_fn(model, variables, mode="fc")           # an HPM model's FC surrogate
    AutoAttack(target, eps=8 / 255).run(x, y, batch_size=500)
    apgd(fc, x, y, key=key, eps=8 / 255, judge_fn=target)  # gradient from fc, target judges
    fns = logits_fns(model, variables, ("fc", "hpm", "ste"))   # fns["ste"] is fns["hpm"]
    attack = logits_fn(model, variables, mode="hpm", train=True)  # batch-norm batch statistics
    head = head_logits_fn(model, variables, mode="ema_l2")  # features (B, D) -> logits (B, C)
    out, updates = forward(model, variables, x, y, train=True, modes=("hpm", "fc"),
                           mutable=("batch_stats", "prototypes"))  # training: one backbone pass

A logits function here is `jax.tree_util.Partial(apply, variables)`: a pytree whose leaves are
the arrays of `variables`, so every jitted attack takes the weights as arguments. Compiled
programs hold no copy of the model (a WRN-70-16 is ~1 GB), compile in the time the
architecture needs, and are reused for other variables of the same shapes: evaluating the
next checkpoint compiles nothing. `apply` is a small frozen dataclass of the model, the mode
and how it runs, so two logits functions of equal models and modes share compiled programs.

A mode the model's head does not have (see `hpm_jax.models.heads`: an FC head has only "fc")
is a ValueError when the function is made, not a silent stand-in. Freeze the weights of a
function (no gradient to them) by passing `jax.lax.stop_gradient(variables)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import chex
import flax.linen as nn
import jax

from hpm_jax.models.classifier import Classifier, check_mode, judge_mode
from hpm_jax.models.heads import canonical_mode


@dataclasses.dataclass(frozen=True)
class _Apply:
    """model.apply with a fixed head mode (None: the model's default), without labels.

    train: batch norm normalises with the batch's statistics (train mode); the running
      statistics it would update are dropped and the prototypes are left alone.
    head_only: the input is penultimate features (B, D) and only the head runs.
    """

    model: nn.Module
    mode: str | None
    train: bool = False
    head_only: bool = False

    def __call__(self, variables: Any, x: jax.Array) -> jax.Array:
        kwargs = {} if self.mode is None else {"mode": self.mode}
        if self.head_only:
            chex.assert_rank(x, 2)
            logits = self.model.apply(variables, x, method="head_logits", **kwargs)
        elif self.train:
            # Only an existing collection can be mutable (a model without batch norm has none).
            mutable = [c for c in ("batch_stats",) if c in variables]
            out = self.model.apply(variables, x, train=True, mutable=mutable or False, **kwargs)
            logits = out[0] if mutable else out
        else:
            logits = self.model.apply(variables, x, **kwargs)
        chex.assert_rank(logits, 2)
        chex.assert_equal_shape_prefix([x, logits], 1)
        return logits


def _declares_modes(model: nn.Module) -> bool:
    return isinstance(model, Classifier) and hasattr(model.head, "logits_modes")


def _resolved(model: nn.Module, mode: str | None) -> str | None:
    """`mode` checked against the model's head, with None and "ste" named as what they give
    ("hpm"), so functions that compute the same logits share compiled programs."""
    if not isinstance(mode, str | None):
        raise TypeError(f"mode must be one head mode name or None, got {mode!r}.")
    if not _declares_modes(model):  # a custom module or head: the mode as given
        return mode
    check_mode(model, mode)
    return judge_mode(model) if mode is None else canonical_mode(mode)


def logits_fn(
    model: nn.Module, variables: Any, *, mode: str | None = None, train: bool = False
) -> jax.tree_util.Partial:
    """x (B, H, W, C) in [0, 1] -> logits (B, C) of `model`, as a pytree with `variables` as
    its leaves. `mode` picks a head mode ("hpm"/"ste", "fc", "ema_l2", "soft"; see
    `hpm_jax.models.heads`); None gives the model's own output. Eval mode unless `train`:
    then batch norm uses the batch's statistics, as a training attack crafts its examples,
    and the statistic updates are dropped (`variables` are never changed)."""
    apply = _Apply(model, _resolved(model, mode), train=bool(train))
    return jax.tree_util.Partial(apply, variables)


def logits_fns(
    model: nn.Module, variables: Any, modes: Iterable[str], *, train: bool = False
) -> dict[str, jax.tree_util.Partial]:
    """{mode: logits_fn(model, variables, mode=mode)} for each of `modes`; modes that give the
    same logits ("ste" and "hpm") share one function object, so attacks see one model."""
    fns: dict[str, jax.tree_util.Partial] = {}
    by_mode: dict[str | None, jax.tree_util.Partial] = {}
    for mode in modes:
        resolved = _resolved(model, mode)
        if resolved not in by_mode:
            by_mode[resolved] = logits_fn(model, variables, mode=mode, train=train)
        fns[mode] = by_mode[resolved]
    return fns


def head_logits_fn(
    model: Classifier, variables: Any, *, mode: str | None = None
) -> jax.tree_util.Partial:
    """features (B, D) -> logits (B, C) of `model`'s head alone in eval mode with `mode`
    (None: its own output), as a pytree with `variables` as its leaves."""
    if not isinstance(model, Classifier):
        raise TypeError(f"head_logits_fn needs a Classifier, got a {type(model).__name__}.")
    return jax.tree_util.Partial(_Apply(model, _resolved(model, mode), head_only=True), variables)


def forward(
    model: nn.Module,
    variables: Mapping[str, Any],
    x: jax.Array,
    labels: jax.Array | None,
    *,
    train: bool,
    modes: Sequence[str],
    mutable: Sequence[str] = (),
) -> tuple[dict[str, jax.Array], dict[str, Any]]:
    """{mode: logits} from one backbone pass, and the updated mutable collections.

    The training forward: differentiable in `variables`. `labels` are passed only when the
    head should update its prototype EMA (train mode, "prototypes" in `mutable`); with None
    the head leaves the EMA alone. Collections in `mutable` that `variables` lack are
    skipped (an FC model has no prototypes).
    """
    if isinstance(modes, str) or not modes:
        raise TypeError(f"modes must be a non-empty sequence of mode names, got {modes!r}.")
    mode = modes[0] if len(modes) == 1 else tuple(modes)
    if _declares_modes(model):
        check_mode(model, mode)
    mutable = [c for c in mutable if c in variables]
    out = model.apply(variables, x, labels, train=train, mode=mode, mutable=mutable or False)
    logits, updates = out if mutable else (out, {})
    if not isinstance(logits, Mapping):
        logits = {modes[0]: logits}
    for m in modes:
        chex.assert_rank(logits[m], 2)
    return dict(logits), dict(updates)
