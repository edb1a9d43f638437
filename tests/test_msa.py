"""The Mixed Surrogate Attack end to end, and the obfuscation canary it must expose."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hpm_jax.attacks import (
    AttackResult,
    AttackSpec,
    AutoAttack,
    apgd,
    apgd_targeted,
    fab_targeted,
    pgd,
    square,
)
from hpm_jax.attacks.canary import quantized
from hpm_jax.attacks.msa import mixed_surrogate_attack, msa_chain
from hpm_jax.data import offline

EPS = 0.1
FAST = {  # the standard chain with fewer iterations, so the suite stays fast on 2 cores
    "apgd-ce": {"n_iter": 25},
    "apgd-t": {"n_iter": 25, "n_target_classes": 3},
    "fab-t": {"n_iter": 25, "n_target_classes": 3},
    "square": {"n_queries": 400},
}


def _linear_logits(params, x):
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


@functools.lru_cache(maxsize=1)
def _fashion_linear():
    """A softmax-regression classifier of Fashion-MNIST: ~80% clean, not robust at eps 0.1."""
    if not offline.fashion_mnist_files_present():
        pytest.skip("needs apt-get install dataset-fashion-mnist")
    train = offline.debian_fashion_mnist("train[:3000]")
    test = offline.debian_fashion_mnist("test[:128]")

    def arrays(source):
        x = np.stack([source[i]["image"] for i in range(len(source))]).astype(np.float32) / 255
        y = np.array([source[i]["label"] for i in range(len(source))], np.int32)
        return x, y

    (x, y), (x_test, y_test) = arrays(train), arrays(test)
    params = {"w": jnp.zeros((28 * 28, 10)), "b": jnp.zeros(10)}
    opt = optax.adam(0.01)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
            _linear_logits(p, x), y
        ).mean()
        updates, state = opt.update(jax.grad(loss)(params), state)
        return optax.apply_updates(params, updates), state

    for _ in range(150):
        params, state = step(params, state)
    return functools.partial(_linear_logits, params), x_test, y_test


def test_canary_is_exposed_by_msa_and_the_checks():
    """Quantised input: plain APGD sees zero gradients and reports the model robust; MSA with
    the un-quantised network as a (BPDA) surrogate breaks it, judged by the quantised model
    itself (the target), and the checks flag it."""
    net, x, y = _fashion_linear()
    canary = quantized(net, levels=8)
    clean = float(np.mean(np.argmax(canary(x), 1) == y))
    assert clean > 0.7

    apgd_only = AutoAttack(
        canary, eps=EPS, version=["apgd-ce"], attack_options={"apgd-ce": {"n_iter": 25}}, log=None
    ).run(x, y, batch_size=64)
    # Fooled: zero gradients leave only the random start, which breaks a few points.
    assert apgd_only.robust_accuracy > 0.6
    assert {c.name for c in apgd_only.flagged} >= {"zero_gradients"}

    report = mixed_surrogate_attack(
        canary, {"bpda": net}, x, y, eps=EPS, batch_size=64, attack_options=FAST, log=None
    )
    # True robustness of this network at eps = 0.1 is ~0: the un-quantised net is broken by
    # APGD on every point, and quantisation lets any pixel move by a level.
    truth = AutoAttack(
        net, eps=EPS, version=["apgd-ce"], attack_options={"apgd-ce": {"n_iter": 25}}, log=None
    ).run(x, y, batch_size=64)
    assert truth.robust_accuracy <= 0.05
    # The target judged: every point MSA counts as broken fools the quantised model itself.
    broken = ~report.robust & report.chain.clean
    fooled = np.argmax(canary(jnp.asarray(report.x_adv)), 1) != y
    assert fooled[broken].all()
    assert report.robust_accuracy <= truth.robust_accuracy + 0.03
    assert report.per_surrogate["bpda"] <= truth.robust_accuracy + 0.03
    assert "zero_gradients" in {c.name for c in report.flagged}


def test_msa_chain_order_and_names():
    fns = {"fc": lambda v: v, "ste": lambda v: v}
    names = [s.name for s in msa_chain(fns, norm="Linf")]
    assert names == [
        "apgd-ce@fc", "apgd-t@fc", "fab-t@fc",
        "apgd-ce@ste", "apgd-t@ste", "fab-t@ste",
        "square",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="at least one surrogate"):
        msa_chain({}, norm="Linf")
    with pytest.raises(ValueError, match="free of '@'"):
        msa_chain({"a@b": lambda v: v}, norm="Linf")


def _batch_mean_target(w):
    """A batch-coupled linear model: logits = (x - mean over the batch) @ w."""

    def target(x):
        flat = x.reshape(x.shape[0], -1)
        return (flat - flat.mean(0, keepdims=True)) @ w

    return target


def test_target_judges_whole_batches_in_their_original_order():
    """Every attack sees each batch whole and in order (no compaction), so a batch-coupled
    target judges each point among its own batch."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.8, (16, 2, 2, 1)).astype(np.float32)
    y = rng.integers(0, 4, 16).astype(np.int32)
    w = jnp.asarray(rng.normal(size=(4, 4)), jnp.float32)
    target = _batch_mean_target(w)
    seen = []

    def recording(logits_fn, xb, yb, *, key, norm, eps, judge_fn, **_):
        seen.append(np.asarray(xb))
        assert judge_fn is target  # the chain hands every attack the target as judge
        return AttackResult(xb, jnp.argmax(judge_fn(xb), 1) == yb)

    chain = AutoAttack(
        target,
        eps=EPS,
        version=[AttackSpec("record", recording)],
        compact=False,
        run_checks=False,
        log=None,
    )
    chain.run(x, y, batch_size=8)
    assert len(seen) == 2
    np.testing.assert_array_equal(seen[0], x[:8])
    np.testing.assert_array_equal(seen[1], x[8:])


