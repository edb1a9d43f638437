"""How sensitive is a head's decision to its features? Margins, their gradients, perturbations.

    from hpm_jax.analysis import sensitivity
    sensitivity.model_heads(hpm_model)       # (Head("fc", "fc"), Head("l2", "ema_l2"), hpm)
    result = sensitivity.analyze(hpm_model, variables, batches)   # {"image", "label"} dicts
    result["summary"]["heads"]["l2"]["relative_sensitivity"]["median"]
    result["per_sample"]["fc"]["lipschitz"]                        # (N,) numpy

Everything below is about a logits function `logits_fn(features (B, D)) -> logits (B, C)`
(a head) and per-sample quantities of sample i with true label y (docs/design.md, section 1):

* margin            m(f) = z_y(f) - z_c*(f), c* = argmax_{c != y} z_c(f) (the runner-up).
* lipschitz         L = ||grad_f m||: the local Lipschitz constant of the margin. For FC it is
                    ||w_y - w_c*||; for un-squared l2 logits -s||f - P_c|| it is at most 2s.
* relative_sensitivity  kappa = L ||f|| / |m|: the relative change of the margin per relative
                    change of the feature, to first order. It is unchanged when the logits are
                    rescaled (the learned l2 scale s cancels), and since both heads of a model
                    see the same f, kappa_fc / kappa_l2 compares |m| / L, the first-order
                    distance to the decision boundary; 1 / kappa is that distance relative to
                    ||f||: a perturbation of relative size 1 / kappa flips the sample if the
                    margin is linear.
* random / worst-case perturbations of radius r: the margin change m(f + delta) - m(f) for
                    delta uniform on the l2 sphere of radius r (`num_draws` per sample, one set
                    of directions for every radius), and for the delta in the l2 ball that
                    minimises the margin (`num_steps` normalised gradient steps of size
                    2.5 r / num_steps from delta = 0, projected on the ball; the lowest margin
                    over the iterates). A flip is a sample the head classifies correctly whose
                    perturbed prediction is wrong; flip rates are over those samples.
* input_gradient    ||grad_x m(x)|| through the backbone in eval mode, and the first-order
                    input-space l2 distance to the boundary |m| / ||grad_x m|| (pixel units).

Batch-coupled heads (HPM: a row's logits depend on the whole batch through the batch
prototypes). Gradients are per sample: row i of logits_fn(F with only row i replaced) is
differentiated in f_i, which gives the diagonal block d m_i / d f_i of the batch Jacobian,
the sensitivity of i's own decision with the rest of its batch fixed. The gradient of the sum
of margins is not that: it adds sum_j d m_j / d f_i, how i moves the others' prototypes.
HPM's gradients are the ones the model exposes, the straight-through estimator's.
Perturbations follow `context`: "joint" (default) perturbs every sample of the batch at once,
each within its own ball, and the worst case descends the sum of the margins: the batch
adversary that MSA evaluates, at the cost of one head evaluation per step. "isolated"
perturbs sample i alone with the other features fixed (the exact per-sample definition), at B
head evaluations per step: ~50x slower for B = 250. For heads whose rows are independent (FC,
l2) the two contexts are the same computation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from hpm_jax import models

LogitsFn = Callable[[jax.Array], jax.Array]
# features (B, D) -> logits (B, C) of a model's head alone, a pytree with traced weights; the
# name hpm_jax.analysis exports.
head_logits_fn = models.head_logits_fn
CONTEXTS = ("isolated", "joint")
DEFAULT_RELATIVE_RADII = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_TINY = 1e-12


@dataclasses.dataclass(frozen=True)
class Head:
    """One head of a model to analyse.

    name: label in the outputs ("fc", "l2", "hpm").
    mode: the `mode` the model's head is called with ("fc", "ema_l2", "hpm", ...).
    coupled: whether a row's logits depend on the other rows of the batch (HPM modes).
    """

    name: str
    mode: str
    coupled: bool = False


def margins(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(m, c*): the margin z_y - max_{c != y} z_c (B,) and the runner-up class c* (B,).

    The runner-up is an index, so the gradient of m is exactly grad z_y - grad z_c*.
    """
    chex.assert_rank([logits, labels], [2, 1])
    chex.assert_equal_shape_prefix([logits, labels], 1)
    own = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
    runner_up = jnp.argmax(jnp.where(own, -jnp.inf, logits), axis=-1)
    z_y = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    z_c = jnp.take_along_axis(logits, runner_up[:, None], axis=-1)[:, 0]
    return z_y - z_c, runner_up


