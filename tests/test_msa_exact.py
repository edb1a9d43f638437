"""MSA (and any attack with compact=False) exact on batch-coupled targets that disagree with
their surrogates: targets never aim at y, the model sees exactly the user's batches, and a
break counts at the judged iterate where it happens (docs/design.md section 2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from platform_support import take_devices

from hpm_jax.attacks import (
    AutoAttack,
    apgd_targeted,
    fab_targeted,
    mixed_surrogate_attack,
    square,
)
from hpm_jax.attacks.square_attack import square_run
from hpm_jax.runtime.sharding import make_mesh

pytestmark = pytest.mark.slow  # MSA on 1, 2 and 4 devices

FAST = {  # the standard chain with fewer iterations, so the suite stays fast on 2 cores
    "apgd-ce": {"n_iter": 10},
    "apgd-t": {"n_iter": 10, "n_target_classes": 2},
    "fab-t": {"n_iter": 10, "n_target_classes": 2},
    "square": {"n_queries": 100},
}
TINY_CHAIN = ["apgd-ce", "fab-t", "square"]


def _shift(x):
    """(B,) the mean pixel of each image minus 0.5."""
    return x.reshape(x.shape[0], -1).mean(1) - 0.5


# ---- 1. targets: the surrogate's highest classes other than y ---------------------------------
def _ranked_target(x):
    """Predicts 0 on the clean images (shift ~0) and can be broken only toward class 2, whose
    logit rises with the mean pixel: eps = 0.1 lifts the shift past 0.04. Classes 1 and 3 are
    out of reach (constant -10)."""
    s = _shift(x)
    const = jnp.full_like(s, -10.0)
    return jnp.stack([jnp.zeros_like(s), const, 40.0 * (s - 0.04), const], axis=1)


def _biased_surrogate(x):
    """The target plus a bias on class 2: the same gradients, but it ranks 2 above y = 0."""
    return _ranked_target(x) + jnp.array([0.0, 0.0, 5.0, 0.0])


def _ranked_data():
    rng = np.random.default_rng(0)
    x = (0.5 + rng.uniform(-0.02, 0.02, (8, 8, 8, 1))).astype(np.float32)
    return x, np.zeros(8, np.int32)


def test_targeted_attacks_aim_at_the_surrogates_top_class_other_than_y():
    """With one target, the old APGD-T aimed at position 1 of the surrogate's ranking, which is
    y itself here (targeted loss 0, gradient 0): the target stayed robust. APGD-T, alone and
    in MSA, must aim at class 2 and break every point."""
    x, y = _ranked_data()
    assert (np.argmax(_ranked_target(x), 1) == 0).all()  # the target is right on x ...
    assert (np.argmax(_biased_surrogate(x), 1) == 2).all()  # ... the surrogate ranks 2 first
    res = apgd_targeted(_biased_surrogate, x, y, key=jax.random.key(0), eps=0.1, n_iter=20,
                        n_target_classes=1, judge_fn=_ranked_target)  # fmt: skip
    assert not np.asarray(res.robust).any()
    assert (np.argmax(_ranked_target(res.x_adv), 1) == 2).all()
    report = mixed_surrogate_attack(
        _ranked_target, {"biased": _biased_surrogate}, x, y, eps=0.1, batch_size=8,
        version=["apgd-t"], attack_options={"apgd-t": {"n_iter": 20, "n_target_classes": 1}},
        run_checks=False, log=None,
    )  # fmt: skip
    assert report.robust_accuracy == 0.0


# ---- 2. exact batches: no padding, on 1, 2 and 4 devices -------------------------------------
N_POINTS, BATCH = 15, 6  # batches of 6, 6 and 3: none a multiple of 4, the last partial
W = np.random.default_rng(1).normal(size=(16, 5)).astype(np.float32)


def _coupled(seen):
    """logits = (x - 1.5 * batch mean) @ W: every prediction moves with the rest of the batch.
    Records the number of rows of every traced call (every program the model runs in)."""

    def target(x):
        seen.append(x.shape[0])
        flat = x.reshape(x.shape[0], -1)
        return (flat - 1.5 * flat.mean(0, keepdims=True)) @ W

    return target


def _exact_correct(fn, x, y):
    """The target's verdict on each point inside its own exact batch."""
    batches = range(0, len(x), BATCH)
    return np.concatenate(
        [np.argmax(fn(jnp.asarray(x[i : i + BATCH])), 1) == y[i : i + BATCH] for i in batches]
    )


def _coupled_data():
    """15 images and, as labels, the target's predictions inside their exact batches."""
    x = np.random.default_rng(1).uniform(0.2, 0.8, (N_POINTS, 4, 4, 1)).astype(np.float32)
    batches = range(0, N_POINTS, BATCH)
    y = [np.argmax(_coupled([])(jnp.asarray(x[i : i + BATCH])), 1) for i in batches]
    return x, np.concatenate(y).astype(np.int32)


