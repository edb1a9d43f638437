"""Auto-PGD (Croce & Hein, 2020): APGD-CE, APGD-DLR and APGD-T, as AutoAttack runs them.

    from hpm_jax.attacks import apgd, apgd_targeted
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
loss point. L1 uses the sparse-gradient step, the exact L1-ball-and-box projection (`geometry.py`)
and the adaptive sparsity schedule; `use_largereps` runs its 3 eps, 2 eps, eps stages.

The loss and its gradient come from `logits_fn`; whether an iterate is misclassified comes from
`judge_fn` (default `logits_fn`, whose logits are then reused at no cost), always called on
the whole batch of the run. A point broken once stays broken, with its last misclassified
iterate as x_adv; points the judge gets wrong on the clean x come back as x, robust False;
robust points come back as x.

Compilation: the array leaves of `logits_fn` and `judge_fn` (pytree logits functions such as
`hpm_jax.models.logits_fn(...)`, see `contract`) are traced arguments, so new weights of the
same shapes compile nothing; plain closures are static (hashed by identity). The settings
travel as one static `ApgdSteps`; eps (scalar or per-sample (B,)) and rho are traced, so eps
sweeps do not recompile. Batches sharded over a mesh stay sharded, and a fixed key gives the
same result on any number of devices. Restarts and target classes are the runs of the shared
`driver`, which stops once every point is broken (one host sync per run); with compact=True
(default, as the reference) each run attacks only the points still robust, re-bucketed into
the smallest of `bucket_sizes` that holds them; compact=False keeps the whole batch in every
run (batch-coupled judges: the Mixed Surrogate Attack). The iterations of a run are one
jitted `lax` loop (`loop="lax"`, the default on GPU and TPU) or one jitted call per
iteration (`loop="host"`, the default on CPU, see `driver`); both give the same iterates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from hpm_jax.attacks import apgd_steps as steps
from hpm_jax.attacks import contract, driver, geometry, losses, types
from hpm_jax.attacks.apgd_steps import ApgdConfig

__all__ = ["ApgdConfig", "ApgdSteps", "apgd", "apgd_targeted"]

LOSSES = ("ce", "dlr")
# The classes each loss needs: the DLR losses read the 3rd (targeted: 4th) largest logit.
_MIN_CLASSES = {
    "ce": (2, "APGD-CE"),
    "dlr": (3, "The DLR loss"),
    "dlr-targeted": (4, "APGD-T's targeted DLR loss"),
}
PERTURB_LOSSES = ("ce", "dlr", "kl")
_OPTIONS = ("n_iter", "n_restarts", "eot_iter", "rho", "use_largereps", "randomized", "loop",
            "compact", "bucket_sizes")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ApgdSteps:
    """APGD as the `driver` runs it: runs are targets x restarts (n_targets 0: untargeted),
    the phases APGD-L1's largereps stages. Carry: robust, x_adv and the targets' ranking.
    keep_best (the inner maximisation of adversarial training, `apgd_perturb`): every run
    attacks every row and the carry keeps each row's highest-loss iterate over the runs
    (x_best, loss_best), and for the "kl" loss the clean logits (params["reference"])."""

    config: ApgdConfig
    n_restarts: int
    n_targets: int = 0
    keep_best: bool = False
    gradients = True

    def begin(self, fns, params, batch, key):
        """(judge correct on x, the n_targets classes other than y ranked by loss_fn)."""
        if self.keep_best:
            return dict(x_best=batch.x, loss_best=jnp.full(batch.y.shape, -jnp.inf),
                        reference=params.get("reference"))  # fmt: skip
        loss_fn, judge_fn = fns
        key_clean = jax.random.split(key)[0]
        config = self.config
        logits = contract.call(loss_fn, batch.x, jax.random.fold_in(key_clean, 0),
                               config.randomized)  # fmt: skip
        judged = logits
        if not config.shared_judge:
            judged = contract.call(judge_fn, batch.x, jax.random.fold_in(key_clean, 1),
                                   config.randomized)  # fmt: skip
        ranking = None
        if self.n_targets:
            ranking = losses.target_classes(logits, batch.y, self.n_targets)
        return dict(robust=losses.correct(judged, batch.y), x_adv=batch.x, ranking=ranking)

    def todo(self, carry):
        if self.keep_best:
            return jnp.ones(carry["loss_best"].shape, bool)
        return carry["robust"]

    def _keys(self, ctx):
        """(the run's start key, the phase's key): as the reference's restarts are keyed."""
        run_key = jax.random.fold_in(jax.random.split(ctx.key)[1], ctx.run)
        key_start, key_run = jax.random.split(run_key)
        return key_start, jax.random.fold_in(key_run, ctx.phase)

    def init(self, fns, params, batch, carry, ctx, prev, real):
        del real  # every row of the run is attacked; the driver drops padding
        config, (x, y, eps, _) = self.config, batch
        key_start, key = self._keys(ctx)
        if prev is None:
            x_init = steps.first_point(key_start, x, eps, config.norm, config.use_largereps)
        else:
            x_init = prev["x_best"]
        scales = [scale for scale, _ in steps.stages(3, config.use_largereps)]
        stage_eps = jnp.asarray(scales, x.dtype)[ctx.phase] * eps
        target = None
        if self.n_targets:
            target = jnp.take(carry["ranking"], ctx.run // self.n_restarts, axis=1)
        reference = carry.get("reference")
        grad_fn, wrong_fn = steps.objective(*fns, y, target, config, reference)
        x_start = steps.stage_start(x_init, x, stage_eps, config.use_largereps)
        state = steps.init_state(x, x_start, stage_eps, key, grad_fn=grad_fn,
                                 wrong_fn=wrong_fn, norm=config.norm,
                                 sparsity_from_start=config.use_largereps)  # fmt: skip
        return dict(state, eps=stage_eps, target=target, reference=reference)

    def step(self, fns, params, batch, ctx, state, i, schedule):
        is_check, window = schedule
        grad_fn, wrong_fn = steps.objective(*fns, batch.y, state["target"], self.config,
                                            state["reference"])  # fmt: skip
        return steps.step(i, state, batch.x, state["eps"], params["rho"], self._keys(ctx)[1],
                          is_check, window, grad_fn=grad_fn, wrong_fn=wrong_fn,
                          norm=self.config.norm)  # fmt: skip

    def live(self, state):
        return None

    def freeze(self, state, real):
        return state

    def end(self, fns, params, batch, carry, state):
        """Points robust before the run and broken by it take its iterate; earlier breaks stay.
        keep_best: the run's best iterate where its loss beats the earlier runs'."""
        if self.keep_best:
            better = state["loss_best"] > carry["loss_best"]
            x_best = jnp.where(geometry.expand(better, batch.x), state["x_best"], carry["x_best"])
            loss_best = jnp.where(better, state["loss_best"], carry["loss_best"])
            return dict(carry, x_best=x_best, loss_best=loss_best)
        robust, broken = carry["robust"], state["broken"]
        newly = geometry.expand(robust & broken, batch.x)
        x_adv = jnp.where(newly, state["adv"], carry["x_adv"])
        return dict(carry, robust=robust & ~broken, x_adv=x_adv)

    def finish(self, fns, params, batch, carry):
        if self.keep_best:
            return carry["x_best"]
        return types.AttackResult(carry["x_adv"], carry["robust"])


def _run(logits_fn, judge_fn, x, y, *, key, norm, eps, loss, n_iter, n_restarts, eot_iter, rho,
         use_largereps, randomized, loop, compact, bucket_sizes,
         n_targets=None) -> types.AttackResult:  # fmt: skip
    """APGD's own checks, then the driver."""
    min_classes, needs = _MIN_CLASSES[loss]
    checked = contract.validate(logits_fn, judge_fn, x, y, norm=norm, eps=eps,
                                randomized=randomized, min_classes=min_classes,
                                needs=needs)  # fmt: skip
    for name, value in [("n_iter", n_iter), ("n_restarts", n_restarts), ("eot_iter", eot_iter)]:
        contract.check_int(name, value, 1)
    contract.check_range("rho", rho, 0.0, 1.0)
    if use_largereps and norm != "L1":
        raise ValueError(f"use_largereps is the reference's L1 schedule; norm is {norm!r}.")
    if use_largereps and n_iter < 3:
        raise ValueError(f"use_largereps splits n_iter over 3 stages; got n_iter={n_iter}.")
    config = ApgdConfig(
        norm=norm, loss=loss, eot_iter=int(eot_iter),
        randomized=bool(randomized), use_largereps=bool(use_largereps),
        shared_judge=checked.judge_fn is logits_fn,
    )  # fmt: skip
    n_top = 0 if n_targets is None else min(n_targets, checked.num_classes - 1)
    attack = ApgdSteps(config, int(n_restarts), n_top)
    phases = [driver.Phase(stage_iter, steps.schedule(stage_iter, norm))
              for _, stage_iter in steps.stages(int(n_iter), config.use_largereps)]  # fmt: skip
    x = jnp.asarray(x)
    fns = contract.traced_pair(logits_fn, checked.judge_fn, x)
    params = dict(rho=jnp.asarray(rho, x.dtype))
    return driver.run(attack, fns, params, x, y, checked.eps, key,
                      runs=max(n_top, 1) * int(n_restarts), phases=phases, loop=loop,
                      compact=compact, bucket_sizes=bucket_sizes)  # fmt: skip


@types.declare(can_shrink=True, randomized=True, options=("loss", *_OPTIONS))
def apgd(
    logits_fn: types.LogitsFn,
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
    judge_fn: types.LogitsFn | None = None,
    randomized: bool = False,
    loop: str = "auto",
    compact: bool = True,
    bucket_sizes: Sequence[int] | None = None,
) -> types.AttackResult:
    """APGD on the cross-entropy ("ce") or DLR ("dlr") loss of the true label y.

    x: (B, H, W, C) in [0, 1]; y: (B,) int labels; eps: scalar or (B,). Restart r uses
    fold_in(key, r) and attacks the points still robust. With randomized=True, logits_fn and
    judge_fn are called as f(x, key) with fresh keys and the gradient is the mean of eot_iter
    draws. use_largereps (L1 only): the reference's 3 eps / 2 eps / eps stages. loop: "lax"
    (one program per run), "host" (one program per iteration) or "auto" (host on CPU).
    compact (default): each restart attacks only the points still robust, in the smallest of
    `bucket_sizes` (default `batching.bucket_sizes(B, devices)`) that holds them, as the
    reference; False runs every restart on the whole batch (batch-coupled judges, MSA).
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
    return _run(logits_fn, judge_fn, x, y, key=key, norm=norm, eps=eps, loss=loss,
                n_iter=n_iter, n_restarts=n_restarts, eot_iter=eot_iter, rho=rho,
                use_largereps=use_largereps, randomized=randomized, loop=loop,
                compact=compact, bucket_sizes=bucket_sizes)  # fmt: skip


@types.declare(can_shrink=True, randomized=True, options=("n_target_classes", *_OPTIONS))
def apgd_targeted(
    logits_fn: types.LogitsFn,
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
    judge_fn: types.LogitsFn | None = None,
    randomized: bool = False,
    loop: str = "auto",
    compact: bool = True,
    bucket_sizes: Sequence[int] | None = None,
) -> types.AttackResult:
    """APGD-T: APGD on the targeted DLR loss, once per target class and restart.

    The targets of each point are the k highest classes of logits_fn on the clean x other than
    y (`losses.target_classes`; k = n_target_classes, capped at C - 1): the reference's 2nd ..
    (k+1)-th classes wherever logits_fn ranks y first, and never y itself where a surrogate
    ranks another class above it. Success is still "the judge does not predict y".
    Needs C >= 4 classes. Other arguments as `apgd` (use_largereps: AutoAttack's L1 standard).
    """
    contract.check_int("n_target_classes", n_target_classes, 1)
    return _run(logits_fn, judge_fn, x, y, key=key, norm=norm, eps=eps, loss="dlr-targeted",
                n_iter=n_iter, n_restarts=n_restarts, eot_iter=eot_iter, rho=rho,
                use_largereps=use_largereps, randomized=randomized, loop=loop,
                compact=compact, bucket_sizes=bucket_sizes,
                n_targets=int(n_target_classes))  # fmt: skip


def perturb(
    logits_fn: types.LogitsFn,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    eps: float | jax.Array,
    norm: str = "Linf",
    loss: str = "ce",
    n_iter: int = 10,
    n_restarts: int = 1,
    rho: float = 0.75,
    reference_logits: jax.Array | None = None,
) -> jax.Array:
    """APGD as the inner maximisation of adversarial training: the highest-loss iterate of
    each point over `n_restarts` runs of `n_iter` iterations (APGD's step-size schedule,
    momentum and restarts from the best point), within eps of x in [0, 1].

    Traceable: call it inside a jitted (sharded) training step; the driver's lax loop, no
    host sync, one compiled program whatever the weights. loss: "ce" or "dlr" of the true
    label (PGD-AT), or "kl" (TRADES: KL(softmax(reference_logits) || softmax(f(x_adv))),
    reference_logits the clean logits). Each run costs n_iter + 1 gradients (the start's and
    one per iteration). No gradient flows back through the result (as `pgd.perturb`). The
    same iterates as the driver's host loop for `ApgdSteps(..., keep_best=True)`.
    """
    contract.check_norm(norm, ("Linf", "L2"))
    if loss not in PERTURB_LOSSES:
        raise ValueError(f"loss must be one of {PERTURB_LOSSES}, got {loss!r}.")
    if (loss == "kl") != (reference_logits is not None):
        raise ValueError('loss="kl" needs reference_logits (the clean logits); other losses '
                         "take none.")  # fmt: skip
    contract.check_int("n_iter", n_iter, 1)
    contract.check_int("n_restarts", n_restarts, 1)
    x = jax.lax.stop_gradient(x)
    eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), x.shape[:1])
    params = dict(rho=jnp.asarray(rho, x.dtype))
    if reference_logits is not None:
        params["reference"] = jax.lax.stop_gradient(reference_logits)
    attack = ApgdSteps(ApgdConfig(norm=norm, loss=loss), int(n_restarts), keep_best=True)
    phases = [driver.Phase(int(n_iter), steps.schedule(int(n_iter), norm))]
    x_best = driver.run_traced(attack, (logits_fn, logits_fn), params, x, y, eps, key,
                               runs=int(n_restarts), phases=phases)  # fmt: skip
    return jax.lax.stop_gradient(x_best)
