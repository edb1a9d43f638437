"""The AutoAttack chain (Croce & Hein, 2020) in JAX: versions, compaction, resume, checks.

    from hpm_jax.attacks import AutoAttack
    from hpm_jax.models import logits_fn
    target = logits_fn(model, variables)                      # NHWC in [0, 1] -> logits
    aa = AutoAttack(target, norm="Linf", eps=8 / 255, version="standard", seed=0)
    report = aa.run(x_test, y_test, batch_size=500, state_path="eval/aa_state.json")
    report.robust_accuracy, report.robust_accuracy_after["apgd-ce"], report.x_adv
    print(report.to_json())

The chain follows the reference (pyautoattack's `AutoAttack.run_standard_evaluation`): a
clean pass, then each attack of the version on the points still robust, starting from the
clean images; a point is robust only if the judge classifies it correctly on the clean image
and after every attack. The judge is resolved once (`judge_fn`, default `logits_fn`) and
every attack of the chain receives it: an attack whose gradients come from elsewhere (a
surrogate, see `msa`) is still judged by the model under evaluation. Pytree logits
functions (`hpm_jax.models.logits_fn`, `jax.tree_util.Partial(model.apply, variables)`) keep
the weights out of the compiled programs (see `contract`). Versions and their settings are
the reference's `_set_version` (`versions.py`); `version` may also be a list of attack names,
whose settings are the reference's constructor defaults. It logs the reference's lines ("initial
accuracy: ...", "robust accuracy after APGD-CE: ... (total time ... s)", "robust accuracy:
...") to the `hpm_jax.autoattack` logger and to `log` (default `print`).

JAX shape. The data is cut into fixed batches of `batch_size`. For each attack and batch the
still-robust points (with compact, the default) are gathered into a bucket, padded (by
repeating them) to the smallest of a few sizes (`batching.bucket_sizes`: batch_size, x7/8,
x49/64, ... on CPU, halving on GPU/TPU (`batching.ladder_step`); multiples of 4 and of the
device count), sharded over the mesh and attacked by
the jitted attack; results of the real points are scattered back. So any number of batches
compiles at most len(sizes) programs per attack and no work goes to broken points; the
attacks shrink further inside (`driver`). The key of (attack a, batch b) is
fold_in(fold_in(key(seed), a), b), independent of the device count, so a seed gives the same
report on 1, 2 or 4 devices.

Resume. With `state_path`, the state (robust flags, adversarial images, batches done, a
fingerprint of the data and configuration) is written atomically after every (attack,
batch); a run killed at any point and started again with the same arguments continues at
the batch it was in and ends with the same report. A state file of another evaluation raises
`WorkdirMismatchError` naming the difference, and so does a clean verdict that changed, unless
at a near tie (rounding in another process, `precision`): the saved verdict stands there.

Precision. Every program of a run is traced at `precision` (default "high", the reference's
arithmetic: float32 on the CPU, TF32 on a GPU; `precision.PRECISIONS`), which the report and
the state file record; its `logit_tolerance` decides what a near tie is for the checks and a resume.

Batch-dependent judges (HPM): with compact (the default) the attacks judge a point inside
its bucket (other robust points and repeats). With compact=False every model call sees
exactly one of the user's batches (never a padded or repeated row: the last batch runs at its
own size, a batch that does not split over the mesh runs replicated, so at most two batch
shapes compile per attack) and every attack uses one rule: a point is broken when the judge
misclassifies it at a judged iterate, in its batch as it stands with every image within eps;
that image is its adversarial example whatever happens later. The final re-evaluation of the
composed adversarial batches is one more such batch. `check_batch_dependence` and
`check_final_reevaluation` flag such models. The Mixed Surrogate Attack runs compact=False.

Randomised models (version "rand", or randomized=True): logits_fn and judge_fn are called as
f(x, key), with keys derived from the seed. As in the reference, the model is run once on
each attack's output and that decides (rand_verdict="rerun"); "any_draw" keeps the stricter
rule (a break by any draw during the attack, confirmed by the final re-evaluation).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from hpm_jax.attacks import batching, chain_plan, checks, contract, driver, versions
from hpm_jax.attacks import precision as precision_lib
from hpm_jax.attacks.chain_plan import ChainPlan
from hpm_jax.attacks.chain_report import RAND_VERDICTS, AutoAttackReport
from hpm_jax.attacks.resume import ChainState, StateStore
from hpm_jax.attacks.versions import AttackSpec
from hpm_jax.runtime import sharding
from hpm_jax.runtime.identity import WorkdirMismatchError
from hpm_jax.runtime.sharding import make_mesh
from hpm_jax.runtime.xla_options import jit

logger = logging.getLogger("hpm_jax.autoattack")

# Key tags for the passes that are not attacks; attack a uses fold_in(root, a), a small int.
_CLEAN_TAG, _FINAL_TAG, _CHECK_TAG, _RERUN_TAG = 2**31 - 1, 2**31 - 2, 2**31 - 3, 2**31 - 4


@functools.partial(jit, static_argnames="randomized")
def _judge_correct(fn, x, y, key, *, randomized):
    """(correct, relative decision margin) per row (`precision.decision_margin`)."""
    logits = contract.call(fn, x, key, randomized)
    return jnp.argmax(logits, axis=-1) == y, precision_lib.decision_margin(logits, y)


class AutoAttack:
    """The AutoAttack chain against `logits_fn` (gradients, scores) judged by `judge_fn`.

    norm: "Linf", "L2" or "L1"; eps: the radius.
    version: "standard", "plus", "rand", or a list of attack names (versions.ATTACK_NAMES)
        and/or AttackSpecs.
    seed: all randomness derives from it.
    judge_fn: decides success (default logits_fn); every attack receives it.
    num_classes: checked against the model's output when given.
    attack_options: {name: {setting: value}} over the version's settings, e.g.
        {"square": {"n_queries": 1000}}.
    randomized: call the model as f(x, key) (default: True for version "rand").
    mesh: the devices buckets are sharded over (default: all).
    bucket_sizes: instead of `batching.bucket_sizes(batch_size, num_devices)` with the
        ladder of the mesh's backend (7/8 steps on CPU, halving on GPU/TPU).
    compact: attack only the still-robust points, packed into buckets (default). False:
        every attack runs on whole batches, so a batch-dependent judge always sees a point
        among the other points of its own batch (the Mixed Surrogate Attack needs this);
        points already broken are attacked again but keep their first adversarial image.
        Passed on to attacks that shrink their batch inside (APGD between restarts and
        targets, FAB between runs, Square between queries), with the chain's bucket sizes.
        With compact=False no model call ever sees a row it was not given: the clean pass,
        every attack and the final re-evaluation run on the exact batches (the last one at
        its own size; a batch that does not split evenly over the mesh runs replicated), and
        every attack counts a break at the judged iterate where it happens.
    rand_verdict: how a randomized model is judged, "rerun" (the reference) or "any_draw"
        (RAND_VERDICTS); ignored for deterministic models.
    loop: "auto", "lax" or "host" (`driver`), passed to every attack that lists `loop` among
        its options (all of the built-in ones): "lax" runs an attack's iterations as one
        jitted `lax` loop (the default on GPU and TPU), "host" as one jitted call per
        iteration (the default for gradient attacks on CPU). Both give the same results
        (within float rounding); the report records the setting.
    precision: float32 matmul / convolution precision of every program ("high", "highest",
        "default": `precision.PRECISIONS`); "highest" computes in float32 on every backend.
    logit_tolerance: the relative decision margin within which a changed verdict is a near
        tie (not flagged by the checks, no reason to refuse a resume); default
        `precision.logit_tolerance(precision, platform)`. Pass it for a bfloat16 model.
    run_checks: run the sanity checks on the first batch.
    log: receives each log line (default print; None: the `hpm_jax.autoattack` logger only).
    on_progress(attack, batch, n_batches): called after each batch is done and saved.
    """

    def __init__(
        self,
        logits_fn: Callable[..., jax.Array],
        *,
        norm: str = "Linf",
        eps: float,
        version: str | Sequence[str | AttackSpec] = "standard",
        seed: int = 0,
        judge_fn: Callable[..., jax.Array] | None = None,
        num_classes: int | None = None,
        attack_options: Mapping[str, Mapping[str, Any]] | None = None,
        randomized: bool | None = None,
        mesh: Mesh | None = None,
        bucket_sizes: Sequence[int] | None = None,
        compact: bool = True,
        rand_verdict: str = "rerun",
        loop: str = "auto",
        precision: str = precision_lib.DEFAULT,
        logit_tolerance: float | None = None,
        run_checks: bool = True,
        log: Callable[[str], Any] | None = print,
        on_progress: Callable[[str, int, int], Any] | None = None,
    ):
        contract.check_norm(norm)
        driver.check_loop(loop)
        self.loop = loop
        if np.ndim(eps) != 0:
            raise ValueError(f"eps must be a finite number > 0 (one radius), got {eps!r}.")
        contract.check_eps(eps, 1)
        if not isinstance(seed, int | np.integer):
            raise TypeError(f"seed must be an int (all randomness derives from it), got {seed!r}.")
        self.mesh = make_mesh() if mesh is None else mesh
        # The judge, resolved once: every pass and every attack of the chain receives it.
        # Weights (pytree logits functions) are replicated on the mesh once, here.
        self.separate_judge = judge_fn is not None and judge_fn is not logits_fn
        self.logits_fn = contract.place(logits_fn, self.mesh)
        self.judge_fn = (
            contract.place(judge_fn, self.mesh) if self.separate_judge else self.logits_fn
        )
        self.norm, self.eps, self.seed = norm, float(eps), int(seed)
        self.num_classes = num_classes
        self.randomized = (version == "rand") if randomized is None else bool(randomized)
        self.bucket_sizes = None if bucket_sizes is None else tuple(int(s) for s in bucket_sizes)
        self.compact = bool(compact)
        if self.bucket_sizes is not None and not self.compact:
            raise ValueError(
                "bucket_sizes has no effect with compact=False (every model call sees exactly "
                "one batch of the data); drop one of the two."
            )
        if rand_verdict not in RAND_VERDICTS:
            raise ValueError(
                f"rand_verdict must be one of {tuple(RAND_VERDICTS)}, got {rand_verdict!r}."
            )
        self.rand_verdict = rand_verdict if self.randomized else None
        self.precision = precision_lib.check_precision(precision)
        platform = self.mesh.devices.flat[0].platform
        self.tolerance = float(
            precision_lib.logit_tolerance(precision, platform)
            if logit_tolerance is None
            else logit_tolerance
        )
        self.run_checks, self.log, self.on_progress = run_checks, log, on_progress
        self.version = version if isinstance(version, str) else "custom"
        self.attacks = versions.build_chain(
            version, norm, options=attack_options, randomized=self.randomized
        )
        if self.version != "custom":
            self._log(f"setting parameters for {self.version} version")
        if self.version == "plus" and norm not in ("Linf", "L2"):
            self._log(f'"plus" version is used with {norm} norm: please check')

    def _log(self, msg: str, level: int = logging.INFO) -> None:
        logger.log(level, msg)
        if self.log is not None:
            self.log(("Warning: " + msg) if level >= logging.WARNING else msg)

    # ------------------------------------------------------------------------------ passes
    def _root_key(self) -> jax.Array:
        return jax.random.key(self.seed)

    def _rows(self, idx: np.ndarray, sizes: tuple[int, ...]) -> batching.Rows:
        """The rows a model call sees for the points `idx`: with compact, a bucket of `sizes`
        padded by repeating them (invisible to a per-sample model); without, exactly `idx`."""
        if self.compact:
            return batching.compact(idx, sizes)
        return batching.exact(idx)

    def _place(self, a: np.ndarray) -> jax.Array:
        """Rows split over the mesh, or replicated on it when they do not split evenly (an
        exact batch is never padded to fit the devices)."""
        return sharding.put(a, sharding.rows_sharding(a.shape[0], self.mesh))

    def _judged_correct(self, x, y, plan: ChainPlan, tag: int) -> tuple[np.ndarray, np.ndarray]:
        """The judge's verdict on x, batch by batch in the original batches (with compact,
        the last padded by repeating its points to the largest bucket, one compiled shape),
        and where it is a near tie (decision margin within the tolerance)."""
        judge = contract.traced(self.judge_fn)  # already on the mesh
        out = np.zeros(len(x), bool)
        near_tie = np.zeros(len(x), bool)
        for b, idx in enumerate(plan.batches):
            rows = self._rows(idx, plan.sizes[:1])
            key = jax.random.fold_in(jax.random.fold_in(self._root_key(), tag),
                                     plan.first_batch + b)  # fmt: skip
            correct, margin = _judge_correct(
                judge,
                self._place(x[rows.index]),
                self._place(y[rows.index]),
                key,
                randomized=self.randomized,
            )
            out[idx] = batching.to_host(correct)[: rows.n]
            near_tie[idx] = batching.to_host(margin)[: rows.n] <= self.tolerance
        return out, near_tie

    def _checks(self, x, y) -> list[checks.CheckResult]:
        key = jax.random.fold_in(self._root_key(), _CHECK_TAG)
        bind = (lambda f: lambda v: f(v, key)) if self.randomized else (lambda f: f)
        loss_fn = bind(self.logits_fn)
        judge = bind(self.judge_fn)
        # Beside the weights: replicated on the mesh.
        xj, yj = (sharding.put(a, sharding.replicated(self.mesh)) for a in (x, y))
        results = []
        if not self.randomized and self.version != "rand":
            results.append(checks.check_randomized(judge, xj))
        results.append(checks.check_softmax_output(loss_fn(xj)))
        results.append(checks.check_zero_gradients(loss_fn, xj, yj))
        results.append(checks.check_dynamic(loss_fn, xj))
        if not self.randomized:
            results.append(checks.check_batch_dependence(judge, xj, tolerance=self.tolerance))
        return results

    # --------------------------------------------------------------------------------- run
    def run(
        self,
        x: np.ndarray | jax.Array,
        y: np.ndarray | jax.Array,
        *,
        batch_size: int,
        state_path: str | Path | StateStore | None = None,
        first_batch: int = 0,
    ) -> AutoAttackReport:
        """Evaluate (x, y): x (n, H, W, C) float in [0, 1], y (n,) int labels. With
        `state_path`, progress is saved after every batch and a killed run resumes there; a
        `resume.StateStore` instead of a path says how (processes that attack a batch
        together: one writes, all read).

        `first_batch`: the index of x's first batch among the fixed batches of a larger
        evaluation of which (x, y) is a run of whole batches (`hpm_jax.evaluation` runs each
        batch on its own, on whichever process): the keys derive from that index, so each
        batch gets the randomness, and the result, it gets in one run over all the data.
        Every program runs at `precision`."""
        with precision_lib.applied(self.precision):
            return self._run(x, y, batch_size, state_path, first_batch)

    def _run(self, x, y, batch_size, state_path, first_batch) -> AutoAttackReport:
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim < 1 or len(x) == 0:
            raise ValueError(f"x must hold at least one image, got shape {x.shape}.")
        contract.check_dataset(x, y, self.norm, self.eps, self.num_classes)
        plan = chain_plan.make_plan(self, x, y, batch_size, first_batch)
        store = state_path if isinstance(state_path, StateStore) else None
        if state_path is not None and store is None:  # damaged files' notes go to the log
            store = StateStore(state_path, log=lambda m: self._log(m, logging.WARNING))
        state = store.load(plan.fingerprint) if store is not None else None

        self._log(f"using {self.version} version including {', '.join(plan.names)}.")
        if self.rand_verdict is not None:
            self._log(f"randomized model: {RAND_VERDICTS[self.rand_verdict]}")
        results = self._checks(x[:batch_size], y[:batch_size]) if self.run_checks else []
        for r in results:
            if r.flagged:
                self._log(r.message, logging.WARNING)

        clean, near_tie = self._judged_correct(x, y, plan, _CLEAN_TAG)
        if state is None:
            state = ChainState.new(plan.fingerprint, clean)
            if store is not None:
                store.save(state)
            self._log(f"initial accuracy: {clean.mean():.2%}")
            x_adv = x.copy()
        else:
            x_adv = self._restore(state, store, clean, near_tie, x, y, plan)

        for a, spec in enumerate(plan.specs):
            if state.batches_done.get(spec.name, 0) == len(plan.batches):
                continue
            if state.batches_done.get(spec.name, 0) == 0 and not state.robust.any():
                self._skip_rest(state, store, plan.specs[a:], len(plan.batches))
                break
            self._log(f"running {spec.name}")
            for b in range(state.batches_done.get(spec.name, 0), len(plan.batches)):
                self._attack_batch(a, spec, b, x, y, x_adv, state, store, plan)
            self._log(
                f"robust accuracy after {spec.name.upper()}: "
                f"{state.accuracy_after[spec.name]:.2%} "
                f"(total time {sum(state.times.values()):.1f} s)"
            )
        return self._report(x, y, x_adv, state, plan, results)

    def _restore(self, state, store, clean, near_tie, x, y, plan) -> np.ndarray:
        """Resume from `state`. A clean verdict that changed refuses the resume (another
        model), unless it is a near tie (`near_tie`: its decision margin now is within the
        tolerance, so rounding in another process or kernel can flip it): the saved verdict
        stands then, so the resumed run ends as the uninterrupted one."""
        changed = clean != state.clean
        real = int((changed & ~near_tie).sum())
        if real and not self.randomized:
            raise WorkdirMismatchError(
                f"the model classifies {real} clean points differently from when the state "
                f"file {store.path} was written: a different model or parameters. Pass the "
                "same model, or another state_path, or delete the file."
            )
        if changed.any() and not self.randomized:
            self._log(
                f"{int(changed.sum())} clean verdict(s) changed at near ties (decision "
                f"margin within {self.tolerance:.3g}): the saved verdicts stand."
            )
        done = [s for s in plan.names if state.batches_done.get(s, 0) == len(plan.batches)]
        if done:
            self._log(f"{', '.join(done)} was/were already run.")
        self._log(f"initial clean accuracy: {state.clean.mean():.2%}")
        self._log(f"robust accuracy at the time of restoring the state: {state.robust.mean():.2%}")
        x_adv = store.load_images(state, x)

        def compute(a: int, b: int, robust: np.ndarray):  # a damaged (attack, batch): again
            _, broken, images = self._break(a, plan.specs[a], b, x, y, robust, plan)
            return broken, images

        store.recompute_damaged(state, x_adv, compute)
        return x_adv

    def _skip_rest(self, state, store, rest: list[AttackSpec], n_batches: int) -> None:
        self._log("no robust datapoints left, skipping remaining attacks")
        for spec in rest:
            state.batches_done[spec.name] = n_batches
            state.accuracy_after[spec.name] = 0.0
            state.times.setdefault(spec.name, 0.0)
        if store is not None:
            store.save(state)

    def _chain_options(self, attack, plan: ChainPlan) -> dict[str, Any]:
        """What the chain passes to `attack` besides the contract, where it declares it takes
        it (`types.Attack`): compact and the chain's bucket sizes to attacks that can shrink
        (compact=False keeps every point in its batch for every model call), and the loop to
        attacks whose options name `loop`."""
        options: dict[str, Any] = {}
        if attack.can_shrink:
            options["compact"] = self.compact
            if self.compact:
                options["bucket_sizes"] = plan.sizes
        if attack.options is not None and "loop" in attack.options:
            options["loop"] = self.loop
        return options

    def _attack_batch(self, a, spec, b, x, y, x_adv, state, store, plan) -> None:
        """Attack the robust points of batch b with attack a, in one bucket; scatter back."""
        t0 = time.perf_counter()
        n_robust, broken, images = self._break(a, spec, b, x, y, state.robust, plan)
        n_broken = broken.size
        if n_broken:
            x_adv[broken] = images
            state.robust[broken] = False
            if store is not None:
                store.save_images(state, attack=a, batch=b, indices=broken, images=images)
        state.batches_done[spec.name] = b + 1
        state.times[spec.name] = state.times.get(spec.name, 0.0) + time.perf_counter() - t0
        if b + 1 == len(plan.batches):
            state.accuracy_after[spec.name] = float(state.robust.mean())
        if store is not None:
            store.save(state)
        self._log(
            f"{spec.name} - {b + 1}/{len(plan.batches)} - {n_broken} out of {n_robust} "
            "successfully perturbed"
        )
        if self.on_progress is not None:
            self.on_progress(spec.name, b, len(plan.batches))

    def _break(self, a, spec, b, x, y, robust, plan):
        """(robust points of batch b before, indices attack a breaks there, their images):
        attack a on batch b given the per-sample flags `robust`, in one bucket."""
        idx = plan.batches[b]
        n_robust = int(robust[idx].sum())
        if self.compact:
            idx = idx[robust[idx]]
        broken = np.zeros(0, np.int64)
        images = x[:0]
        if n_robust:
            bucket = self._rows(idx, plan.sizes)
            key = jax.random.fold_in(jax.random.fold_in(self._root_key(), a),
                                     plan.first_batch + b)  # fmt: skip
            yb = self._place(y[bucket.index])
            res = spec.fn(
                self.logits_fn,
                self._place(x[bucket.index]),
                yb,
                key=key,
                norm=self.norm,
                eps=self.eps,
                judge_fn=self.judge_fn,
                **{**self._chain_options(spec.attack, plan), **spec.kwargs},
            )
            robust_b = res.robust
            if self.rand_verdict == "rerun":  # the reference: one run on the output decides
                robust_b, _ = _judge_correct(contract.traced(self.judge_fn), res.x_adv, yb,
                                             jax.random.fold_in(key, _RERUN_TAG),
                                             randomized=True)  # fmt: skip
            # Only the first bucket.n rows are real points; the padding is never read.
            # Newly broken only: a point already broken keeps its first adversarial image.
            newly = ~batching.to_host(robust_b)[: bucket.n].astype(bool) & robust[idx]
            broken = bucket.real[newly]
            images = batching.to_host(res.x_adv)[: bucket.n][newly].astype(x.dtype)
        return n_robust, broken, images

    def _report(self, x, y, x_adv, state, plan, results) -> AutoAttackReport:
        """Re-judge x_adv in the original batches, run the closing checks, log, report."""
        final, final_near_tie = self._judged_correct(x_adv, y, plan, _FINAL_TAG)
        # The composed batch is one more judged batch (every image within eps), except for a
        # randomized model judged as the reference, where it is only reported beside.
        robust = state.robust if self.rand_verdict == "rerun" else state.robust & final
        after = {s.name: state.accuracy_after[s.name] for s in plan.specs}
        closing = [
            checks.check_square({"clean": float(state.clean.mean()), **after}),
            checks.check_final_reevaluation(state.robust, final, final_near_tie),
            checks.check_perturbation(x_adv, x, norm=self.norm, eps=self.eps),
        ]
        for r in closing:
            if r.flagged:
                self._log(r.message, logging.WARNING)
        self._log(closing[-1].message.split(" -- ")[0])
        self._log(f"robust accuracy: {robust.mean():.2%}")
        return AutoAttackReport(
            x_adv=x_adv,
            robust=robust,
            clean=state.clean.copy(),
            clean_accuracy=float(state.clean.mean()),
            robust_accuracy=float(robust.mean()),
            final_accuracy=float(final.mean()),
            robust_accuracy_after=after,
            times={s.name: float(state.times.get(s.name, 0.0)) for s in plan.specs},
            attacks=plan.names,
            attack_settings=plan.settings,
            version=self.version,
            norm=self.norm,
            eps=self.eps,
            seed=self.seed,
            batch_size=plan.batch_size,
            bucket_sizes=plan.sizes,
            num_examples=len(x),
            num_devices=plan.num_devices,
            checks=[*results, *closing],
            resumed=state.resumed,
            rand_verdict=self.rand_verdict,
            loop=self.loop,
            precision=self.precision,
            logit_tolerance=self.tolerance,
        )