def test_msa_on_a_batch_coupled_target_sees_only_the_exact_batches_on_1_2_and_4_devices():
    x, y = _coupled_data()
    # The test can fail: padding each batch to 8 rows by repeating its points, as the chain
    # did, changes the target's verdict on some of them.
    flips = 0
    for i in range(0, N_POINTS, BATCH):
        batch = x[i : i + BATCH]
        padded = batch[np.arange(8) % len(batch)]
        flips += np.sum(np.argmax(_coupled([])(padded), 1)[: len(batch)] != y[i : i + BATCH])
    assert flips > 0
    plain = lambda v: v.reshape(v.shape[0], -1) @ W  # per sample: ignores the coupling
    reports = []
    for n_devices in (1, 2, 4):  # 6 rows split over 1 and 2 devices, replicated over 4
        seen = []
        target = _coupled(seen)
        report = mixed_surrogate_attack(
            target, {"plain": plain}, x, y, eps=0.05, batch_size=BATCH, version=TINY_CHAIN,
            attack_options={k: FAST[k] for k in TINY_CHAIN},
            mesh=make_mesh(take_devices(n_devices)), log=None,
        )  # fmt: skip
        # Every model call saw at most one batch: the attacks, the clean pass and the final
        # re-evaluation exactly one batch (6 or 3 rows), the sanity checks parts of the first.
        assert max(seen) <= BATCH and {6, 3} <= set(seen), n_devices
        np.testing.assert_array_equal(report.chain.clean, _exact_correct(target, x, y))
        final = _exact_correct(target, report.x_adv, y)
        assert report.final_reevaluation_accuracy == pytest.approx(final.mean())
        assert not (report.robust & ~final).any()  # robust: also right in the final batches
        assert np.abs(report.x_adv - x).max() <= 0.05 + 1e-6
        reports.append(report)
    assert reports[0].clean_accuracy == 1.0 and reports[0].robust_accuracy < 1.0
    for other in reports[1:]:  # a seed gives the same report on any mesh
        np.testing.assert_array_equal(other.robust, reports[0].robust)
        np.testing.assert_allclose(other.x_adv, reports[0].x_adv, atol=1e-6)


def test_autoattack_without_compaction_sees_only_the_exact_batches():
    x, y = _coupled_data()
    seen = []
    target = _coupled(seen)
    report = AutoAttack(
        target, eps=0.05, attack_options=FAST, compact=False, run_checks=False, log=None,
        mesh=make_mesh(take_devices(2)),
    ).run(x, y, batch_size=BATCH)  # fmt: skip
    assert set(seen) == {6, 3}
    np.testing.assert_array_equal(report.clean, _exact_correct(target, x, y))
    final = _exact_correct(target, report.x_adv, y)
    assert report.final_accuracy == pytest.approx(final.mean())
    assert report.robust_accuracy < report.clean_accuracy  # the attacks did break points


def test_padding_changes_nothing_for_a_per_sample_model():
    """compact=True pads buckets by repeating points (fewer compiled shapes); a per-sample
    model cannot tell: FAB-T and Square, keyed per row, give the same flags and images."""
    x, y = _coupled_data()
    plain = lambda v: v.reshape(v.shape[0], -1) @ W
    y = np.argmax(plain(x), 1).astype(np.int32)
    kw = dict(eps=0.05, version=["fab-t", "square"], run_checks=False, log=None,
              attack_options={"fab-t": FAST["fab-t"], "square": FAST["square"]})  # fmt: skip
    padded = AutoAttack(plain, **kw).run(x, y, batch_size=BATCH)
    exact = AutoAttack(plain, compact=False, **kw).run(x, y, batch_size=BATCH)
    assert padded.bucket_sizes[0] == 8 and exact.bucket_sizes == (BATCH,)
    assert 0 < padded.robust_accuracy < 1
    np.testing.assert_array_equal(padded.robust, exact.robust)
    np.testing.assert_allclose(padded.x_adv, exact.x_adv, atol=1e-6)


