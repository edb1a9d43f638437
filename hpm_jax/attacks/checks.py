"""Sanity checks on a model under evaluation: signs that AutoAttack may overestimate robustness.

    from hpm_jax.attacks import checks
    results = [
        checks.check_randomized(logits_fn, x),            # two forward passes differ
        checks.check_softmax_output(logits_fn(x)),        # probabilities instead of logits
        checks.check_zero_gradients(logits_fn, x, y),     # gradient masking by quantisation
        checks.check_dynamic(logits_fn, x),               # custom gradients, loops, callbacks
        checks.check_batch_dependence(logits_fn, x),      # output depends on the rest of the batch
        checks.check_square({"clean": .9, "apgd-ce": .5, "square": .4}),
    ]
    [r for r in results if r.flagged]                     # CheckResult(name, flagged, message)

The first five follow Croce & Hein's AutoAttack checks (`checks.py` of the reference);
`check_batch_dependence` is ours: HPM's logits depend on the whole batch, which the reference
never looks for. Each check returns a `CheckResult` and never raises on a suspicious model:
the evaluation goes on and the report carries the flags. Functions are called as given
(eagerly), once per check, on a batch of real inputs. The checks that compare two
computations of the same logits (`check_batch_dependence`, `check_final_reevaluation`) take a
`tolerance` from the precision in use (`precision.logit_tolerance`): a prediction or verdict
that changes at a near tie (decision margin within it) is rounding, counted but not flagged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from hpm_jax.attacks import batching, precision
from hpm_jax.attacks.losses import cross_entropy

LogitsFn = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """name: which check; flagged: True when the model looks suspicious; message: what was
    seen and what to do; details: the measured numbers."""

    name: str
    flagged: bool
    message: str
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.flagged

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _np(a) -> np.ndarray:
    """On the host in float64; an array over several processes' devices gathered first."""
    return np.asarray(batching.to_host(a), dtype=np.float64)


def check_randomized(fn: LogitsFn, x: jax.Array, *, n: int = 5, alpha: float = 1e-4) -> CheckResult:
    """Flag a model whose output changes between `n` forward passes on the same input: the
    max L2 distance between row-normalised outputs exceeds `alpha` (as the reference)."""
    outs = []
    for _ in range(n):
        out = _np(fn(x))
        outs.append(out / (np.linalg.norm(out, axis=1, keepdims=True) + 1e-10))
    diff = max(
        float(np.linalg.norm(outs[i] - outs[j], axis=1).max())
        for i in range(n)
        for j in range(i + 1, n)
    )
    preds_differ = any((o.argmax(1) != outs[0].argmax(1)).any() for o in outs)
    flagged = diff > alpha or preds_differ
    msg = (
        f"it seems to be a randomized defense (outputs of {n} passes on the same input differ "
        f"by up to {diff:.3g})! Please use version='rand'."
        if flagged
        else f"outputs of {n} passes agree (max difference {diff:.3g})."
    )
    return CheckResult("randomized", flagged, msg, {"max_difference": diff, "passes": n})


def check_softmax_output(logits: jax.Array, *, alpha: float = 1e-5) -> CheckResult:
    """Flag outputs that look like probabilities (in [0, 1], rows summing to 1): losses on
    probabilities saturate and their gradients vanish, so attacks underperform."""
    out = _np(logits)
    looks = bool(
        out.max() < 1 + alpha and out.min() > -alpha and (np.abs(out.sum(-1) - 1) < alpha).all()
    )
    msg = (
        "it seems that the output is a probability distribution, please be sure that the "
        "logits are used!"
        if looks
        else "the output does not look like probabilities."
    )
    return CheckResult("softmax_output", looks, msg, {"num_classes": int(out.shape[-1])})


def check_zero_gradients(logits_fn: LogitsFn, x: jax.Array, y: jax.Array) -> CheckResult:
    """Flag points where the gradient of the cross-entropy w.r.t. the input is exactly zero
    (quantised inputs, saturated outputs): gradient attacks cannot move from there."""
    grad = jax.grad(lambda v: jnp.sum(cross_entropy(logits_fn(v), y)))(x)
    zero = _np(jnp.sum(jnp.abs(grad.reshape(grad.shape[0], -1)), axis=1)) == 0
    k = int(zero.sum())
    msg = (
        f"there are {k} points with zero gradient! This might lead to unreliable evaluation "
        "with gradient-based attacks."
        if k
        else "every point has a non-zero gradient."
    )
    return CheckResult(
        "zero_gradients", k > 0, msg, {"zero_gradient_points": k, "points": len(zero)}
    )


