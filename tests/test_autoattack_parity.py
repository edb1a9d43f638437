"""Issue 4: hpm-jax's AutoAttack agrees with the reference (pyautoattack) on the same model.

The model is one small CNN trained here on Fashion-MNIST (offline) in PyTorch and evaluated in
both frameworks with the same weights (`parity_models`). Each attack (APGD-CE, APGD-T, FAB-T,
Square) and the `standard` chain run in both implementations on the same N_POINTS test
images, for Linf and L2, at an eps where robust accuracy is mid-range (so the comparison is
informative), and the per-point robust flags are compared.

Tolerance. Random streams differ between the frameworks, so parity is statistical. Fix the
points; for a given attack, point i stays robust with some probability r_i over the attack's
randomness (0 or 1 for most points, which the attack always or never breaks). If both
implementations run the same algorithm, our flag S_i and the reference's T_i are draws of
the same Bernoulli(r_i), independent of each other. The difference of robust accuracies,
D = (1/n) sum_i (S_i - T_i), then has mean 0 and variance (2/n^2) sum_i r_i (1 - r_i); the
number of points where the two disagree, m = sum_i [S_i != T_i], has exactly n^2 times that
variance as its mean. So sqrt(m)/n estimates D's standard error from the data, and the test
(McNemar's, for paired binary outcomes) is

    |ours - reference| <= (3 * sqrt(m) + 2) / n,

three standard errors (a false alarm under 0.3% per comparison, normal approximation) plus
a discrete allowance of two points for disagreements no sampling explains: the two forward
passes differ by ~1e-6 relative in the logits (oneDNN vs XLA convolutions), which decides points
that the attacks leave exactly at the decision boundary (FAB's minimal perturbations, Square
and APGD iterates whose margin is at rounding level). Pairing makes this much tighter than
comparing two unpaired binomial estimates (3 * sqrt(2 p (1 - p) / n), ~12 points at
n = 300): points both attacks always or never break do not count. The reference's Square
draws one window per iteration for the whole batch (ours per sample), which correlates its
flags across points; the variance estimate ignores that (the mean is unaffected).

What this detects (measured on this model, 300 points): on both sides the attacks leave
0-11 disagreeing points, so a port is flagged once it leaves about 14 more points robust
than the reference (~5%): APGD-CE at 0.9 eps in L2 (+16) and L2 Square with 100 queries
instead of 500 (+20) fail; APGD-CE with 5 iterations instead of 100 (+6 to +7) and FAB-T
with 10 iterations (+4 to +5) pass. Smaller gaps need more points than CI can afford;
`benchmarks/autoattack_vs_reference.py` compares the full standard chain on 500.

The chain's final per-point flags get the same test. Its robust accuracy after each attack
is compared to the reference's log line; those flags are not observable per point on both
sides, so that check uses the conservative unpaired bound 3 * sqrt(2 p (1 - p) / n) + 2 / n.

Budget (CI on 2 cores): the attacks run at their defaults (100 iterations for APGD and FAB,
Square's p_init 0.8 and schedule) except, identically in both implementations, 2 target
classes for APGD-T and FAB-T (standard: 9) and 500 Square queries (standard: 5000). The
benchmark `benchmarks/autoattack_vs_reference.py` runs the full standard settings.
"""

from __future__ import annotations

import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from parity_models import (
    fashion_mnist_arrays,
    jax_logits_fn,
    jax_params,
    plain_forward,
    torch,
    torch_logits,
    torch_threads,
    train_torch_net,
)

from hpm_jax.attacks import geometry
from hpm_jax.attacks.apgd_attack import apgd, apgd_targeted
from hpm_jax.attacks.autoattack import AutoAttack
from hpm_jax.attacks.fab_attack import fab, fab_targeted
from hpm_jax.attacks.losses import cross_entropy
from hpm_jax.attacks.square_attack import square
from hpm_jax.runtime.sharding import make_mesh