def isolated(logits_fn: LogitsFn, context: jax.Array, *, max_elements: int = 1 << 24) -> LogitsFn:
    """Per-sample logits of a batch-coupled head: row i sees `context` with only row i replaced.

    For a head whose rows are independent this equals `logits_fn`; for HPM it removes the
    coupling, so the gradient of the sum of margins is the diagonal blocks d m_i / d f_i.
    Rows are evaluated in chunks of at most `max_elements` context entries (a chunk of k rows
    holds k * B * D); a chunk size that divides B keeps one loop body to compile.
    """
    chex.assert_rank(context, 2)
    b, d = context.shape
    chunk = max(1, min(b, max_elements // (b * d)))
    chunk = max(k for k in range(1, chunk + 1) if b % k == 0)
    rows = jnp.arange(b)

    def row_logits(f, i):
        return logits_fn(context.at[i].set(f))[i]

    if chunk == b:  # everything at once: no loop (XLA compiles a loop-free graph faster)
        return lambda features: jax.vmap(row_logits)(features, rows)
    return lambda features: jax.lax.map(
        lambda args: row_logits(*args), (features, rows), batch_size=chunk
    )


def margin_gradients(
    logits_fn: LogitsFn, features: jax.Array, labels: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(m (B,), grad_f m (B, D), logits (B, C)) for a per-sample `logits_fn`.

    Row i of the gradient of sum_j m_j is d m_i / d f_i when rows are independent (wrap a
    coupled head with `isolated` first).
    """

    def total(f):
        logits = logits_fn(f)
        m, _ = margins(logits, labels)
        return m.sum(), (m, logits)

    (_, (m, logits)), grad = jax.value_and_grad(total, has_aux=True)(features)
    return m, grad, logits


def unit_directions(seed: int | Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """float32 directions uniform on the unit l2 sphere of the last axis (normalised Gaussians).

    Drawn with NumPy on the host: cheap, the same for every head of an analysis, and no
    compilation (JAX's threefry sampler takes seconds to compile on a CPU).
    """
    g = np.random.default_rng(seed).standard_normal(tuple(shape))
    return (g / np.linalg.norm(g, axis=-1, keepdims=True)).astype(np.float32)


def random_perturbations(
    logits_fn: LogitsFn,
    features: jax.Array,
    labels: jax.Array,
    radii: jax.Array,
    directions: jax.Array,
) -> dict[str, jax.Array]:
    """Margin change and misclassification under delta = r u for unit `directions` u (K, B, D).

    Returns "margin_change" (R, K, B) = m(f + delta) - m(f) and "wrong" (R, K, B); the same K
    directions per sample serve every radius (from `unit_directions`: uniform on the sphere).
    """
    chex.assert_rank([features, labels, radii, directions], [2, 1, 1, 3])
    chex.assert_equal_shape_suffix([features, directions], 2)
    clean, _ = margins(logits_fn(features), labels)

    def at_radius(r):
        def one_draw(u):
            logits = logits_fn(features + r * u)
            m, _ = margins(logits, labels)
            return m - clean, jnp.argmax(logits, axis=-1) != labels

        return jax.lax.map(one_draw, directions)

    change, wrong = jax.lax.map(at_radius, radii)  # sequential: memory of one draw at a time
    return {"margin_change": change, "wrong": wrong}


def project_l2_ball(delta: jax.Array, radius: jax.Array) -> jax.Array:
    """Rows of `delta` scaled onto the l2 ball of `radius` where they lie outside it."""
    norm = jnp.linalg.norm(delta, axis=-1, keepdims=True)
    return delta * jnp.minimum(1.0, radius / jnp.maximum(norm, _TINY))


def worst_case_perturbations(
    logits_fn: LogitsFn,
    features: jax.Array,
    labels: jax.Array,
    radii: jax.Array,
    *,
    num_steps: int = 10,
    step_factor: float = 2.5,
) -> dict[str, jax.Array]:
    """The lowest margin found in the l2 ball of each radius by projected gradient descent.

    Steps of length `step_factor` * r / `num_steps` along -grad/||grad|| (per row) from
    delta = 0, projected on the ball. Returns "margin_change" (R, B) = min over the
    `num_steps` + 1 iterates of m(f + delta) - m(f) (<= 0) and "wrong" (R, B): whether any
    iterate is misclassified. Rows must be independent (wrap a coupled head with `isolated`,
    or accept that every row moves at once: the joint batch adversary).
    """
    chex.assert_rank([features, labels, radii], [2, 1, 1])
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    clean, _ = margins(logits_fn(features), labels)

    def evaluate(delta):
        m, grad, logits = margin_gradients(logits_fn, features + delta, labels)
        return m, grad, jnp.argmax(logits, axis=-1) != labels

    def at_radius(r):
        step = step_factor * r / num_steps

        def body(_, carry):
            delta, lowest, wrong = carry
            m, grad, is_wrong = evaluate(delta)
            direction = grad / jnp.maximum(jnp.linalg.norm(grad, axis=-1, keepdims=True), _TINY)
            delta = project_l2_ball(delta - step * direction, r)
            return delta, jnp.minimum(lowest, m), wrong | is_wrong

        start = (jnp.zeros_like(features), clean, jnp.zeros(labels.shape, bool))
        delta, lowest, wrong = jax.lax.fori_loop(0, num_steps, body, start)
        logits = logits_fn(features + delta)  # the last iterate, which no step evaluated
        m, _ = margins(logits, labels)
        return jnp.minimum(lowest, m) - clean, wrong | (jnp.argmax(logits, axis=-1) != labels)

    change, wrong = jax.lax.map(at_radius, radii)
    return {"margin_change": change, "wrong": wrong}


def input_gradients(
    features_fn: Callable[[jax.Array], jax.Array], x: jax.Array, feature_grads: jax.Array
) -> jax.Array:
    """grad_x m (same shape as x) from grad_f m (B, D), by one backward pass of the backbone.

    Exact when `features_fn` treats samples independently (a backbone in eval mode): the
    vector-Jacobian product with rows g_i is then g_i^T d f_i / d x_i row by row.
    """
    features, pullback = jax.vjp(features_fn, x)
    chex.assert_equal_shape([features, feature_grads])
    (grads,) = pullback(feature_grads)
    return grads


def measure_features(
    logits_fn: LogitsFn,
    features: jax.Array,
    labels: jax.Array,
    radii: jax.Array,
    directions: jax.Array,
    *,
    coupled: bool = False,
    context: str = "joint",
    num_steps: int = 10,
) -> dict[str, jax.Array]:
    """Every feature-space quantity of the module docstring for one batch (jittable).

    `directions` (K, B, D) are unit vectors (`unit_directions`) for the random perturbations.
    Returns per-sample arrays: margin, runner_up, correct, feature_norm, lipschitz,
    relative_sensitivity (B,); feature_grad (B, D); random_margin_change, random_wrong
    (B, R, K); worst_margin_change, worst_wrong (B, R).
    """
    chex.assert_rank([features, labels, radii], [2, 1, 1])
    chex.assert_equal_shape_prefix([features, labels], 1)
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}.")
    # Gradients are always per sample (the diagonal block); perturbations follow `context`.
    per_sample = isolated(logits_fn, features) if coupled else logits_fn
    perturbed = per_sample if context == "isolated" else logits_fn
    m, grad, logits = margin_gradients(per_sample, features, labels)
    _, runner_up = margins(logits, labels)
    lipschitz = jnp.linalg.norm(grad, axis=-1)
    norm = jnp.linalg.norm(features, axis=-1)
    rand = random_perturbations(perturbed, features, labels, radii, directions)
    worst = worst_case_perturbations(perturbed, features, labels, radii, num_steps=num_steps)
    return {
        "margin": m,
        "runner_up": runner_up,
        "correct": jnp.argmax(logits, axis=-1) == labels,
        "feature_norm": norm,
        "lipschitz": lipschitz,
        "relative_sensitivity": lipschitz * norm / jnp.abs(m),
        "feature_grad": grad,
        # Samples first everywhere, so batches concatenate along axis 0.
        "random_margin_change": jnp.moveaxis(rand["margin_change"], -1, 0),  # (B, R, K)
        "random_wrong": jnp.moveaxis(rand["wrong"], -1, 0),
        "worst_margin_change": jnp.moveaxis(worst["margin_change"], -1, 0),  # (B, R)
        "worst_wrong": jnp.moveaxis(worst["wrong"], -1, 0),
    }


# ---------------------------------------------------------------------------------------------
# Models: the heads of a Classifier, batches of images, the summary.


def model_heads(model: Any) -> tuple[Head, ...]:
    """The heads a model provides: FC -> fc; l2 -> l2; HPM -> fc, l2 (against P_ema), hpm.

    A head is each of the model's modes (`models.head_modes`) that is the own output of a
    registered head class (`models.HEADS`, whose name it takes: "ema_l2" is the "l2" head's);
    HPM's smooth "soft" surrogate is left out. `coupled` is the head's declaration. One HPM
    model gives all three from one backbone, so they see the same features.
    """
    try:
        modes = models.head_modes(model)
    except ValueError:
        raise ValueError(
            f"No sensitivity analysis for a {type(model.head).__name__} head; pass heads="
            "(Head(name, mode, coupled), ...) naming the modes to call it with."
        ) from None
    names = {cls.judge_mode: name for name, cls in models.HEADS.items()}
    return tuple(
        Head(names[mode], mode, coupled=models.is_coupled(model, mode))
        for mode in modes
        if mode in names
    )


def logit_scale(variables: Mapping[str, Any]) -> float | None:
    """s = exp(log_scale) of an l2 / HPM head, None for an FC head."""
    log_scale = variables.get("params", {}).get("head", {}).get("log_scale")
    return None if log_scale is None else float(np.exp(np.asarray(log_scale)))


class _Same:
    """A static jit argument comparing its value by identity (models holding lists do not
    hash). The jit cache keeps the value alive, so its id is never reused meanwhile."""

    def __init__(self, value: Any):
        self.value = value

    def __hash__(self) -> int:
        return id(self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.value is self.value


# Module-level jits with the model (by identity) and the head static: compiled once per
# process for every batch, head and later analysis of the same model object.
@functools.partial(jax.jit, static_argnames=("model", "head", "context", "num_steps"))
def _measure_head(variables, features, labels, radii, directions, *, model, head, **kwargs):
    logits_fn = models.head_logits_fn(model.value, variables, mode=head.mode)
    return measure_features(
        logits_fn, features, labels, radii, directions, coupled=head.coupled, **kwargs
    )


@functools.partial(jax.jit, static_argnames="model")
def _features(variables, images, *, model):
    return model.value.apply(variables, images, method="features")


@functools.partial(jax.jit, static_argnames="model")
def _input_gradient_norms(variables, images, feature_grads, *, model):
    def features_fn(x):
        return model.value.apply(variables, x, method="features")

    grads = input_gradients(features_fn, images, feature_grads)
    return jnp.sqrt(jnp.sum(grads**2, axis=tuple(range(1, grads.ndim))))


def analyze(
    model: Any,
    variables: Any,
    batches: Iterable[Mapping[str, Any]],
    *,
    heads: Sequence[Head] | None = None,
    relative_radii: Sequence[float] = DEFAULT_RELATIVE_RADII,
    context: str = "joint",
    num_draws: int = 4,
    num_steps: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure every head of `model` on `batches` ({"image", "label"[, "mask"]}).

    Radii are `relative_radii` times the mean feature norm over all analysed samples (the
    same absolute radii for every head of the model). Every head sees the same random
    directions. Returns {"summary": JSON-ready dict (see `summarize`), "per_sample": {head:
    {quantity: np.ndarray with samples first}}}.
    """
    heads = tuple(heads) if heads is not None else model_heads(model)
    if not heads:
        raise ValueError("No heads to analyse.")
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}.")
    batches = [(b["image"], b["label"], b.get("mask")) for b in batches]
    if not batches:
        raise ValueError("No batches to analyse.")
    padded = any(mask is not None and not bool(np.all(mask)) for _, _, mask in batches)
    if padded and any(h.coupled for h in heads):
        raise ValueError(
            "A batch holds padding (mask False), which would enter the batch statistics of the "
            "coupled head(s) "
            f"{[h.name for h in heads if h.coupled]}; choose a number of examples divisible "
            "by the batch size."
        )

    # The backbone is compiled twice in all (features, and its VJP for input gradients), not
    # once per head; per head only the small head graphs are compiled.
    static = _Same(model)
    features = [_features(variables, x, model=static) for x, _, _ in batches]
    keep = [np.ones(len(y), bool) if m is None else np.asarray(m, bool) for _, y, m in batches]
    norms = [np.linalg.norm(np.asarray(f), axis=-1)[k] for f, k in zip(features, keep, strict=True)]
    mean_norm = float(np.concatenate(norms).mean())
    radii = jnp.asarray(relative_radii, jnp.float32) * mean_norm

    per_sample = {}
    for head in heads:
        parts = []
        for index, ((x, y, _), f, k) in enumerate(zip(batches, features, keep, strict=True)):
            u = unit_directions((seed, index), (num_draws, *f.shape))  # the same for every head
            out = _measure_head(variables, f, y, radii, u, model=static, head=head,
                                context=context, num_steps=num_steps)  # fmt: skip
            grads = out.pop("feature_grad")
            out["input_gradient"] = _input_gradient_norms(variables, x, grads, model=static)
            out["input_distance"] = jnp.abs(out["margin"]) / out["input_gradient"]
            parts.append({name: np.asarray(value)[k] for name, value in out.items()})
        per_sample[head.name] = {
            name: np.concatenate([p[name] for p in parts]) for name in parts[0]
        }

    summary = summarize(per_sample, relative_radii=relative_radii, mean_feature_norm=mean_norm)
    scale = logit_scale(variables)
    for head in heads:
        summary["heads"][head.name].update(
            mode=head.mode, coupled=head.coupled, logit_scale=None if head.mode == "fc" else scale
        )
    summary.update(context=context, num_draws=num_draws, num_steps=num_steps, seed=seed)
    return {"summary": summary, "per_sample": per_sample}


def statistics(values: np.ndarray) -> dict[str, float]:
    """mean, std, quantiles (q05 .. q95, median) of the finite values, and how many there are."""
    values = np.asarray(values, np.float64).ravel()
    finite = values[np.isfinite(values)]
    out = {"count": int(finite.size), "non_finite": int(values.size - finite.size)}
    if finite.size == 0:
        return out
    out.update(mean=float(finite.mean()), std=float(finite.std()))
    for q, v in zip(QUANTILES, np.quantile(finite, QUANTILES), strict=True):
        out["median" if q == 0.5 else f"q{round(100 * q):02d}"] = float(v)
    return out


def _perturbation_summary(change: np.ndarray, wrong: np.ndarray, per_sample: dict) -> dict:
    """Per radius: flip rate, mean signed margin change, |change| / m over correct samples."""
    correct = per_sample["correct"]
    margin = per_sample["margin"][correct]
    change, wrong = change[correct], wrong[correct]  # (N, R[, K])
    relative = np.abs(change) / margin.reshape((-1,) + (1,) * (change.ndim - 1))
    radii_axis_last = [
        np.moveaxis(a, 1, -1).reshape(-1, a.shape[1]) for a in (change, wrong, relative)
    ]
    change, wrong, relative = radii_axis_last  # (N * K, R)
    nan = [math.nan] * change.shape[1]
    return {
        "flip_rate": wrong.mean(axis=0).tolist() if len(wrong) else nan,
        "margin_change_mean": change.mean(axis=0).tolist() if len(change) else nan,
        "relative_margin_change_median": np.median(relative, axis=0).tolist() if len(relative)
        else nan,
        "relative_margin_change_mean": relative.mean(axis=0).tolist() if len(relative) else nan,
    }  # fmt: skip


def summarize(
    per_sample: Mapping[str, Mapping[str, np.ndarray]],
    *,
    relative_radii: Sequence[float],
    mean_feature_norm: float,
) -> dict[str, Any]:
    """The JSON-ready summary of `analyze`'s per-sample arrays.

    Per head: num_examples, accuracy, statistics of margin, lipschitz, relative_sensitivity,
    input_gradient, input_distance; "random" and "worst_case": per radius the flip rate (over
    correctly classified samples), the mean signed margin change, and the median and mean of
    |margin change| / margin over correctly classified samples (and draws): the typical size
    of a random change, and for the worst case (change <= 0) > 1 exactly when flipped.
    """
    radii = [r * mean_feature_norm for r in relative_radii]
    heads = {}
    for name, q in per_sample.items():
        heads[name] = {
            "num_examples": len(q["margin"]),
            "accuracy": float(np.mean(q["correct"])),
            **{k: statistics(q[k]) for k in ("margin", "lipschitz", "relative_sensitivity",
                                             "input_gradient", "input_distance")},
            "random": _perturbation_summary(q["random_margin_change"], q["random_wrong"], q),
            "worst_case": _perturbation_summary(q["worst_margin_change"], q["worst_wrong"], q),
        }  # fmt: skip
    return {
        "relative_radii": [float(r) for r in relative_radii],
        "radii": radii,
        "mean_feature_norm": mean_feature_norm,
        "heads": heads,
    }