# Primitives that make gradient attacks see something other than the forward function.
_DYNAMIC_PRIMITIVES = {
    "custom_vjp_call": "a custom gradient (custom_vjp): attacks follow a surrogate gradient",
    "custom_vjp_call_jaxpr": "a custom gradient (custom_vjp): attacks follow a surrogate gradient",
    "while": "a while loop: an iterative, input-dependent forward pass",
    "pure_callback": "a host callback: code JAX cannot differentiate or see",
    "io_callback": "a host callback: code JAX cannot differentiate or see",
}


def _primitives(jaxpr) -> set[str]:
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            names |= _primitives(sub)
    return names


def check_dynamic(fn: LogitsFn, x: jax.Array) -> CheckResult:
    """Flag a forward pass containing custom gradients, while loops or host callbacks (JAX's
    counterpart of the reference's trace for gradient calls inside the forward pass): such a
    model may defeat gradient attacks without being robust. A one-example trace, no compute."""
    found = _primitives(jax.make_jaxpr(fn)(x[:1]).jaxpr)
    reasons = sorted({_DYNAMIC_PRIMITIVES[p] for p in found & _DYNAMIC_PRIMITIVES.keys()})
    msg = (
        "it seems to be a dynamic defense! The evaluation with AutoAttack might be "
        "insufficient. The forward pass contains " + "; ".join(reasons) + "."
        if reasons
        else "the forward pass is a plain differentiable function."
    )
    return CheckResult("dynamic", bool(reasons), msg, {"primitives": sorted(found)})


