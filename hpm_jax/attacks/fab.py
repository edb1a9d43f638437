"""FAB: the Fast Adaptive Boundary attack of AutoAttack (Croce & Hein, 2020), FAB-T and FAB.

    from hpm_jax.attacks.fab import fab, fab_targeted
    res = fab_targeted(logits_fn, x, y, key=jax.random.key(0), norm="Linf", eps=8 / 255)
    res.x_adv, res.robust      # (B, H, W, C) within eps of x, (B,) bool
    res = fab(logits_fn, x, y, key=jax.random.key(0), norm="L1", eps=12.0)   # untargeted

A minimum-norm attack: for each target class t, FAB linearises the margin z_t - z_y around
its iterate, steps onto that hyperplane ∩ [0, 1]^n by the smallest Lp step (and, mixed in
with weight alpha <= alpha_max, by the step from the clean x, which pulls it back towards
x), overshoots by eta, and on success shrinks the perturbation by beta to look for a closer
boundary point. The smallest adversarial perturbation found is kept; a point counts as broken
only when that norm is <= eps. Otherwise x_adv is the clean x, as in the reference.

Defaults are those of AutoAttack's `standard` version: 100 iterations, 9 targets (capped at
C - 1), one restart from x itself; further restarts start at a random point at distance
eps / 2 (then clipped to [0, 1]), as the reference. Targets are the highest classes other
than y by the clean logits of `logits_fn` (`common.target_classes`, as APGD-T's). Each
iteration takes one vjp of logits_fn and one call of judge_fn on the rows being attacked.

Shrinking (compact=True, the default, as the reference): each run (target x restart) attacks
only the points not yet broken within eps, re-bucketed into the smallest of `bucket_sizes`
(default `buckets.bucket_sizes(B, devices)`; the chain passes its own) that holds them
(`shrink`), so a point broken by one target is never fed to the model again, except as
padding of a bucket; its x_adv is its first success, as the reference's. compact=False runs
every target and restart on the whole batch, so each point is always judged among the others
of its batch (the Mixed Surrogate Attack's batch-coupled judges), and judges every iterate
as APGD does: at each iteration the judge also sees the batch an adversary could submit (each
row's iterate where it lies within eps, else its smallest break so far, or x), and a point it
misclassifies there is broken, with that image, whatever happens to the batch later; the
smallest such break over all runs is kept. A per-sample model breaks the same points either
way; random starts are drawn per point (keyed by its row), so they do not depend on the bucket.

Loops: runs are a Python loop (one host sync per run with compact). The iterations of a run
are one jitted call each with `loop="host"` (the default on CPU, where XLA:CPU runs a model's
convolution gradients inside a while loop without its fast kernels, see `apgd`) or one
`lax.fori_loop` with `loop="lax"` (the default elsewhere); both give the same iterates. The
array leaves of `logits_fn` and `judge_fn` are traced (pytree logits functions, see
`contract`; plain closures are static, hashed by identity); the settings are one static
`FabConfig`; eps (a number or one per image), alpha_max, eta and beta are traced. Batches
sharded over a mesh stay sharded; a fixed key gives the same result on any number of devices.

The untargeted `fab` (AutoAttack's `plus`) runs the same iteration, but each step heads for
the class whose linearised boundary is closest to the iterate, |z_c - z_y| / ||grad||_dual
over c != y (the reference's get_diff_logits_grads_batch): C backward passes per iteration,
from one vjp. Its defaults are `plus`'s: 100 iterations, 5 runs (from x, then 4 random starts).

On a linear model every iterate stays on the ray from x to its projection, and the
reference's update settles at 1.00521 times the minimal perturbation (eta's overshoot against
beta's backward step); the tests check exactly that factor against closed forms.

Differences from the reference (pyautoattack's FABAttack): buckets are padded by repeating
points (fixed shapes), and compact=False attacks every point with every run, judging each
iterate in its batch (one more judge call per iteration). As there, a point the judge gets
wrong on x is returned unchanged. With compact, `robust` is the judge's verdict on the
returned batch (per sample, the verdict found during the search).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from hpm_jax.attacks import common, contract, shrink
from hpm_jax.attacks.apgd import LOOPS, _spans_devices, _use_host_loop
from hpm_jax.attacks.fab_projections import boundary_step
from hpm_jax.runtime.xla_options import jit

# The reference floors step lengths at 1e-8 before forming alpha = |d1| / (|d1| + |d2|).
_MIN_STEP = 1e-8
# ... and adds 1e-12 to the gradient norms that scale the untargeted distances.
_TINY = 1e-12
# The distance to a hyperplane {w·d = m} in a norm is |m| / ||w|| in its dual norm.
_DUAL = {"Linf": "L1", "L2": "L2", "L1": "Linf"}


def _random_start(key: jax.Array, x: jax.Array, radius: jax.Array, norm: str) -> jax.Array:
    """The reference's restart point: x + radius * t / ||t|| in [0, 1] (t uniform in
    [-1, 1] for Linf, Gaussian for L2 and L1)."""
    if norm in ("Linf", "L2"):
        return common.random_start(key, x, radius, norm)
    t = jax.random.normal(key, x.shape, x.dtype)
    return jnp.clip(x + radius * common.normalize(t, "L1"), 0.0, 1.0)


def _closest_boundary(z: jax.Array, vjp, y: jax.Array, norm: str):
    """The untargeted FAB's choice (the reference's get_diff_logits_grads_batch): of the
    linearised boundaries z_c - z_y = 0, c != y, the one closest to the iterate in `norm`,
    |z_c - z_y| / ||grad (z_c - z_y)||_dual. Returns its (B,) value and (B, ...) gradient.
    All C gradients come from one vjp, vmapped over the cotangents e_c - e_y (C backward
    passes, as the reference's full Jacobian)."""
    batch, num_classes = z.shape
    is_y = jax.nn.one_hot(y, num_classes, dtype=bool)
    cotangents = jnp.eye(num_classes, dtype=z.dtype)[:, None, :] - is_y.astype(z.dtype)
    grads = jax.vmap(lambda c: vjp(c)[0])(cotangents)  # (C, B, ...): grad of z_c - z_y
    diffs = z - jnp.take_along_axis(z, y[:, None], 1)  # (B, C)
    flat = grads.reshape(num_classes * batch, -1)
    scale = common.per_sample_norm(flat, _DUAL[norm]).reshape(num_classes, batch).T
    dist = jnp.where(is_y, jnp.inf, jnp.abs(diffs) / (_TINY + scale))
    closest = jnp.argmin(dist, axis=1)  # ties to the lowest class, as torch's min
    f = jnp.take_along_axis(diffs, closest[:, None], 1)[:, 0]
    grad = jnp.take_along_axis(grads, common.expand(closest, grads[0])[None], 0)[0]
    return f, grad


@dataclasses.dataclass(frozen=True)
class FabConfig:
    """The static settings of FAB: targeted (FAB-T: n_targets already capped at C - 1, each
    target n_restarts runs) or untargeted (n_targets 1: n_restarts runs, each iteration
    towards the closest linearised boundary)."""

    norm: str
    n_iter: int
    n_targets: int
    n_restarts: int
    targeted: bool = True
    exact: bool = False  # compact=False: breaks judged in the batch as it stands (`_iteration`)


def _iteration(logits_fn, judge_fn, x, y, target, eps, alpha_max, eta, beta, state, config):
    """One FAB step of every row from its iterate x1; (x1, best, best_norm) updated.

    best is the smallest adversarial point found. Per sample (compact), an iterate counts when
    the judge misclassifies it among the other rows' iterates, some of which may lie beyond
    eps. With config.exact (compact=False, batch-coupled judges), a break counts only in a
    batch an adversary could submit: every row shows its iterate where that lies within eps,
    else its best break so far (or x); a row the judge misclassifies there is broken, with
    that image, whatever happens later (one more judge call per iteration)."""
    x1, best, best_norm = state
    norm, flat = config.norm, (x.shape[0], -1)
    if config.targeted:

        def diff(z_in: jax.Array) -> jax.Array:  # z_t - z_y (< 0 while y beats t)
            z = logits_fn(z_in)
            return (
                jnp.take_along_axis(z, target[:, None], 1)[:, 0]
                - jnp.take_along_axis(z, y[:, None], 1)[:, 0]
            )

        f1, vjp = jax.vjp(diff, x1)
        grad = vjp(jnp.ones_like(f1))[0]
    else:
        z, vjp = jax.vjp(logits_fn, x1)
        f1, grad = _closest_boundary(z, vjp, y, norm)
    w = grad.reshape(flat)
    x0, x1f = x.reshape(flat), x1.reshape(flat)
    # The same hyperplane seen from x1 and from the clean x0: f(x0) = f1 + w·(x0 - x1).
    f0 = f1 + jnp.sum(w * (x0 - x1f), axis=1)
    d1 = boundary_step(x1f, w, f1, norm)
    d2 = boundary_step(x0, w, f0, norm)
    a1 = jnp.maximum(common.per_sample_norm(d1, norm), _MIN_STEP)
    a2 = jnp.maximum(common.per_sample_norm(d2, norm), _MIN_STEP)
    alpha = jnp.clip(a1 / (a1 + a2), 0.0, alpha_max)[:, None]
    new = (x1f + eta * d1) * (1.0 - alpha) + (x0 + eta * d2) * alpha
    new = jnp.clip(new, 0.0, 1.0).reshape(x.shape)
    is_adv = ~common.correct(judge_fn(new), y)
    dist = common.per_sample_norm(new - x, norm)
    if config.exact:
        within = dist <= eps
        shown = jnp.where(common.expand(within, x), new, best)
        better = within & ~common.correct(judge_fn(shown), y) & (dist < best_norm)
    else:
        better = is_adv & (dist < best_norm)
    best = jnp.where(common.expand(better, x), new, best)
    best_norm = jnp.where(better, dist, best_norm)
    # On success, shrink towards x0 to search for a closer boundary point.
    shrunk = x + beta * (new - x)
    return jnp.where(common.expand(is_adv, x), shrunk, new), best, best_norm


@functools.partial(jit, static_argnames="config")
def _run_lax(logits_fn, judge_fn, x, y, target, eps, alpha_max, eta, beta, state, *, config):
    """A whole run (config.n_iter iterations) as one `lax.fori_loop`."""

    def body(_, s):
        return _iteration(logits_fn, judge_fn, x, y, target, eps, alpha_max, eta, beta, s, config)

    return jax.lax.fori_loop(0, config.n_iter, body, state)


@functools.partial(jit, static_argnames="config")
def _step(logits_fn, judge_fn, x, y, target, eps, alpha_max, eta, beta, state, *, config):
    return _iteration(logits_fn, judge_fn, x, y, target, eps, alpha_max, eta, beta, state, config)


@functools.partial(jit, static_argnames="norm")
def _start(key, x, eps, ids, *, norm):
    """Per-row random starts at distance eps / 2, row i drawn with fold_in(key, ids[i]): a
    point's start does not depend on which other points share its bucket."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)

    def one(k, xi, ei):
        return _random_start(k, xi[None], jnp.reshape(0.5 * ei, (1,) * x.ndim), norm)[0]

    return jax.vmap(one)(keys, x, eps)


@functools.partial(jit, static_argnames="n_targets")
def _clean(logits_fn, judge_fn, x, y, *, n_targets):
    """(targets (B, n_targets) or None, attackable: the judge is right on x)."""
    targets = common.target_classes(logits_fn(x), y, n_targets) if n_targets else None
    return targets, common.correct(judge_fn(x), y)


@functools.partial(jit, static_argnames="exact")
def _finish(judge_fn, x, y, best, best_norm, eps, attackable, *, exact):
    success = attackable & (best_norm <= eps)
    x_adv = jnp.where(common.expand(success, x), best, x)
    if exact:  # every break was judged in its batch when it happened
        return x_adv, attackable & ~success
    # Per sample, the judge's verdict on the returned batch equals the one found in the search.
    return x_adv, common.correct(judge_fn(x_adv), y)


def _search(loss_fn, judge_fn, x, y, key, eps, alpha_max, eta, beta, *, config, compact,
            sizes, loop):  # fmt: skip
    """The runs (targets x restarts), each on the rows still to attack: with compact, the
    points not yet broken within eps, re-bucketed before each run (the reference's shrinking
    batch); without, every row of the batch every time (the smallest norm over all runs)."""
    batch = x.shape[0]
    chex.assert_rank(x, 4)
    chex.assert_shape([y, eps], (batch,))
    targets, attackable = _clean(loss_fn, judge_fn, x, y,
                                 n_targets=config.n_targets if config.targeted else 0)  # fmt: skip
    ids = shrink.place_like(np.arange(batch, dtype=np.int32), y)
    best, best_norm = x, jnp.full((batch,), jnp.inf, x.dtype)
    host = _use_host_loop(loop, x)
    sync = host and _spans_devices(x)
    rows = shrink.Rows.full(batch)
    for r in range(config.n_targets * config.n_restarts):
        if compact:  # one host sync per run
            todo = shrink.to_host(attackable & ~(best_norm <= eps))
            rows = shrink.select(todo, sizes)
            if rows is None:
                break
        xb, yb, eb = rows.take(x), rows.take(y), rows.take(eps)
        target = rows.take(targets[:, r // config.n_restarts]) if config.targeted else yb
        x1 = xb
        if r % config.n_restarts:  # the first run of each target starts at x
            x1 = _start(jax.random.fold_in(key, r), xb, eb, rows.take(ids), norm=config.norm)
        state = (x1, rows.take(best), rows.take(best_norm))
        args = (loss_fn, judge_fn, xb, yb, target, eb, alpha_max, eta, beta)
        if host:  # one call per iteration (XLA:CPU's convolution gradients in loops, see apgd)
            for _ in range(config.n_iter):
                state = _step(*args, state, config=config)
                if sync:
                    jax.block_until_ready(state)
        else:
            state = _run_lax(*args, state, config=config)
        best, best_norm = rows.put(best, state[1]), rows.put(best_norm, state[2])
    return _finish(judge_fn, x, y, best, best_norm, eps, attackable, exact=config.exact)


def _check_config(n_iter, n_target_classes, n_restarts, alpha_max, eta, beta) -> None:
    contract.check_int("n_iter", n_iter, 0)
    contract.check_int("n_target_classes", n_target_classes, 1)
    contract.check_int("n_restarts", n_restarts, 1)
    if not 0.0 <= alpha_max <= 1.0:
        raise ValueError(f"alpha_max must lie in [0, 1], got {alpha_max!r}.")
    if not (np.isfinite(eta) and eta > 0):
        raise ValueError(f"eta (the overshoot) must be a finite number > 0, got {eta!r}.")
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta (the backward step) must lie in (0, 1), got {beta!r}.")


def fab_targeted(
    logits_fn: contract.LogitsFn,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    norm: str = "Linf",
    eps: float | jax.Array,
    n_iter: int = 100,
    n_target_classes: int = 9,
    n_restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    judge_fn: contract.LogitsFn | None = None,
    compact: bool = True,
    bucket_sizes: Sequence[int] | None = None,
    loop: str = "auto",
) -> contract.AttackResult:
    """FAB-T (AutoAttack's standard settings by default) against `logits_fn`.

    x: (B, H, W, C) images in [0, 1] (may be sharded over the batch); y: (B,) labels.
    `norm` is "Linf", "L2" or "L1"; eps is a number or one per image (B,); a point is broken
    only if the smallest adversarial perturbation found has norm <= its eps. The targets are
    the min(n_target_classes, C - 1) highest clean classes other than y, each attacked from x
    and then n_restarts - 1 times from random points at distance eps / 2. `judge_fn`
    (default logits_fn) decides success, on the rows being attacked. compact: shrink to the
    points not yet broken between runs (see the module docstring; False keeps the whole
    batch); bucket_sizes: the sizes it shrinks into; loop: "host", "lax" or "auto". Returns
    AttackResult(x_adv, robust): x_adv is the smallest adversarial point found where it lies
    within eps, else x; robust is the judge's verdict on the returned batch. Compiles once
    per shape and configuration (a pytree logits function's weights are traced, see
    `contract`); eps, alpha_max, eta and beta are traced.
    """
    checked = contract.validate(logits_fn, judge_fn, x, y, norm=norm, eps=eps, needs="FAB-T")
    _check_config(n_iter, n_target_classes, n_restarts, alpha_max, eta, beta)
    config = FabConfig(norm=norm, n_iter=int(n_iter), n_restarts=int(n_restarts),
                       n_targets=min(int(n_target_classes), checked.num_classes - 1),
                       exact=not compact)  # fmt: skip
    return _run(logits_fn, checked, x, y, key, alpha_max, eta, beta, config, compact,
                bucket_sizes, loop)  # fmt: skip


def fab(
    logits_fn: contract.LogitsFn,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    norm: str = "Linf",
    eps: float | jax.Array,
    n_iter: int = 100,
    n_restarts: int = 5,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    judge_fn: contract.LogitsFn | None = None,
    compact: bool = True,
    bucket_sizes: Sequence[int] | None = None,
    loop: str = "auto",
) -> contract.AttackResult:
    """Untargeted FAB (AutoAttack's `plus` settings by default: 100 iterations, 5 restarts).

    As `fab_targeted`, but every iteration heads for the linearised boundary closest to its
    iterate (over all classes c != y, |z_c - z_y| / ||grad||_dual), which costs C backward
    passes per iteration instead of one. Run 0 starts at x, runs 1.. at random points at
    distance eps / 2 from x; the smallest adversarial perturbation over all runs is kept and
    counts where its norm is <= eps. Returns AttackResult(x_adv, robust) as `fab_targeted`.
    """
    checked = contract.validate(logits_fn, judge_fn, x, y, norm=norm, eps=eps, needs="FAB")
    _check_config(n_iter, 1, n_restarts, alpha_max, eta, beta)
    config = FabConfig(norm=norm, n_iter=int(n_iter), n_targets=1, n_restarts=int(n_restarts),
                       targeted=False, exact=not compact)  # fmt: skip
    return _run(logits_fn, checked, x, y, key, alpha_max, eta, beta, config, compact,
                bucket_sizes, loop)  # fmt: skip


def _run(logits_fn, checked, x, y, key, alpha_max, eta, beta, config, compact, bucket_sizes,
         loop) -> contract.AttackResult:  # fmt: skip
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}.")
    x, y = jnp.asarray(x), jnp.asarray(y)
    sizes = shrink.attack_sizes(x, bucket_sizes) if compact else ()
    loss_fn, judge_fn = contract.traced_pair(logits_fn, checked.judge_fn, x)
    dtype = x.dtype
    x_adv, robust = _search(
        loss_fn, judge_fn, x, y, key, checked.eps, jnp.asarray(alpha_max, dtype),
        jnp.asarray(eta, dtype), jnp.asarray(beta, dtype), config=config, compact=bool(compact),
        sizes=sizes, loop=loop,
    )  # fmt: skip
    return contract.AttackResult(x_adv, robust)