# ---- 3. a break counts when it happens -------------------------------------------------------
@pytest.mark.parametrize("loop", ["host", "lax"])
def test_fab_counts_a_break_at_an_intermediate_iterate_of_a_coupled_target(loop):
    """Row A is misclassified only while row B's perturbation exceeds r = 0.515 (L2). FAB's
    first step takes B to 1.05 x its boundary distance 0.5 (0.525 > r), then it converges to
    ~1.005 x 0.5 < r: A's break exists at an iterate and is gone in the final batch."""
    u = jnp.full((64,), 1 / 8)  # unit L2 direction
    r = 0.515

    def surrogate(v):  # per sample: boundaries at L2 distance 0.9 (A) and 0.5 (B) along u
        d = (v.reshape(2, -1) - 0.5) @ u
        return jnp.stack([jnp.zeros(2), d - jnp.array([0.9, 0.5])], axis=1)

    def target(v):  # B as the surrogate; A wrong iff ||delta_B|| > r
        delta = v.reshape(2, -1) - 0.5
        size_b = jnp.linalg.norm(delta[1])
        return jnp.stack([jnp.zeros(2), jnp.stack([100 * (size_b - r), delta[1] @ u - 0.5])], 1)

    x, y = np.full((2, 8, 8, 1), 0.5, np.float32), np.zeros(2, np.int32)
    res = fab_targeted(surrogate, x, y, key=jax.random.key(0), norm="L2", eps=1.0, n_iter=20,
                       n_target_classes=1, judge_fn=target, compact=False,
                       loop=loop)  # fmt: skip
    moved = np.linalg.norm(np.asarray(res.x_adv - x).reshape(2, -1), axis=1)
    assert moved[1] < r  # B's smallest break: in the final batch A is classified right again
    assert np.argmax(target(res.x_adv), 1)[0] == 0
    assert not np.asarray(res.robust).any()  # ... yet A was broken at an iterate, within eps
    assert np.all(moved <= 1.0)


def test_square_counts_a_break_at_an_intermediate_query_of_a_coupled_target():
    """Row A is misclassified while row B's mean perturbation is below -0.01 (eps 0.1): right
    on the clean batch, wrong at Square's first query (B's start stripes average -0.07), where
    it freezes; B is never broken but its search keeps raising its mean (to 0.1), so in the
    batch at the end of the run A is classified right again. The
    mean is over the 7 x 7 pixels Square's windows reach (as the reference's, they never
    cover the last row and column of an 8 x 8 image; only the start stripes set those)."""

    def target(v):
        s = v[:, :7, :7].reshape(2, -1).mean(1) - 0.5
        return jnp.stack([jnp.zeros(2), jnp.stack([100 * (-0.01 - s[1]), 10 * s[1] - 100])], 1)

    x, y = np.full((2, 8, 8, 1), 0.5, np.float32), np.zeros(2, np.int32)
    key, kw = jax.random.key(1), dict(norm="Linf", eps=0.1, n_queries=100)
    res = square(target, x, y, key=key, compact=False, **kw)
    run = square_run(target, x, y, key=jax.random.fold_in(key, 0), compact=False, **kw)
    assert np.argmax(target(x), 1)[0] == 0  # A is right on the clean batch
    assert float(run.margin[0]) <= 0 and int(run.n_queries[0]) == 1  # A froze at the start
    assert np.argmax(target(run.x_best), 1)[0] == 0  # right again in the run's final batch
    assert not bool(res.robust[0]) and bool(res.robust[1])  # broken when it happened ...
    np.testing.assert_array_equal(res.x_adv[0], run.x_best[0])  # ... by its first query


# ---- 4. randomized models: judged as the reference --------------------------------------------
def _noisy(x, key):
    """Right (class 0, by a margin of 1) except, with probability 0.3 per call and point, for
    class 1; the logits depend on x so that APGD has gradients."""
    flip = jax.random.uniform(key, (x.shape[0],)) < 0.3
    s = _shift(x)
    return jnp.stack([1.0 + s, jnp.where(flip, 2.0, 0.0) - s, -s], axis=1)


def test_rand_judges_by_one_run_on_each_attacks_output_as_the_reference():
    x = np.full((64, 4, 4, 1), 0.5, np.float32)
    y = np.zeros(64, np.int32)
    options = {"apgd-ce": {"n_iter": 10, "eot_iter": 2}, "apgd-dlr": {"n_iter": 10, "eot_iter": 2}}
    kw = dict(eps=0.01, version="rand", attack_options=options, run_checks=False, log=None)
    reference = AutoAttack(_noisy, **kw).run(x, y, batch_size=64)
    strict = AutoAttack(_noisy, rand_verdict="any_draw", **kw).run(x, y, batch_size=64)
    assert (reference.rand_verdict, strict.rand_verdict) == ("rerun", "any_draw")
    # Clean 0.7, then two re-runs: about 0.7 ** 3 = 0.34 (binomial sd 0.06 over 64 points).
    assert 0.1 < reference.robust_accuracy < 0.6
    # Any of 10 x 3 draws per attack flips a point: none survives the stricter rule.
    assert strict.robust_accuracy <= 0.05
    with pytest.raises(ValueError, match="rand_verdict"):
        AutoAttack(_noisy, rand_verdict="sometimes", **kw)