def check_batch_dependence(
    fn: LogitsFn,
    x: jax.Array,
    *,
    n_alone: int = 4,
    rtol: float = 1e-3,
    tolerance: float = precision.FLOAT32_FLOOR,
) -> CheckResult:
    """Flag a model whose output for a point depends on the other points of its batch: the
    logits of the first `n_alone` points alone, of the first half as a batch and of the batch
    reversed are compared with those in the batch. A logit difference above max(`rtol`,
    `tolerance`) times the largest logit flags it, and so does a changed prediction, except
    at a near tie: a row whose top-2 gap in the batch is within `tolerance` of its scale
    (`precision.logit_tolerance` of the precision in use: 1e-5 in float32, 3.9e-3 for TF32),
    where rounding alone (another batch shape, other kernels) may swap the top two. AutoAttack
    judges a point inside buckets of other robust points (padded by repeats), not inside its
    original batch, so for such a model its verdict is not the verdict in the original batch:
    evaluate it with the Mixed Surrogate Attack."""
    if x.shape[0] < 2:
        return CheckResult("batch_dependence", False, "a batch of one cannot be checked.", {})
    full = _np(fn(x))
    scale = float(np.abs(full).max()) + 1e-12
    near_tie = precision.decision_margin(full) <= tolerance
    m = x.shape[0]
    variants = {"reversed": (_np(fn(x[::-1]))[::-1], np.arange(m))}
    half = max(m // 2, 1)
    variants["first half"] = (_np(fn(x[:half])), np.arange(half))
    for i in range(min(n_alone, m)):
        variants[f"point {i} alone"] = (_np(fn(x[i : i + 1])), np.array([i]))
    worst, worst_name, preds_changed, near_ties = 0.0, "", [], 0
    for name, (out, rows) in variants.items():
        diff = float(np.abs(out - full[rows]).max()) / scale
        if diff > worst:
            worst, worst_name = diff, name
        changed = out.argmax(1) != full[rows].argmax(1)
        near_ties += int((changed & near_tie[rows]).sum())
        if (changed & ~near_tie[rows]).any():
            preds_changed.append(name)
    flagged = worst > max(rtol, tolerance) or bool(preds_changed)
    if flagged:
        msg = (
            f"the output depends on the rest of the batch: logits change by up to "
            f"{worst:.3g} of their scale ({worst_name})"
            + (f", predictions change ({', '.join(preds_changed)})" if preds_changed else "")
            + ". AutoAttack judges points in buckets of other robust points, not in their "
            "original batch; evaluate such a model with the Mixed Surrogate Attack."
        )
    else:
        msg = f"the output of a point does not depend on its batch (max change {worst:.3g})."
        if near_ties:
            msg += (
                f" {near_ties} prediction(s) changed at near ties (top-2 gap within "
                f"{tolerance:.3g} of the scale): rounding, not a finding."
            )
    return CheckResult(
        "batch_dependence",
        flagged,
        msg,
        {
            "max_relative_change": worst,
            "predictions_changed": preds_changed,
            "near_tie_changes": near_ties,
            "tolerance": tolerance,
        },
    )


def check_square(accuracy_after: Mapping[str, float], *, alpha: float = 0.002) -> CheckResult:
    """Flag Square (gradient-free) lowering the robust accuracy below what the gradient
    attacks reached by more than `alpha`: a sign of gradient masking. `accuracy_after` maps
    'clean' and attack names to the robust accuracy after them (as in the reference)."""
    if "square" not in accuracy_after or len(accuracy_after) <= 2:
        return CheckResult("square", False, "not applicable (needs Square and another attack).")
    others = min(v for k, v in accuracy_after.items() if k != "square")
    drop = others - accuracy_after["square"]
    flagged = drop > alpha
    msg = (
        f"Square Attack has decreased the robust accuracy of {drop:.2%}. This might indicate "
        "that the robustness evaluation using AutoAttack is unreliable. Consider running "
        "Square Attack with more iterations and restarts or an adaptive attack."
        if flagged
        else "Square did not lower the robust accuracy reached by the other attacks."
    )
    return CheckResult("square", flagged, msg, {"decrease": max(drop, 0.0)})


def check_perturbation(x_adv: np.ndarray, x: np.ndarray, *, norm: str, eps: float) -> CheckResult:
    """Flag adversarial images outside the eps-ball (beyond float rounding), outside [0, 1],
    or with NaNs: the attack broke its contract, and the accuracy would be wrong."""
    # NumPy, not jnp: the whole dataset never needs to go to the device for this.
    delta = np.asarray(x_adv, np.float64).reshape(len(x_adv), -1) - np.asarray(
        x, np.float64
    ).reshape(len(x), -1)
    order = {"Linf": np.inf, "L2": 2, "L1": 1}[norm]
    dist = np.linalg.norm(delta, ord=order, axis=1) if len(x) else np.zeros(0)
    n_nan = int(np.isnan(x_adv).sum())
    max_dist = float(np.nanmax(dist)) if dist.size and not np.isnan(dist).all() else 0.0
    lo = float(np.nanmin(x_adv)) if x_adv.size else 0.0
    hi = float(np.nanmax(x_adv)) if x_adv.size else 0.0
    tol = 1e-5 * max(eps, 1.0) if norm == "Linf" else 1e-4 * max(eps, 1.0)
    flagged = n_nan > 0 or max_dist > eps + tol or lo < -1e-6 or hi > 1 + 1e-6
    msg = (
        f"max {norm} perturbation: {max_dist:.5f}, nan in tensor: {n_nan}, "
        f"max: {hi:.5f}, min: {lo:.5f}"
    )
    if flagged:
        msg += f" -- outside the eps={eps} ball or [0, 1]: an attack broke its contract."
    return CheckResult("perturbation", flagged, msg, {"max_perturbation": max_dist, "nan": n_nan})


def check_final_reevaluation(
    chain_robust: np.ndarray, final_correct: np.ndarray, near_tie: np.ndarray | None = None
) -> CheckResult:
    """Flag points whose verdict changes when the final adversarial images are re-judged in
    their original batches: either the judge depends on the batch (points were judged inside
    buckets during the attacks) or it is randomised. A change at a point of `near_tie` (its
    decision margin |z_y - max_{c != y} z_c| in the re-evaluation within the tolerance of the
    precision in use, `precision.decision_margin`) is counted but not flagged: rounding at
    another batch shape can flip it. The verdicts themselves are the caller's (the chain
    keeps a point broken in the re-evaluation broken)."""
    chain_robust = np.asarray(chain_robust, bool)
    final_correct = np.asarray(final_correct, bool)
    tie = np.zeros_like(chain_robust) if near_tie is None else np.asarray(near_tie, bool)
    changed = chain_robust != final_correct
    lost = int((changed & chain_robust & ~tie).sum())
    regained = int((changed & ~chain_robust & ~tie).sum())
    near_ties = int((changed & tie).sum())
    flagged = lost + regained > 0
    msg = (
        f"re-judging the final adversarial images in their batches changed {lost + regained} "
        f"verdicts ({lost} robust -> broken, {regained} broken -> correct); such a point "
        "counts as not robust. The judge depends on its batch or on chance."
        if flagged
        else "re-judging the final adversarial images agrees with the attacks' verdicts."
    )
    if near_ties:
        msg += (
            f" {near_ties} verdict(s) changed at near ties (within the precision's "
            "tolerance): rounding, not flagged; a broken one counts as not robust."
        )
    return CheckResult(
        "final_reevaluation",
        flagged,
        msg,
        {"lost": lost, "regained": regained, "near_ties": near_ties},
    )