pyautoattack = pytest.importorskip("pyautoattack", reason="the reference: pip install pyautoattack")
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted  # noqa: E402
from pyautoattack.fab_pt import FABAttack_PT  # noqa: E402
from pyautoattack.square import SquareAttack  # noqa: E402

pytestmark = pytest.mark.slow  # pyautoattack on the same model and points

N_POINTS = 300
EPS = {"Linf": 0.1, "L2": 1.5, "L1": 5.0}  # robust accuracy ~45-70% for this model
N_TARGETS = 2  # APGD-T and FAB-T; standard: 9
SQUARE_QUERIES = 500  # standard: 5000
SEED = 0
ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")


@pytest.fixture(scope="module")
def setup():
    """The trained torch net, its JAX logits_fn and the first N_POINTS test images."""
    net = train_torch_net()
    x, y = fashion_mnist_arrays(f"test[:{N_POINTS}]")
    return net, jax_logits_fn(net), x, y


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())  # a writable copy


def _torch_correct(net, x_adv_nchw: torch.Tensor, y: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(x_adv_nchw).argmax(1).numpy() == y


def reference_attack(name: str, net, x: np.ndarray, y: np.ndarray, norm: str) -> np.ndarray:
    """Per-point robust flags of pyautoattack's attack `name`, configured as its AutoAttack
    `standard` version configures it (apart from the reduced budgets above)."""
    eps = EPS[norm]
    common_kw = dict(norm=norm, eps=eps, seed=SEED, device="cpu")
    if name == "apgd-ce":
        attack = APGDAttack(net, n_iter=100, n_restarts=1, loss="ce", rho=0.75, **common_kw)
    elif name == "apgd-t":
        attack = APGDAttack_targeted(
            net, n_iter=100, n_restarts=1, n_target_classes=N_TARGETS, rho=0.75, **common_kw
        )
    elif name == "fab-t":
        attack = FABAttack_PT(
            net, n_iter=100, n_restarts=1, targeted=True, n_target_classes=N_TARGETS, **common_kw
        )
    else:  # AutoAttack builds Square with resc_schedule=False
        attack = SquareAttack(
            net, n_queries=SQUARE_QUERIES, p_init=0.8, resc_schedule=False, **common_kw
        )
    with torch_threads(1):
        x_adv = attack.perturb(_nchw(x), torch.from_numpy(y))
        return _torch_correct(net, x_adv, y)


def our_attack(name: str, logits_fn, x: np.ndarray, y: np.ndarray, norm: str):
    kw = dict(key=jax.random.key(SEED), norm=norm, eps=EPS[norm])
    xj, yj = jnp.asarray(x), jnp.asarray(y.astype(np.int32))
    if name == "apgd-ce":
        return apgd(logits_fn, xj, yj, loss="ce", n_iter=100, n_restarts=1, **kw)
    if name == "apgd-t":
        return apgd_targeted(logits_fn, xj, yj, n_iter=100, n_target_classes=N_TARGETS, **kw)
    if name == "fab-t":
        return fab_targeted(logits_fn, xj, yj, n_iter=100, n_target_classes=N_TARGETS, **kw)
    return square(logits_fn, xj, yj, n_queries=SQUARE_QUERIES, p_init=0.8, **kw)


def assert_paired_parity(what: str, ours: np.ndarray, theirs: np.ndarray) -> None:
    """The McNemar bound of the module docstring on per-point robust flags."""
    n = len(ours)
    only_ours = int(np.sum(ours & ~theirs))  # we failed to break a point the reference broke
    only_theirs = int(np.sum(~ours & theirs))
    disagreements = only_ours + only_theirs
    tolerance = 3.0 * np.sqrt(disagreements) + 2.0
    summary = (
        f"{what}: robust accuracy ours {ours.mean():.2%} vs reference {theirs.mean():.2%} "
        f"on {n} points; robust only for us {only_ours}, only for the reference "
        f"{only_theirs}; allowed |difference| {tolerance:.1f} points"
    )
    print(summary)
    assert abs(only_ours - only_theirs) <= tolerance, summary


def test_forwards_and_gradients_agree(setup):
    """Both frameworks compute the same function, and the hand-written conv gradient of the
    JAX forward is autodiff's: a prerequisite for comparing attacks."""
    net, logits_fn, x, y = setup
    ours = np.asarray(jax.jit(logits_fn)(x))
    theirs = torch_logits(net, x)
    np.testing.assert_array_equal(ours.argmax(1), theirs.argmax(1))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * np.abs(theirs).max())
    assert 0.7 <= np.mean(theirs.argmax(1) == y) < 1.0  # a real, imperfect classifier

    yj = jnp.asarray(y.astype(np.int32))
    grad = jax.grad(lambda v: cross_entropy(logits_fn(v), yj).sum())(jnp.asarray(x))
    params = jax_params(net)
    grad_plain = jax.grad(lambda v: cross_entropy(plain_forward(params, v), yj).sum())(
        jnp.asarray(x)
    )
    x_t = _nchw(x).requires_grad_()
    loss = torch.nn.functional.cross_entropy(net(x_t), torch.from_numpy(y), reduction="sum")
    grad_torch = torch.autograd.grad(loss, [x_t])[0].numpy().transpose(0, 2, 3, 1)
    scale = np.abs(grad_torch).max()
    np.testing.assert_allclose(np.asarray(grad), np.asarray(grad_plain), rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(np.asarray(grad), grad_torch, rtol=0, atol=1e-4 * scale)


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("name", ATTACKS)
def test_attack_matches_reference(setup, name, norm):
    net, logits_fn, x, y = setup
    result = our_attack(name, logits_fn, x, y, norm)
    ours = np.asarray(result.robust)
    theirs = reference_attack(name, net, x, y, norm)
    # Informative only where the attack breaks some points and leaves others.
    assert 0.2 <= theirs.mean() <= 0.8, f"{name} {norm}: choose another eps"
    assert_paired_parity(f"{name} {norm} eps={EPS[norm]}", ours, theirs)

    # Our adversarial points are valid and fool the reference model too (up to a few points
    # left at the boundary, where the ~1e-6 logit differences decide).
    x_adv = np.asarray(result.x_adv)
    norms = np.asarray(geometry.per_sample_norm(jnp.asarray(x_adv - x), norm))
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert norms.max() <= EPS[norm] * (1 + 1e-5) + 1e-6
    broken = ~ours
    torch_correct = _torch_correct(net, _nchw(x_adv), y)
    assert np.sum(broken & torch_correct) <= 2 + 0.01 * broken.sum()


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def reference_chain(net, x: np.ndarray, y: np.ndarray, norm: str):
    """pyautoattack's standard AutoAttack with the reduced budgets: per-point robust flags and
    the robust accuracy after each attack, read from its log lines."""
    aa = pyautoattack.AutoAttack(net, norm=norm, eps=EPS[norm], seed=SEED, version="standard")
    aa.apgd_targeted.n_target_classes = N_TARGETS
    aa.fab.n_target_classes = N_TARGETS
    aa.square.n_queries = SQUARE_QUERIES
    logger, records = logging.getLogger("auto-attack"), _Records()
    level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    try:
        with torch_threads(1):
            _, y_adv = aa.run_standard_evaluation(_nchw(x), torch.from_numpy(y), batch_size=len(x))
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    after = {}
    for message in records.messages:
        match = re.match(r"robust accuracy after ([A-Z-]+): ([\d.]+)%", message)
        if match:
            after[match.group(1).lower()] = float(match.group(2)) / 100
    return y_adv.numpy() == y, after


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_standard_chain_matches_reference(setup, norm):
    net, logits_fn, x, y = setup
    options = {
        "apgd-t": {"n_target_classes": N_TARGETS},
        "fab-t": {"n_target_classes": N_TARGETS},
        "square": {"n_queries": SQUARE_QUERIES},
    }
    # All the suite's devices (4): the chain's batch is sharded as users run it.
    report = AutoAttack(
        logits_fn, norm=norm, eps=EPS[norm], version="standard", seed=SEED,
        attack_options=options, log=None, mesh=make_mesh(),
    ).run(x, y.astype(np.int32), batch_size=len(x))  # fmt: skip
    theirs, theirs_after = reference_chain(net, x, y, norm)

    assert report.attacks == list(ATTACKS)
    assert 0.2 <= theirs.mean() <= 0.8, f"chain {norm}: choose another eps"
    assert_paired_parity(f"standard chain {norm} eps={EPS[norm]}", report.robust, theirs)
    assert report.clean_accuracy == pytest.approx(np.mean(torch_logits(net, x).argmax(1) == y))
    n = len(x)
    for name in ATTACKS:
        ours_p, theirs_p = report.robust_accuracy_after[name], theirs_after[name]
        p = (ours_p + theirs_p) / 2
        bound = 3 * np.sqrt(2 * p * (1 - p) / n) + 2 / n
        assert abs(ours_p - theirs_p) <= bound, (name, ours_p, theirs_p, bound)


# ------------------------------------------------------------------ the plus version's attacks
# Untargeted FAB computes all C = 10 gradients per iteration (both sides), so it runs on fewer
# points and runs than plus asks: FAB_POINTS points, FAB_RESTARTS runs (plus: 5).
FAB_POINTS = 150
FAB_RESTARTS = 2
# Square L1 alone breaks little at the chain's L1 eps (5: ~4%); at 20 it is mid-range.
SQUARE_L1_EPS = 20.0
# The plus chain: the first PLUS_POINTS points, 1 APGD restart and 1 FAB run (plus: 5 each;
# FAB's random runs are test_untargeted_fab's), N_TARGETS targets and SQUARE_QUERIES queries,
# identically on both sides (about 3 minutes per norm on 2 cores with 150 points and 2 runs).
PLUS_POINTS = 100
PLUS_OPTIONS = {
    "apgd-ce": {"n_restarts": 1},
    "apgd-dlr": {"n_restarts": 1},
    "fab": {"n_restarts": 1},
    "square": {"n_queries": SQUARE_QUERIES},
    "apgd-t": {"n_target_classes": N_TARGETS},
    "fab-t": {"n_target_classes": N_TARGETS},
}
PLUS_ATTACKS = ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]


