"""Auto-PGD (Croce & Hein, 2020): APGD-CE, APGD-DLR and APGD-T, as AutoAttack runs them.

    from hpm_jax.attacks.apgd import apgd, apgd_targeted
    logits_fn = hpm_jax.models.logits_fn(model, variables)     # weights traced, not baked in
    res = apgd(logits_fn, x, y, key=jax.random.key(0), norm="Linf", eps=8 / 255)   # APGD-CE
    res = apgd(logits_fn, x, y, key=key, eps=8 / 255, loss="dlr", n_restarts=5)     # APGD-DLR
    res = apgd_targeted(logits_fn, x, y, key=key, eps=8 / 255)                      # APGD-T
    res.x_adv, res.robust                     # (B, H, W, C) within eps of x, (B,) bool
    res = apgd(logits_fn, x, y, key=key, eps=8 / 255, judge_fn=hpm_fn)  # gradient from a
                                              # surrogate, success decided by another model
    res = apgd(noisy_fn, x, y, key=key, eps=8 / 255, eot_iter=20, randomized=True)
                                              # noisy_fn(x, key): EOT over fresh keys

The algorithm is the reference's (pyautoattack `APGDAttack`): step 2 * eps (eps for L1),
momentum 0.75 from the second step on, step-size checkpoints after 22% of the budget with
intervals shrinking by 3% down to 6% (`checkpoints(n_iter)`); at a checkpoint the step halves
where the loss rose in at most rho of the steps since the last one, or where the step was not
halved last time and the best loss did not improve, and those points restart from their best
loss point. L1 uses the sparse-gradient step, the exact L1-ball-and-box projection (`l1.py`)
and the adaptive sparsity schedule; `use_largereps` runs its 3 eps, 2 eps, eps stages.

The loss and its gradient come from `logits_fn`; whether an iterate is misclassified comes from
`judge_fn` (default `logits_fn`, whose logits are then reused at no cost), always called on
the whole batch of the run. A point broken once stays broken, with its last misclassified
iterate as x_adv; points the judge gets wrong on the clean x come back as x, robust False;
robust points come back as x.

Compilation: the array leaves of `logits_fn` and `judge_fn` (pytree logits functions such as
`hpm_jax.models.logits_fn(...)`, see `contract`) are traced arguments, so new weights of the
same shapes compile nothing; plain closures are static (hashed by identity). The settings
travel as one static `ApgdConfig`; eps (scalar or per-sample (B,)) and rho are traced, so eps
sweeps do not recompile. Batches sharded over a mesh stay sharded, and a fixed key gives the
same result on any number of devices. Restarts and target classes are a Python loop that
stops once every point is broken (one host sync per restart); with compact=True (default, as
the reference) each run attacks only the points still robust, re-bucketed into the smallest
of `bucket_sizes` that holds them (`shrink`); compact=False keeps the whole batch in every
run (batch-coupled judges: the Mixed Surrogate Attack). The iterations of a run are,
with `loop="lax"`, one jitted `lax.fori_loop` (the default on GPU and TPU); with
`loop="host"`, one jitted call per iteration (the default on CPU: XLA:CPU runs the backward
convolutions of a model inside a while loop without its fast kernels, 2-3x slower, see
benchmarks/RESULTS.md), dispatched asynchronously on one device and one at a time on several
(see `_run_host`). Both give the same iterates.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hpm_jax.attacks import apgd_steps as steps
from hpm_jax.attacks import common, contract, shrink
from hpm_jax.attacks.apgd_steps import (
    ApgdConfig,
    checkpoints,
    l1_checkpoints,
    largereps_schedule,
)
from hpm_jax.runtime.xla_options import jit

__all__ = [
    "ApgdConfig",
    "apgd",
    "apgd_targeted",
    "checkpoints",
    "l1_checkpoints",
    "largereps_schedule",
]

LOSSES = ("ce", "dlr")
LOOPS = ("auto", "lax", "host")


def _merge(x_adv, robust, broken, adv):
    """Points robust before a run and broken by it take its iterate; earlier breaks stay."""
    return jnp.where(common.expand(robust & broken, adv), adv, x_adv), robust & ~broken


@functools.partial(jit, static_argnames=("config", "n_iter"))
def _run(loss_fn, judge_fn, x, y, target, key, eps, rho, robust, x_adv, *, config: ApgdConfig,
         n_iter: int):  # fmt: skip
    """One restart on the whole batch as a single program (`lax.fori_loop` per stage), merged
    into (x_adv, robust)."""
    grad_fn, wrong_fn = steps.objective(loss_fn, judge_fn, y, target, config)
    key_start, key_run = jax.random.split(key)
    x_init = steps.first_point(key_start, x, eps, config.norm, config.use_largereps)
    for stage, (scale, stage_iter) in enumerate(steps.stages(n_iter, config.use_largereps)):
        x_start = steps.stage_start(x_init, x, scale * eps, config.use_largereps)
        x_init, broken, adv = steps.run_loop(
            x, x_start, scale * eps, rho, jax.random.fold_in(key_run, stage), grad_fn=grad_fn,
            wrong_fn=wrong_fn, n_iter=stage_iter, norm=config.norm,
            sparsity_from_start=config.use_largereps,
        )  # fmt: skip
    return _merge(x_adv, robust, broken, adv)


# The host loop: the same pieces, one jitted call each. Schedules enter as traced scalars, so
# each piece compiles once per batch shape whatever n_iter and the stage.


@functools.partial(jit, static_argnames=("norm", "use_largereps"))
def _first_point(key, x, eps, *, norm, use_largereps):
    return steps.first_point(jax.random.split(key)[0], x, eps, norm, use_largereps)


@functools.partial(jit, static_argnames="config")
def _begin(loss_fn, judge_fn, x, y, target, key, eps, x_init, *, config: ApgdConfig):
    grad_fn, wrong_fn = steps.objective(loss_fn, judge_fn, y, target, config)
    x_start = steps.stage_start(x_init, x, eps, config.use_largereps)
    return steps.init_state(x, x_start, eps, key, grad_fn=grad_fn, wrong_fn=wrong_fn,
                            norm=config.norm, sparsity_from_start=config.use_largereps)  # fmt: skip


@functools.partial(jit, static_argnames="config", donate_argnames="state")
def _step(loss_fn, judge_fn, x, y, target, key, eps, rho, i, check, window, state, *,
          config: ApgdConfig):  # fmt: skip
    grad_fn, wrong_fn = steps.objective(loss_fn, judge_fn, y, target, config)
    return steps.step(i, state, x, eps, rho, key, check, window, grad_fn=grad_fn,
                      wrong_fn=wrong_fn, norm=config.norm)  # fmt: skip


_merge_jit = jit(_merge)


def _spans_devices(x: jax.Array) -> bool:
    return isinstance(x, jax.Array) and len(x.devices()) > 1


def _run_host(loss_fn, judge_fn, x, y, target, key, eps, rho, robust, x_adv, *,
              config: ApgdConfig, n_iter: int):  # fmt: skip
    """`_run` with the iterations dispatched from Python. On one device nothing is read, so
    the steps queue asynchronously. On several XLA:CPU devices each step waits for the
    previous one: queued programs whose collectives (the sharded batch's all-gathers) wait
    for each other can occupy every thread of XLA:CPU's pool, which then starves and aborts
    the process after 40 s; one program in flight costs about one dispatch per step."""
    sync = _spans_devices(x)
    key_run = jax.random.split(key)[1]
    x_init = _first_point(key, x, eps, norm=config.norm, use_largereps=config.use_largereps)
    for stage, (scale, stage_iter) in enumerate(steps.stages(n_iter, config.use_largereps)):
        stage_eps, stage_key = scale * eps, jax.random.fold_in(key_run, stage)
        state = _begin(loss_fn, judge_fn, x, y, target, stage_key, stage_eps, x_init,
                       config=config)  # fmt: skip
        is_check, window = steps.schedule(stage_iter, config.norm)
        for i in range(stage_iter):
            state = _step(loss_fn, judge_fn, x, y, target, stage_key, stage_eps, rho,
                          np.int32(i), is_check[i], window[i], state, config=config)  # fmt: skip
            if sync:
                jax.block_until_ready(state)
        x_init = state["x_best"]
    return _merge_jit(x_adv, robust, state["broken"], state["adv"])


@functools.partial(jit, static_argnames=("config", "n_top"))
def _clean(loss_fn, judge_fn, x, y, key, *, config: ApgdConfig, n_top: int):
    """(judge correct on x, the n_top classes other than y ranked by loss_fn on x, best first)."""
    logits = contract.call(loss_fn, x, jax.random.fold_in(key, 0), config.randomized)
    judged = (
        logits
        if config.shared_judge
        else contract.call(judge_fn, x, jax.random.fold_in(key, 1), config.randomized)
    )
    ranking = common.target_classes(logits, y, n_top) if n_top else None
    return common.correct(judged, y), ranking


def _use_host_loop(loop: str, x: jax.Array) -> bool:
    if loop != "auto":
        return loop == "host"
    devices = x.devices() if isinstance(x, jax.Array) else jax.devices()
    return any(d.platform == "cpu" for d in devices)


# The classes each loss needs: the DLR losses read the 3rd (targeted: 4th) largest logit.
_MIN_CLASSES = {
    "ce": (2, "APGD-CE"),
    "dlr": (3, "The DLR loss"),
    "dlr-targeted": (4, "APGD-T's targeted DLR loss"),
}


def _prepare(logits_fn, judge_fn, x, y, *, norm, eps, loss, n_iter, n_restarts, eot_iter, rho,
             use_largereps, randomized, loop):  # fmt: skip
    """The contract's checks and APGD's own; (checked inputs, the static config)."""
    min_classes, needs = _MIN_CLASSES[loss]
    checked = contract.validate(logits_fn, judge_fn, x, y, norm=norm, eps=eps,
                                randomized=randomized, min_classes=min_classes,
                                needs=needs)  # fmt: skip
    for name, value in [("n_iter", n_iter), ("n_restarts", n_restarts), ("eot_iter", eot_iter)]:
        contract.check_int(name, value, 1)
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must lie in [0, 1], got {rho!r}.")
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}.")
    if use_largereps and norm != "L1":
        raise ValueError(f"use_largereps is the reference's L1 schedule; norm is {norm!r}.")
    if use_largereps and n_iter < 3:
        raise ValueError(f"use_largereps splits n_iter over 3 stages; got n_iter={n_iter}.")
    config = ApgdConfig(
        norm=norm, loss=loss, eot_iter=int(eot_iter),
        randomized=bool(randomized), use_largereps=bool(use_largereps),
        shared_judge=checked.judge_fn is logits_fn,
    )  # fmt: skip
    return checked, config


def _attack(logits_fn, checked, x, y, key, rho, targets, n_restarts, n_iter, loop, config,
            compact=False, bucket_sizes=None):  # fmt: skip
    """The restart (and target) loop around one run, stopping once nothing robust is left;
    with compact, each run attacks only the points still robust, re-bucketed (`shrink`)."""
    x, y = jnp.asarray(x), jnp.asarray(y)  # NumPy input: one transfer, not one per iteration
    loss_fn, judge_fn = contract.traced_pair(logits_fn, checked.judge_fn, x)
    key_clean, key_runs = jax.random.split(key)
    n_top = len(targets) if targets else 0
    robust, ranking = _clean(loss_fn, judge_fn, x, y, key_clean, config=config, n_top=n_top)
    run = _run_host if _use_host_loop(loop, x) else _run
    x_adv, rho = x, jnp.asarray(rho, x.dtype)
    sizes = shrink.attack_sizes(x, bucket_sizes) if compact else ()
    rows = shrink.Rows.full(x.shape[0])
    runs = [t for t in (targets or [None]) for _ in range(n_restarts)]
    for index, t in enumerate(runs):
        # One host sync per restart: skip useless runs (and shrink to the robust points).
        if compact:
            rows = shrink.select(shrink.to_host(robust), sizes)
            if rows is None:
                break
        elif not bool(jnp.any(robust)):
            break
        target = None if t is None else rows.take(ranking[:, t])
        x_b, robust_b = run(loss_fn, judge_fn, rows.take(x), rows.take(y), target,
                            jax.random.fold_in(key_runs, index), rows.take(checked.eps), rho,
                            rows.take(robust), rows.take(x_adv), config=config,
                            n_iter=int(n_iter))  # fmt: skip
        x_adv, robust = rows.put(x_adv, x_b), rows.put(robust, robust_b)
    return contract.AttackResult(x_adv, robust)


def apgd(
    logits_fn: contract.LogitsFn,
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
    judge_fn: contract.LogitsFn | None = None,
    randomized: bool = False,
    loop: str = "auto",
    compact: bool = True,
    bucket_sizes: Sequence[int] | None = None,
) -> contract.AttackResult:
    """APGD on the cross-entropy ("ce") or DLR ("dlr") loss of the true label y.

    x: (B, H, W, C) in [0, 1]; y: (B,) int labels; eps: scalar or (B,). Restart r uses
    fold_in(key, r) and attacks the points still robust. With randomized=True, logits_fn and
    judge_fn are called as f(x, key) with fresh keys and the gradient is the mean of eot_iter
    draws. use_largereps (L1 only): the reference's 3 eps / 2 eps / eps stages. loop: "lax"
    (one program per run), "host" (one program per iteration) or "auto" (host on CPU).
    compact (default): each restart attacks only the points still robust, in the smallest of
    `bucket_sizes` (default `buckets.bucket_sizes(B, devices)`) that holds them, as the
    reference; False runs every restart on the whole batch (batch-coupled judges, MSA).
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
    checked, config = _prepare(
        logits_fn, judge_fn, x, y, norm=norm, eps=eps, loss=loss, n_iter=n_iter,
        n_restarts=n_restarts, eot_iter=eot_iter, rho=rho, use_largereps=use_largereps,
        randomized=randomized, loop=loop,
    )  # fmt: skip
    return _attack(logits_fn, checked, x, y, key, rho, None, n_restarts, n_iter, loop, config,
                   compact, bucket_sizes)  # fmt: skip


def apgd_targeted(
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
    eot_iter: int = 1,
    rho: float = 0.75,
    use_largereps: bool = False,
    judge_fn: contract.LogitsFn | None = None,
    randomized: bool = False,
    loop: str = "auto",
    compact: bool = True,
    bucket_sizes: Sequence[int] | None = None,
) -> contract.AttackResult:
    """APGD-T: APGD on the targeted DLR loss, once per target class and restart.

    The targets of each point are the k highest classes of logits_fn on the clean x other than
    y (`common.target_classes`; k = n_target_classes, capped at C - 1): the reference's 2nd ..
    (k+1)-th classes wherever logits_fn ranks y first, and never y itself where a surrogate
    ranks another class above it. Success is still "the judge does not predict y".
    Needs C >= 4 classes. Other arguments as `apgd` (use_largereps: AutoAttack's L1 standard).
    """
    contract.check_int("n_target_classes", n_target_classes, 1)
    checked, config = _prepare(
        logits_fn, judge_fn, x, y, norm=norm, eps=eps, loss="dlr-targeted", n_iter=n_iter,
        n_restarts=n_restarts, eot_iter=eot_iter, rho=rho, use_largereps=use_largereps,
        randomized=randomized, loop=loop,
    )  # fmt: skip
    targets = list(range(min(n_target_classes, checked.num_classes - 1)))
    return _attack(logits_fn, checked, x, y, key, rho, targets, n_restarts, n_iter, loop, config,
                   compact, bucket_sizes)  # fmt: skip
