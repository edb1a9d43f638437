"""The inside of one APGD run: schedules, the objective, the start point and one iteration.

    from hpm_jax.attacks import apgd_steps as steps
    steps.checkpoints(100)                    # [22, 41, 57, 70, 80, 87, 93, 99]
    config = steps.ApgdConfig(norm="Linf", loss="ce")
    grad_fn, wrong_fn = steps.objective(logits_fn, logits_fn, y, None, config)
    state = steps.init_state(x, x_start, eps, key, grad_fn=grad_fn, wrong_fn=wrong_fn,
                             norm="Linf", sparsity_from_start=False)
    is_check, window = steps.schedule(100, "Linf")          # per iteration
    state = steps.step(0, state, x, eps, rho, key, is_check[0], window[0], grad_fn=grad_fn,
                       wrong_fn=wrong_fn, norm="Linf")

`apgd_attack.ApgdSteps` hands these pieces to the `driver`, which runs them either inside
one jitted `lax` loop or as one jitted call per iteration from the host (see there); both
give the same iterates. Everything here is traceable and works on fixed-shape batches with
per-sample eps (B,).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from hpm_jax.attacks import contract, geometry, losses

MOMENTUM = 0.75
State = dict[str, Any]
GradFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]
WrongFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class ApgdConfig:
    """The static settings of an APGD iteration (one compiled program per distinct value; the
    iteration count is not one of them, so the host loop's programs serve any n_iter).

    loss: "ce", "dlr", "dlr-targeted" or "kl" (TRADES); shared_judge: the judge is logits_fn
    itself, so the logits of the gradient pass also judge (one forward pass saved per
    iteration)."""

    norm: str
    loss: str
    eot_iter: int = 1
    randomized: bool = False
    use_largereps: bool = False
    shared_judge: bool = True


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


def stages(n_iter: int, use_largereps: bool) -> list[tuple[float, int]]:
    """(eps multiplier, iterations) of each stage of one run."""
    return largereps_schedule(n_iter) if use_largereps else [(1.0, n_iter)]


def schedule(n_iter: int, norm: str) -> tuple[np.ndarray, np.ndarray]:
    """Per iteration: (is a checkpoint (bool), steps since the previous one (float32))."""
    marks = l1_checkpoints(n_iter) if norm == "L1" else checkpoints(n_iter)
    is_check = np.zeros(n_iter, bool)
    window = np.zeros(n_iter, np.float32)
    previous = 0
    for m in marks:
        is_check[m - 1], window[m - 1], previous = True, m - previous, m
    return is_check, window


def objective(logits_fn, judge_fn, y, target, config: ApgdConfig, reference=None):
    """(grad_fn, wrong_fn): grad_fn(x_adv, key) -> (per-sample loss of logits_fn, its logits,
    the gradient averaged over eot_iter draws); wrong_fn(x_adv, logits, key) -> (B,) bool,
    the judge misclassifies (with config.shared_judge, judged on those logits). Both see the
    whole batch. target: APGD-T's classes (B,); reference: the clean logits (B, C) the "kl"
    loss (TRADES) moves away from."""
    loss, eot_iter, randomized = config.loss, config.eot_iter, config.randomized
    if loss == "ce":
        loss_fn = losses.cross_entropy
    elif loss == "dlr":
        loss_fn = losses.dlr
    elif loss == "kl":
        loss_fn = lambda logits, y: losses.kl_divergence(logits, reference)
    else:
        loss_fn = lambda logits, y: losses.targeted_dlr(logits, y, target)

    def loss_and_logits(x_adv, k):
        logits = contract.call(logits_fn, x_adv, k, randomized)
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
        if not config.shared_judge:
            logits = contract.call(judge_fn, x_adv, jax.random.fold_in(k, eot_iter), randomized)
        return ~losses.correct(logits, y)

    return grad_fn, wrong_fn


def first_point(key: jax.Array, x: jax.Array, eps: jax.Array, norm: str, largereps: bool):
    """The reference's random start: Linf / L2 sphere (`geometry.sphere_start`), for L1 a
    Gaussian step projected onto the ball (with largereps, the largest ball, 3 eps)."""
    if norm != "L1":
        return geometry.random_start(key, x, eps, norm, "sphere")
    return geometry.random_start(key, x, 3 * eps if largereps else eps, norm, "l1_ball")


def stage_start(x_init: jax.Array, x: jax.Array, eps: jax.Array, largereps: bool):
    """Each largereps stage starts from the previous best point, projected on its ball."""
    return geometry.project_l1(x_init, x, eps) if largereps else x_init


def _ex(v: jax.Array, x: jax.Array) -> jax.Array:
    return geometry.expand(v, x)


def init_state(x, x_start, eps, key, *, grad_fn: GradFn, wrong_fn: WrongFn, norm: str,
               sparsity_from_start: bool) -> State:  # fmt: skip
    """The run's state at x_start (the reference's setup before its loop). For L1,
    sparsity_from_start takes the initial sparsity from x_start (its x_init path, used by
    largereps) instead of 20% of the coordinates."""
    key_start = jax.random.split(key)[0]  # step() draws from the other half
    loss, logits, grad = grad_fn(x_start, key_start)
    state: State = dict(
        x_adv=x_start, x_old=x_start, grad=grad, x_best=x_start, grad_best=grad,
        loss_best=loss, adv=x_start, broken=wrong_fn(x_start, logits, key_start),
        step=(1.0 if norm == "L1" else 2.0) * eps,
    )  # fmt: skip
    if norm == "L1":
        n_features = x[0].size
        moved = geometry.l0_norm(x_start - x)
        state["topk"] = moved / n_features / 1.5 if sparsity_from_start else jnp.full_like(eps, 0.2)
        state["sp_old"] = moved if sparsity_from_start else jnp.full_like(eps, n_features)
    else:
        # The reference's first oscillation window compares the first loss with an unfilled
        # (zero) row of its loss history; starting `prev_loss` at 0 does the same.
        state.update(
            prev_loss=jnp.zeros_like(loss), n_rises=jnp.zeros_like(loss), loss_best_last=loss,
            reduced_last=jnp.ones_like(state["broken"]),
        )  # fmt: skip
    return state


def step(i, s: State, x, eps, rho, key, check, window, *, grad_fn: GradFn, wrong_fn: WrongFn,
         norm: str) -> State:  # fmt: skip
    """Iteration i: step, gradient, judge, best point; at a checkpoint (`check`, `window`
    steps since the last one) adapt the step and restart from the best point where needed.
    All elementwise updates on the batch (they fuse); no host values."""
    s = dict(s)
    x_adv = s["x_adv"]
    if norm == "L1":
        direction = geometry.sparse_direction(s["grad"], s["topk"])
        x_new = geometry.project_l1(x_adv + _ex(s["step"], x) * direction, x, eps)
    else:
        direction = jnp.sign(s["grad"]) if norm == "Linf" else geometry.normalize(s["grad"], norm)
        z = geometry.project(x_adv + _ex(s["step"], x) * direction, x, eps, norm)
        a = jnp.where(i > 0, MOMENTUM, 1.0)  # no momentum on the first step
        x_new = geometry.project(x_adv + (z - x_adv) * a + (x_adv - s["x_old"]) * (1 - a), x, eps,
                               norm)  # fmt: skip
    s["x_old"] = x_adv

    key_i = jax.random.fold_in(jax.random.split(key)[1], i)
    loss, logits, grad = grad_fn(x_new, key_i)
    wrong = wrong_fn(x_new, logits, key_i)
    s["adv"] = jnp.where(_ex(wrong, x), x_new, s["adv"])  # the last misclassified iterate
    s["broken"] = s["broken"] | wrong

    better = loss > s["loss_best"]
    s["x_best"] = jnp.where(_ex(better, x), x_new, s["x_best"])
    s["grad_best"] = jnp.where(_ex(better, x), grad, s["grad_best"])
    s["loss_best"] = jnp.where(better, loss, s["loss_best"])

    if norm == "L1":
        # Sparsity shrank by > 5%: reset the step and restart from the best point; otherwise
        # shrink the step by 1.5 (within [eps / 10, eps]).
        sparsity = geometry.l0_norm(s["x_best"] - x)
        reset = check & (sparsity / s["sp_old"] < 0.95)
        new_step = jnp.clip(jnp.where(reset, eps, s["step"] / 1.5), eps / 10, eps)
        s["step"] = jnp.where(check, new_step, s["step"])
        s["topk"] = jnp.where(check, sparsity / x[0].size / 1.5, s["topk"])
        s["sp_old"] = jnp.where(check, sparsity, s["sp_old"])
    else:
        s["n_rises"] = s["n_rises"] + (loss > s["prev_loss"])
        s["prev_loss"] = loss
        oscillating = s["n_rises"] <= window * rho
        stalled = ~s["reduced_last"] & (s["loss_best_last"] >= s["loss_best"])
        reset = check & (oscillating | stalled)
        s["reduced_last"] = jnp.where(check, reset, s["reduced_last"])
        s["loss_best_last"] = jnp.where(check, s["loss_best"], s["loss_best_last"])
        s["n_rises"] = jnp.where(check, 0.0, s["n_rises"])
        s["step"] = jnp.where(reset, s["step"] / 2, s["step"])
    s["x_adv"] = jnp.where(_ex(reset, x), s["x_best"], x_new)
    s["grad"] = jnp.where(_ex(reset, x), s["grad_best"], grad)
    return s
