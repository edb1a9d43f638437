"""Projected gradient descent (Madry et al.), the attack inside adversarial training.

    from hpm_jax.attacks import pgd
    x_adv = pgd.perturb(logits_fn, x, y, key=key, norm="Linf", eps=8 / 255,
                        step_size=2 / 255, num_steps=10)                 # PGD-AT's inner max
    x_adv = pgd.perturb(logits_fn, x, y, key=key, norm="Linf", eps=8 / 255, step_size=2 / 255,
                        num_steps=10, loss="kl", reference_logits=clean_logits,
                        random_start="normal")                           # TRADES' inner max
    result = pgd.pgd(logits_fn, x, y, key=key, eps=0.1, step_size=0.025, num_steps=10)
    result.x_adv, result.robust                                          # the attack contract

`perturb` is jittable (a `lax.fori_loop`; `norm`, `loss`, `num_steps` and `random_start` are
static) and returns the last iterate, as PGD-AT and TRADES use it. Each step ascends the
summed per-example loss (so each example's step is its own gradient's, whatever the batch
size): Linf steps by `step_size * sign(g)`, L2 by `step_size * g / ||g||_2`; then it projects
back into the eps-ball around x intersected with [0, 1]^d.

Losses (both MAXIMISED by the attack): "ce", the cross-entropy of the true label (PGD-AT);
"kl", KL(softmax(reference_logits) || softmax(logits_fn(x_adv))) (TRADES), where
`reference_logits` are the clean logits, held fixed.

Random starts: "uniform" (uniform in the Linf box, Madry et al.; for L2 a uniform direction
and radius), "sphere" (on the eps-sphere, as AutoAttack), "normal" (0.001 * N(0, 1), as the
TRADES reference code), "none".
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hpm_jax.attacks import contract, geometry, losses, types
from hpm_jax.attacks.losses import cross_entropy
from hpm_jax.runtime.xla_options import jit

LOSSES = ("ce", "kl")
RANDOM_STARTS = ("uniform", "sphere", "normal", "none")  # `geometry.random_start` kinds
NORMS = ("Linf", "L2")


def _check_static(norm: str, loss: str, random_start: str, num_steps: int, reference) -> None:
    contract.check_norm(norm, NORMS)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
    if random_start not in RANDOM_STARTS:
        raise ValueError(f"random_start must be one of {RANDOM_STARTS}, got {random_start!r}.")
    if not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be an int >= 0, got {num_steps!r}.")
    if (loss == "kl") != (reference is not None):
        raise ValueError(
            'loss="kl" needs reference_logits (the clean logits, e.g. TRADES) and loss="ce" '
            f"takes none; got loss={loss!r} with reference_logits "
            f"{'given' if reference is not None else 'missing'}."
        )


@functools.partial(jit, static_argnames=("norm", "num_steps", "loss", "random_start"))
def _pgd_jit(logits_fn, judge_fn, x, y, key, eps, step_size, reference_logits, **static):
    """The attack and the judge's verdict (correct on x and on x_adv, in batch context)."""
    x_adv = perturb(
        logits_fn, x, y, key=key, eps=eps, step_size=step_size,
        reference_logits=reference_logits, **static,
    )  # fmt: skip
    robust = losses.correct(judge_fn(x), y) & losses.correct(judge_fn(x_adv), y)
    return x_adv, robust


def perturb(
    logits_fn: types.LogitsFn,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    eps: float | jax.Array,
    step_size: float | jax.Array,
    num_steps: int,
    norm: str = "Linf",
    loss: str = "ce",
    reference_logits: jax.Array | None = None,
    random_start: str = "uniform",
) -> jax.Array:
    """The PGD iterate after `num_steps` steps: (B, H, W, C) within eps of x, in [0, 1].

    Traceable (use it inside a jitted training step). The returned array carries no
    gradient back to the model or to x (it is a stopped constant, as adversarial training
    wants); `logits_fn` is only differentiated with respect to its input.
    """
    _check_static(norm, loss, random_start, num_steps, reference_logits)
    x = jax.lax.stop_gradient(x)
    if reference_logits is not None:
        reference_logits = jax.lax.stop_gradient(reference_logits)

    def objective(x_adv):
        logits = logits_fn(x_adv)
        if loss == "ce":
            return jnp.sum(cross_entropy(logits, y))
        return jnp.sum(losses.kl_divergence(logits, reference_logits))

    grad_fn = jax.grad(objective)

    def step(_, x_adv):
        g = grad_fn(x_adv)
        direction = jnp.sign(g) if norm == "Linf" else geometry.normalize(g, "L2")
        return geometry.project(x_adv + step_size * direction, x, eps, norm)

    x_adv = geometry.random_start(key, x, eps, norm, random_start)
    x_adv = jax.lax.fori_loop(0, num_steps, step, x_adv)
    return jax.lax.stop_gradient(x_adv)


def pgd(
    logits_fn: types.LogitsFn,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    eps: float,
    step_size: float,
    num_steps: int,
    norm: str = "Linf",
    loss: str = "ce",
    reference_logits: jax.Array | None = None,
    random_start: str = "uniform",
    judge_fn: types.LogitsFn | None = None,
) -> types.AttackResult:
    """PGD under the shared attack contract: checks the inputs, runs jitted, judges the result.

    `judge_fn` (default `logits_fn`) decides `robust` on the final iterate, on the whole batch
    at once; a point misclassified already on x counts as not robust. The array leaves of a
    pytree `logits_fn` / `judge_fn` are traced (see `contract`): new weights recompile nothing.
    """
    if np.ndim(eps) != 0:
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}.")
    checked = contract.validate(logits_fn, judge_fn, x, y, norm=norm, eps=eps,
                                allowed_norms=NORMS)  # fmt: skip
    _check_static(norm, loss, random_start, num_steps, reference_logits)
    x_adv, robust = _pgd_jit(
        *contract.traced_pair(logits_fn, checked.judge_fn, x), x, y, key, float(eps),
        step_size, reference_logits, norm=norm, num_steps=num_steps, loss=loss,
        random_start=random_start,
    )  # fmt: skip
    return types.AttackResult(x_adv, robust)
