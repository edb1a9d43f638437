"""Auto-PGD (Croce & Hein, 2020): APGD-CE, APGD-DLR and APGD-T, as AutoAttack runs them.

    from hpm_jax.attacks.apgd import apgd, apgd_targeted
    logits_fn = lambda x: model.apply(variables, x)
    res = apgd(logits_fn, x, y, key=jax.random.key(0), norm="Linf", eps=8 / 255)   # APGD-CE
    res = apgd(logits_fn, x, y, key=key, eps=8 / 255, loss="dlr", n_restarts=5)     # APGD-DLR
    res = apgd_targeted(logits_fn, x, y, key=key, eps=8 / 255)                      # APGD-T
    res.x_adv, res.robust                     # (B, H, W, C) within eps of x, (B,) bool
    res = apgd(logits_fn, x, y, key=key, eps=8 / 255, judge_fn=hpm_fn)  # gradient from a
                                              # surrogate, success decided by another model
    res = apgd(noisy_fn, x, y, key=key, eps=8 / 255, eot_iter=20, randomized=True)
                                              # noisy_fn(x, key): EOT over fresh keys

One run is one jitted function over the fixed-shape batch (a `lax.fori_loop` of n_iter
steps); restarts and target classes are a Python loop around it that stops once every point
is broken. `logits_fn` and `judge_fn` are static (hashed by identity: reuse the same function
objects and a batch shape compiles once); `eps` (scalar or per-sample (B,)) and `rho` are
traced, so eps sweeps do not recompile. Batches sharded over a mesh stay sharded, and a fixed
key gives the same result on any number of devices.

The algorithm is the reference's (pyautoattack `APGDAttack`): step 2 * eps (eps for L1),
momentum 0.75 from the second step on, step-size checkpoints after 22% of the budget with
intervals shrinking by 3% down to 6% (`checkpoints(n_iter)`); at a checkpoint the step halves
where the loss rose in at most rho of the steps since the last one, or where the step was not
halved last time and the best loss did not improve, and those points restart from their best
loss point. L1 uses the sparse-gradient step, the exact L1-ball-and-box projection (`l1.py`)
and the adaptive sparsity schedule; `use_largereps` runs its 3 eps, 2 eps, eps schedule.

The loss and its gradient come from `logits_fn`; whether an iterate is misclassified comes from
`judge_fn` (default `logits_fn`, whose logits are then reused at no cost), always called on
the whole batch. A point broken once stays broken, with its last misclassified iterate as
x_adv; points the judge gets wrong on the clean x come back as x, robust False; robust points
come back as x.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from hpm_jax.attacks import common, l1, losses

LOSSES = ("ce", "dlr")
MOMENTUM = 0.75

_LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def checkpoints(n_iter: int) -> list[int]:
    """Iterations done at each Linf/L2 step-size checkpoint: [22, 41, 57, 70, 80, 87, 93, 99]
    for n_iter=100. The reference's integer arithmetic (int() of the percentages)."""
    first, shortest, shrink = (max(int(f * n_iter), 1) for f in (0.22, 0.06, 0.03))
    marks, interval, done = [], first, 0
    while done + interval <= n_iter:
        done += interval
        marks.append(done)
        interval = max(interval - shrink, shortest)
    return marks


def l1_checkpoints(n_iter: int) -> list[int]:
    """Iterations done at each L1 sparsity/step checkpoint: every max(int(0.04 n_iter), 1)."""
    interval = max(int(0.04 * n_iter), 1)
    return list(range(interval, n_iter + 1, interval))


def largereps_schedule(n_iter: int) -> list[tuple[float, int]]:
    """(eps multiplier, iterations) of the reference's L1 `use_largereps` stages: 3 eps, 2 eps
    and eps for ceil(0.3 n), ceil(0.3 n) and the rest of the n_iter iterations (30, 30, 40)."""
    iters = [math.ceil(0.3 * n_iter), math.ceil(0.3 * n_iter)]
    return [(3.0, iters[0]), (2.0, iters[1]), (1.0, n_iter - sum(iters))]