def _assert_valid_and_fooling(net, x_adv, x, y, robust, norm, eps):
    """Our points lie in the box within eps (L1: up to float32 rounding of x + delta) and the
    broken ones fool the reference model too, up to a few left at the boundary."""
    norms = np.asarray(geometry.per_sample_norm(jnp.asarray(x_adv - x), norm))
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    # L1 sums the float32 rounding of x + delta (~6e-8) over up to 784 moved pixels; APGD-L1's
    # sorted projection was measured 8.8e-5 over eps = 5 (the reference's float32 has the same).
    rounding = 2e-4 if norm == "L1" else 1e-6
    assert norms.max() <= eps * (1 + 1e-5) + rounding
    broken = ~robust
    torch_correct = _torch_correct(net, _nchw(x_adv), y)
    assert np.sum(broken & torch_correct) <= 2 + 0.01 * broken.sum()


def _full_only(*norms):
    """Norms whose slow chain-level parity runs only with HPM_FULL_PARITY=1: the suite keeps
    one norm of each (about 1.5 minutes each on 2 cores) within CI's time; every norm's
    geometry is checked against the reference on a small MLP in test_fab_untargeted.py and
    by known answers in test_autoattack.py."""
    skip = pytest.mark.skipif(
        os.environ.get("HPM_FULL_PARITY") != "1", reason="set HPM_FULL_PARITY=1 to run"
    )
    return [pytest.param(n, marks=skip) for n in norms]