def test_msa_on_batch_coupled_linear_target_reports_consistent_figures():
    rng = np.random.default_rng(1)
    x = rng.uniform(0.3, 0.7, (32, 4, 4, 1)).astype(np.float32)
    w = jnp.asarray(rng.normal(size=(16, 5)), jnp.float32)
    target = _batch_mean_target(w)
    # Labels: the target's clean predictions in the batches MSA will use (all correct).
    y = np.concatenate([np.argmax(target(jnp.asarray(x[i : i + 16])), 1) for i in (0, 16)])
    y = y.astype(np.int32)
    plain = lambda v: v.reshape(v.shape[0], -1) @ w  # ignores the batch coupling
    report = mixed_surrogate_attack(
        target, {"plain": plain, "exact": target}, x, y,
        eps=0.05, batch_size=16, attack_options=FAST, log=None,
    )  # fmt: skip
    assert report.clean_accuracy == 1.0
    after = list(report.robust_accuracy_after.values())
    assert all(a >= b for a, b in itertools.pairwise(after))  # worst case accumulates
    assert report.per_surrogate["exact"] == report.robust_accuracy_after["fab-t@exact"]
    assert report.robust_accuracy <= min(after)
    assert report.robust_accuracy <= report.final_reevaluation_accuracy
    # The reported number is the target's verdict on the final batches, in their context.
    final = np.concatenate(
        [np.argmax(target(jnp.asarray(report.x_adv[i : i + 16])), 1) == y[i : i + 16]
         for i in (0, 16)]
    )  # fmt: skip
    np.testing.assert_array_equal(report.robust, report.robust & final)
    assert report.final_reevaluation_accuracy == pytest.approx(final.mean())
    assert np.abs(report.x_adv - x).max() <= 0.05 + 1e-6
    assert report.batch_size == 16 and "batch" in report.order
    assert "batch_dependence" in {c.name for c in report.flagged}


# ---- the target judges: a provably robust target behind a breakable surrogate ----------------
CENTRES = np.array([0.125, 0.375, 0.625, 0.875], np.float32)
ROBUST_EPS = {"Linf": 0.05, "L2": 0.4}  # both move an 8 x 8 image's mean by at most 0.05


def _mean_statistic(x):
    return x.reshape(x.shape[0], -1).mean(1)