def _schedule(n_iter: int, norm: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-iteration (is a checkpoint, steps since the last one) as constants for the loop."""
    marks = l1_checkpoints(n_iter) if norm == "L1" else checkpoints(n_iter)
    is_check = np.zeros(n_iter, bool)
    window = np.zeros(n_iter, np.float32)
    previous = 0
    for m in marks:
        is_check[m - 1], window[m - 1], previous = True, m - previous, m
    return is_check, window


def _call(fn: Callable[..., jax.Array], x: jax.Array, key: jax.Array, randomized: bool):
    return fn(x, key) if randomized else fn(x)


def _apgd_loop(
    x: jax.Array,
    x_start: jax.Array,
    eps: jax.Array,
    rho: jax.Array,
    key: jax.Array,
    *,
    grad_fn: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]],
    wrong_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    n_iter: int,
    norm: str,
    sparsity_from_start: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One APGD run from x_start (the reference's `attack_single_run`), traceable.

    grad_fn(x_adv, key) -> (loss (B,), logits, grad); wrong_fn(x_adv, logits, key) -> (B,)
    bool misclassified. Returns (best-loss point, ever misclassified, last misclassified
    iterate, or x_start where none)."""
    ex = lambda v: common.expand(v, x)  # (B,) -> (B, 1, 1, 1)
    is_check, window = (jnp.asarray(a) for a in _schedule(n_iter, norm))
    n_features = x[0].size

    key_start, key_loop = jax.random.split(key)
    loss, logits, grad = grad_fn(x_start, key_start)
    broken = wrong_fn(x_start, logits, key_start)
    state: dict[str, Any] = dict(
        x_adv=x_start, x_old=x_start, grad=grad, x_best=x_start, grad_best=grad,
        loss_best=loss, adv=x_start, broken=broken,
        step=(1.0 if norm == "L1" else 2.0) * eps,
    )  # fmt: skip
    if norm == "L1":
        moved = l1.l0_norm(x_start - x)
        state["topk"] = moved / n_features / 1.5 if sparsity_from_start else 0.2 + 0 * eps
        state["sp_old"] = moved if sparsity_from_start else n_features + 0 * eps
    else:
        # The reference's first oscillation window compares the first loss with an unfilled
        # (zero) row of its loss history; starting `prev_loss` at 0 does the same.
        state.update(
            prev_loss=jnp.zeros_like(loss), n_rises=jnp.zeros_like(loss),
            loss_best_last=loss, reduced_last=jnp.ones_like(broken),
        )  # fmt: skip

    def body(i, s):
        s = dict(s)
        x_adv = s["x_adv"]
        if norm == "L1":
            x_new = l1.project(x_adv + ex(s["step"]) * l1.sparse_direction(s["grad"], s["topk"]),
                               x, eps)  # fmt: skip
        else:
            direction = jnp.sign(s["grad"]) if norm == "Linf" else common.normalize(s["grad"], norm)
            z = common.project(x_adv + ex(s["step"]) * direction, x, eps, norm)
            a = jnp.where(i > 0, MOMENTUM, 1.0)
            x_new = common.project(x_adv + (z - x_adv) * a + (x_adv - s["x_old"]) * (1 - a),
                                   x, eps, norm)  # fmt: skip
        s["x_old"] = x_adv

        key_i = jax.random.fold_in(key_loop, i)
        loss, logits, grad = grad_fn(x_new, key_i)
        wrong = wrong_fn(x_new, logits, key_i)
        s["adv"] = jnp.where(ex(wrong), x_new, s["adv"])
        s["broken"] = s["broken"] | wrong

        better = loss > s["loss_best"]
        s["x_best"] = jnp.where(ex(better), x_new, s["x_best"])
        s["grad_best"] = jnp.where(ex(better), grad, s["grad_best"])
        s["loss_best"] = jnp.where(better, loss, s["loss_best"])

        check = is_check[i]
        if norm == "L1":
            # Sparsity shrank by > 5%: reset the step and restart from the best point;
            # otherwise shrink the step by 1.5 (within [eps / 10, eps]).
            sparsity = l1.l0_norm(s["x_best"] - x)
            reset = check & (sparsity / s["sp_old"] < 0.95)
            step = jnp.clip(jnp.where(reset, eps, s["step"] / 1.5), eps / 10, eps)
            s["step"] = jnp.where(check, step, s["step"])
            s["topk"] = jnp.where(check, sparsity / n_features / 1.5, s["topk"])
            s["sp_old"] = jnp.where(check, sparsity, s["sp_old"])
        else:
            s["n_rises"] = s["n_rises"] + (loss > s["prev_loss"])
            s["prev_loss"] = loss
            oscillating = s["n_rises"] <= window[i] * rho
            stalled = ~s["reduced_last"] & (s["loss_best_last"] >= s["loss_best"])
            reset = check & (oscillating | stalled)
            s["reduced_last"] = jnp.where(check, reset, s["reduced_last"])
            s["loss_best_last"] = jnp.where(check, s["loss_best"], s["loss_best_last"])
            s["n_rises"] = jnp.where(check, 0.0, s["n_rises"])
            s["step"] = jnp.where(reset, s["step"] / 2, s["step"])
        s["x_adv"] = jnp.where(ex(reset), s["x_best"], x_new)
        s["grad"] = jnp.where(ex(reset), s["grad_best"], grad)
        return s

    state = jax.lax.fori_loop(0, n_iter, body, state)
    return state["x_best"], state["broken"], state["adv"]


def _objective(logits_fn, judge_fn, y, target, *, loss, eot_iter, randomized):
    """(grad_fn, wrong_fn) for `_apgd_loop`: the loss of logits_fn (EOT-averaged gradient) and
    the judge's verdict, both on the whole batch."""
    if loss == "ce":
        loss_fn: _LossFn = losses.cross_entropy
    elif loss == "dlr":
        loss_fn = losses.dlr
    else:
        loss_fn = lambda logits, y: losses.targeted_dlr(logits, y, target)

    def loss_and_logits(x_adv, k):
        logits = _call(logits_fn, x_adv, k, randomized)
        chex.assert_shape(logits, (x_adv.shape[0], None))
        per_sample = loss_fn(logits, y)
        return jnp.sum(per_sample), (per_sample, logits)

    value_and_grad = jax.value_and_grad(loss_and_logits, has_aux=True)

    def grad_fn(x_adv, k):
        (_, (per_sample, logits)), grad = value_and_grad(x_adv, jax.random.fold_in(k, 0))
        if not randomized or eot_iter == 1:
            # A deterministic model gives eot_iter identical gradients: one is their mean.
            return per_sample, logits, grad

        def draw(j, carry):  # loss and logits of the last draw, as the reference
            (_, aux), g = value_and_grad(x_adv, jax.random.fold_in(k, j))
            return (carry[0] + g, *aux)

        grad, per_sample, logits = jax.lax.fori_loop(1, eot_iter, draw, (grad, per_sample, logits))
        return per_sample, logits, grad / eot_iter

    def wrong_fn(x_adv, logits, k):
        if judge_fn is not None:
            logits = _call(judge_fn, x_adv, jax.random.fold_in(k, eot_iter), randomized)
        return ~common.correct(logits, y)

    return grad_fn, wrong_fn


_STATIC = ("logits_fn", "judge_fn", "norm", "loss", "n_iter", "eot_iter", "randomized",
           "use_largereps")  # fmt: skip


@functools.partial(jax.jit, static_argnames=_STATIC)
def _run(
    logits_fn, judge_fn, x, y, target, key, eps, rho, robust, x_adv,
    *, norm, loss, n_iter, eot_iter, randomized, use_largereps,
):  # fmt: skip
    """One restart on the whole batch, merged into (x_adv, robust): points robust before it and
    broken by it take its adversarial iterate; points broken before keep theirs."""
    chex.assert_rank(x, 4)
    chex.assert_shape([y, eps, robust], (x.shape[0],))
    grad_fn, wrong_fn = _objective(
        logits_fn, judge_fn, y, target, loss=loss, eot_iter=eot_iter, randomized=randomized
    )
    loop = functools.partial(_apgd_loop, grad_fn=grad_fn, wrong_fn=wrong_fn, norm=norm)
    key_start, key_run = jax.random.split(key)
    if use_largereps:
        # The reference's decr_eps_pgd: each stage starts from the previous stage's best-loss
        # point projected onto its (smaller) ball; only the last stage (radius eps) counts.
        x_init = l1.project(x + jax.random.normal(key_start, x.shape, x.dtype), x, 3 * eps)
        for stage, (scale, stage_iter) in enumerate(largereps_schedule(n_iter)):
            x_init = l1.project(x_init, x, scale * eps)
            x_init, broken, adv = loop(
                x, x_init, scale * eps, rho, jax.random.fold_in(key_run, stage),
                n_iter=stage_iter, sparsity_from_start=True,
            )  # fmt: skip
    else:
        if norm == "L1":
            x_start = l1.project(x + jax.random.normal(key_start, x.shape, x.dtype), x, eps)
        else:
            x_start = common.random_start(key_start, x, common.expand(eps, x), norm)
        _, broken, adv = loop(x, x_start, eps, rho, key_run, n_iter=n_iter,
                              sparsity_from_start=False)  # fmt: skip
    newly_broken = robust & broken
    return jnp.where(common.expand(newly_broken, x), adv, x_adv), robust & ~broken


@functools.partial(jax.jit, static_argnames=("logits_fn", "judge_fn", "randomized", "n_top"))
def _clean(logits_fn, judge_fn, x, y, key, *, randomized, n_top):
    """(judge correct on x, the n_top classes ranked by logits_fn on x in decreasing order)."""
    logits = _call(logits_fn, x, jax.random.fold_in(key, 0), randomized)
    judged = logits if judge_fn is None else _call(judge_fn, x, jax.random.fold_in(key, 1),
                                                   randomized)  # fmt: skip
    ranking = jax.lax.top_k(logits, n_top)[1] if n_top else None
    return common.correct(judged, y), ranking


def _check(
    logits_fn, x, y, key, *, norm, eps, n_iter, n_restarts, eot_iter, rho, use_largereps,
    randomized,
) -> tuple[jax.Array, int]:  # fmt: skip
    """Clear errors for bad arguments; returns eps as a (B,) array and the number of classes."""
    if np.ndim(eps) == 0:
        smallest = eps = float(eps)  # check_inputs rejects anything but a positive number
    else:
        values = np.asarray(eps, dtype=np.float64)
        if values.shape != (x.shape[0],) or not np.all(np.isfinite(values) & (values > 0)):
            raise ValueError(
                f"eps must be a number > 0 or one finite value > 0 per image, shape "
                f"({x.shape[0]},); got shape {values.shape} with values {values.ravel()[:4]}."
            )
        smallest = float(values.min()) if values.size else 1.0
    common.check_inputs(x, y, norm=norm, eps=smallest)
    for name, value in [("n_iter", n_iter), ("n_restarts", n_restarts), ("eot_iter", eot_iter)]:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must lie in [0, 1], got {rho!r}.")
    if use_largereps and norm != "L1":
        raise ValueError(f"use_largereps is the reference's L1 schedule; norm is {norm!r}.")
    if use_largereps and n_iter < 3:
        raise ValueError(f"use_largereps splits n_iter over 3 stages; got n_iter={n_iter}.")
    shape = jax.eval_shape(lambda v: _call(logits_fn, v, key, randomized), x).shape
    if len(shape) != 2 or shape[0] != x.shape[0]:
        raise ValueError(f"logits_fn must return logits of shape (B, C); got {shape}.")
    if x.shape[0] and not 0 <= int(jnp.min(y)) <= int(jnp.max(y)) < shape[1]:
        raise ValueError(
            f"labels must lie in [0, {shape[1] - 1}], got values in "
            f"[{int(jnp.min(y))}, {int(jnp.max(y))}]."
        )
    return jnp.broadcast_to(jnp.asarray(eps, x.dtype), x.shape[:1]), shape[1]


def _attack(logits_fn, judge_fn, x, y, key, eps, rho, targets, n_restarts, randomized, **static):
    """The restart (and target) loop around `_run`, stopping once nothing robust is left."""
    key_clean, key_runs = jax.random.split(key)
    robust, ranking = _clean(logits_fn, judge_fn, x, y, key_clean, randomized=randomized,
                             n_top=max(targets, default=0) + 1 if targets else 0)  # fmt: skip
    x_adv = x
    rho = jnp.asarray(rho, x.dtype)
    runs = [t for t in (targets or [None]) for _ in range(n_restarts)]
    for index, t in enumerate(runs):
        if not bool(jnp.any(robust)):  # one host sync per restart: skip useless runs
            break
        target = None if t is None else ranking[:, t]
        x_adv, robust = _run(
            logits_fn, judge_fn, x, y, target, jax.random.fold_in(key_runs, index), eps, rho,
            robust, x_adv, randomized=randomized, **static,
        )  # fmt: skip
    return common.AttackResult(x_adv, robust)


def apgd(
    logits_fn: Callable[..., jax.Array],
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    norm: str = "Linf",
    eps: float | jax.Array,
    loss: str = "ce",
    n_iter: int = 100,
    n_restarts: int = 1,
    eot_iter: int = 1,
    rho: float = 0.75,
    use_largereps: bool = False,
    judge_fn: Callable[..., jax.Array] | None = None,
    randomized: bool = False,
) -> common.AttackResult:
    """APGD on the cross-entropy ("ce") or DLR ("dlr") loss of the true label y.

    x: (B, H, W, C) in [0, 1]; y: (B,) int labels; eps: scalar or (B,). Restart r uses
    fold_in(key, r) and attacks the points still robust. With randomized=True, logits_fn and
    judge_fn are called as f(x, key) with fresh keys and the gradient is the mean of eot_iter
    draws. use_largereps (L1 only): the reference's 3 eps / 2 eps / eps stages.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
    eps, n_classes = _check(
        logits_fn, x, y, key, norm=norm, eps=eps, n_iter=n_iter, n_restarts=n_restarts,
        eot_iter=eot_iter, rho=rho, use_largereps=use_largereps, randomized=randomized,
    )  # fmt: skip
    if loss == "dlr" and n_classes < 3:
        raise ValueError(f"The DLR loss needs at least 3 classes; logits_fn gives {n_classes}.")
    return _attack(
        logits_fn, judge_fn, x, y, key, eps, rho, None, n_restarts, randomized,
        norm=norm, loss=loss, n_iter=n_iter, eot_iter=eot_iter, use_largereps=use_largereps,
    )  # fmt: skip


def apgd_targeted(
    logits_fn: Callable[..., jax.Array],
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    norm: str = "Linf",
    eps: float | jax.Array,
    n_iter: int = 100,
    n_target_classes: int = 9,
    n_restarts: int = 1,
    eot_iter: int = 1,
    rho: float = 0.75,
    use_largereps: bool = False,
    judge_fn: Callable[..., jax.Array] | None = None,
    randomized: bool = False,
) -> common.AttackResult:
    """APGD-T: APGD on the targeted DLR loss, once per target class and restart.

    The targets of each point are the 2nd .. (k+1)-th classes of logits_fn on the clean x
    (k = n_target_classes, capped at C - 1); success is still "the judge does not predict y".
    Needs C >= 4 classes. Other arguments as `apgd` (use_largereps: AutoAttack's L1 standard).
    """
    if not isinstance(n_target_classes, int) or n_target_classes < 1:
        raise ValueError(f"n_target_classes must be an int >= 1, got {n_target_classes!r}.")
    eps, n_classes = _check(
        logits_fn, x, y, key, norm=norm, eps=eps, n_iter=n_iter, n_restarts=n_restarts,
        eot_iter=eot_iter, rho=rho, use_largereps=use_largereps, randomized=randomized,
    )  # fmt: skip
    if n_classes < 4:
        raise ValueError(
            f"APGD-T's targeted DLR loss needs at least 4 classes; logits_fn gives {n_classes}."
        )
    targets = list(range(1, min(n_target_classes, n_classes - 1) + 1))
    return _attack(
        logits_fn, judge_fn, x, y, key, eps, rho, targets, n_restarts, randomized,
        norm=norm, loss="dlr-targeted", n_iter=n_iter, eot_iter=eot_iter,
        use_largereps=use_largereps,
    )  # fmt: skip