@pytest.mark.slow
@pytest.mark.parametrize("norm", [*_full_only("Linf", "L2"), "L1"])
def test_untargeted_fab_matches_reference(setup, norm):
    net, logits_fn, x, y = setup
    x, y, eps = x[:FAB_POINTS], y[:FAB_POINTS], EPS[norm]
    result = fab(logits_fn, jnp.asarray(x), jnp.asarray(y.astype(np.int32)),
                 key=jax.random.key(SEED), norm=norm, eps=eps, n_iter=100,
                 n_restarts=FAB_RESTARTS)  # fmt: skip
    ours = np.asarray(result.robust)
    attack = FABAttack_PT(net, norm=norm, eps=eps, seed=SEED, device="cpu", n_iter=100,
                          n_restarts=FAB_RESTARTS, targeted=False)  # fmt: skip
    with torch_threads(1):
        theirs = _torch_correct(net, attack.perturb(_nchw(x), torch.from_numpy(y)), y)
    assert 0.2 <= theirs.mean() <= 0.8, f"fab {norm}: choose another eps"
    assert_paired_parity(f"fab {norm} eps={eps}", ours, theirs)
    _assert_valid_and_fooling(net, np.asarray(result.x_adv), x, y, ours, norm, eps)


@pytest.mark.slow
def test_square_l1_matches_reference(setup):
    net, logits_fn, x, y = setup
    eps = SQUARE_L1_EPS
    result = square(logits_fn, jnp.asarray(x), jnp.asarray(y.astype(np.int32)),
                    key=jax.random.key(SEED), norm="L1", eps=eps, n_queries=SQUARE_QUERIES,
                    p_init=0.8)  # fmt: skip
    ours = np.asarray(result.robust)
    attack = SquareAttack(net, norm="L1", eps=eps, seed=SEED, device="cpu", p_init=0.8,
                          n_queries=SQUARE_QUERIES, resc_schedule=False)  # fmt: skip
    with torch_threads(1):
        theirs = _torch_correct(net, attack.perturb(_nchw(x), torch.from_numpy(y)), y)
    assert 0.2 <= theirs.mean() <= 0.8, "square L1: choose another eps"
    assert_paired_parity(f"square L1 eps={eps}", ours, theirs)
    _assert_valid_and_fooling(net, np.asarray(result.x_adv), x, y, ours, "L1", eps)