def robust_target(x):
    """Nearest centre of the image mean. An Linf (or L2) perturbation of eps = 0.05 (0.4 over
    64 pixels) moves the mean by at most 0.05, and each clean mean lies within 0.03 of its
    class centre, 0.125 from the decision boundaries: no attack within eps can change a
    prediction, whatever float rounding does (the margin is 0.045 against ~1e-7)."""
    return -((_mean_statistic(x)[:, None] - CENTRES) ** 2) * 100.0


def breakable_surrogate(x):
    """The target's classifier on the mean plus 20 x (pixel (0, 0) - 0.5): it agrees with the
    target on the clean images (that pixel is 0.5) but eps moves its statistic by 1.0."""
    stat = _mean_statistic(x) + 20.0 * (x[:, 0, 0, 0] - 0.5)
    return -((stat[:, None] - CENTRES) ** 2) * 100.0


def _robust_data(n=16):
    rng = np.random.default_rng(0)
    y = np.arange(n, dtype=np.int32) % 4
    x = CENTRES[y][:, None, None, None] + rng.uniform(-0.02, 0.02, (n, 8, 8, 1))
    x[:, 0, 0, 0] = 0.5
    return x.astype(np.float32), y


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_every_attack_judged_by_a_provably_robust_target_reports_it_robust(norm):
    x, y = _robust_data()
    eps, key = ROBUST_EPS[norm], jax.random.key(0)
    np.testing.assert_array_equal(np.argmax(breakable_surrogate(x), 1), y)
    attacks = {
        "apgd-ce": lambda **kw: apgd(breakable_surrogate, x, y, key=key, norm=norm, eps=eps,
                                     n_iter=20, **kw),
        "apgd-t": lambda **kw: apgd_targeted(breakable_surrogate, x, y, key=key, norm=norm,
                                             eps=eps, n_iter=20, n_target_classes=2, **kw),
        "fab-t": lambda **kw: fab_targeted(breakable_surrogate, x, y, key=key, norm=norm,
                                           eps=eps, n_iter=20, n_target_classes=2, **kw),
        "square": lambda **kw: square(breakable_surrogate, x, y, key=key, norm=norm, eps=eps,
                                      n_queries=200, **kw),
        "pgd": lambda **kw: pgd.pgd(breakable_surrogate, x, y, key=key, norm=norm, eps=eps,
                                    step_size=eps / 4, num_steps=10, **kw),
    }  # fmt: skip
    for name, attack in attacks.items():
        judged = attack(judge_fn=robust_target)
        assert bool(np.all(judged.robust)), name
        # The guard can fail: judged by itself, the surrogate is broken almost everywhere.
        assert float(np.mean(attack().robust)) <= 0.25, name


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_msa_of_a_provably_robust_target_reports_it_fully_robust(norm):
    x, y = _robust_data()
    surrogates = {"breakable": breakable_surrogate, "exact": robust_target}
    options = {
        "apgd-ce": {"n_iter": 20},
        "apgd-t": {"n_iter": 20, "n_target_classes": 2},
        "fab-t": {"n_iter": 20, "n_target_classes": 2},
        "square": {"n_queries": 200},
    }
    report = mixed_surrogate_attack(
        robust_target, surrogates, x, y, norm=norm, eps=ROBUST_EPS[norm], batch_size=8,
        attack_options=options, run_checks=False, log=None,
    )  # fmt: skip
    assert report.robust_accuracy == 1.0
    assert report.final_reevaluation_accuracy == 1.0
    assert report.per_surrogate == {"breakable": 1.0, "exact": 1.0}
    # The surrogate's own attacks did break the surrogate: MSA's verdict is the target's.
    own = AutoAttack(
        breakable_surrogate,
        norm=norm,
        eps=ROBUST_EPS[norm],
        version=["apgd-ce"],
        attack_options={"apgd-ce": {"n_iter": 20}},
        run_checks=False,
        log=None,
    )
    assert own.run(x, y, batch_size=8).robust_accuracy <= 0.25  # fmt: skip