def reference_plus(net, x: np.ndarray, y: np.ndarray, norm: str) -> np.ndarray:
    """pyautoattack's plus AutoAttack with the budgets of PLUS_OPTIONS: per-point flags."""
    aa = pyautoattack.AutoAttack(net, norm=norm, eps=EPS[norm], seed=SEED, version="plus")
    aa.apgd.n_restarts = 1
    aa.fab.n_restarts = 1
    aa.apgd_targeted.n_target_classes = N_TARGETS
    aa.fab.n_target_classes = N_TARGETS
    aa.square.n_queries = SQUARE_QUERIES
    assert aa.attacks_to_run == PLUS_ATTACKS
    with torch_threads(1):
        _, y_adv = aa.run_standard_evaluation(_nchw(x), torch.from_numpy(y), batch_size=len(x))
    return y_adv.numpy() == y


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["Linf", *_full_only("L2", "L1")])
def test_plus_chain_matches_reference(setup, norm):
    net, logits_fn, x, y = setup
    x, y = x[:PLUS_POINTS], y[:PLUS_POINTS]
    report = AutoAttack(
        logits_fn, norm=norm, eps=EPS[norm], version="plus", seed=SEED,
        attack_options=PLUS_OPTIONS, log=None, mesh=make_mesh(),
    ).run(x, y.astype(np.int32), batch_size=len(x))  # fmt: skip
    theirs = reference_plus(net, x, y, norm)
    assert report.attacks == PLUS_ATTACKS
    assert 0.2 <= theirs.mean() <= 0.8, f"plus chain {norm}: choose another eps"
    assert_paired_parity(f"plus chain {norm} eps={EPS[norm]}", report.robust, theirs)
    _assert_valid_and_fooling(net, report.x_adv, x, y, report.robust, norm, EPS[norm])
