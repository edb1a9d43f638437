"""lax == host on a convolutional net: every attack gives the same robust flags and, within
float rounding, the same x_adv with either loop (`driver`), for each option the chain uses
(losses, targets, L1 largereps, EOT, a separate judge, compact on and off, 1/2/4 devices);
`loop` reaches every attack of the AutoAttack chain and of MSA.

Why not bitwise (tests/test_driver.py checks bitwise on a linear model): XLA:CPU computes a
convolution's input gradient with another kernel inside a while loop than in a program of
its own, which sums the same products in another order (measured: 1 ulp apart). APGD's Linf
and L1 steps read only signs and ranks of the gradient, Square no gradient at all, so their
results agree bit for bit; L2 steps and FAB's projections scale with the gradient's values,
so their iterates move apart by rounding. A gap beyond rounding is a bug: APGD-DLR once moved
points 1e-2 apart, where y ranked third and DLR's gradient, exactly 0 there, was rounding
noise that the step normalised into a full step (`losses.dlr` now returns the exact 0).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toys import CONV_KERNEL, conv_net

from hpm_jax.attacks import (
    AutoAttack,
    apgd,
    apgd_targeted,
    driver,
    fab,
    fab_targeted,
    mixed_surrogate_attack,
    square,
)
from hpm_jax.runtime.sharding import data_sharding, make_mesh

pytestmark = pytest.mark.slow  # every attack with both loops on a conv net

B, SIZE, CLASSES, CHANNELS = 16, 8, 10, (4, 8)
BUCKETS = (16,)  # compact without shrinking: no second set of programs at a smaller size
SHRINK = ("apgd-t", "square")  # ... except here: (16, 8), between targets and inside a run
EPS = {"Linf": 0.01, "L2": 0.1, "L1": 0.5}  # each attack breaks some of the 16 points, not all


def rounding_tolerance(n_iter: int) -> float:
    """The largest x_adv difference rounding can explain after n_iter iterations of a run.

    Per iteration, the input gradient's relative error is at most the sum over the backward
    pass's dot products of (their length) x u, u = 2^-24 (each product summed once, in another
    order): the dense layer's (CLASSES terms) and each convolution's (k * k * its output
    channels). A step is at most the image range (1), so an iterate moves by at most that
    relative error per iteration, assuming (as the measured 1-2 ulp confirm) that the
    attacks' steps do not amplify an earlier difference. For 10 iterations: 7e-5, far below
    any real disagreement (a step of eps, a pixel level 1/255 = 4e-3)."""
    lengths = CLASSES + sum(CONV_KERNEL * CONV_KERNEL * c for c in CHANNELS)
    return n_iter * lengths * 2.0**-24


@pytest.fixture(scope="module")
def nets():
    """(the model, a judge that agrees with it on most points, the model with noisy input)."""
    return conv_net(0), conv_net(0, jitter=0.1), conv_net(0, randomized=True)


@pytest.fixture(scope="module")
def data(nets):
    x = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (B, SIZE, SIZE, 3)), jnp.float32)
    return x, jnp.argmax(nets[0](x), 1)


def _sharded(x, y, n_devices):
    sharding = data_sharding(make_mesh(jax.devices()[:n_devices]))
    return jax.device_put(x, sharding), jax.device_put(y, sharding)


# The chain's and MSA's attacks (their settings, devices and compact), so that the chain tests
# below reuse these programs, then the options only single attacks take.
CHAIN = {  # AutoAttack "standard" on 2 devices, compact
    "apgd-ce": dict(n_iter=8, n_restarts=1),  # (a list of names takes 5 restarts by default)
    "apgd-t": dict(n_iter=8, n_target_classes=2),
    "fab-t": dict(n_iter=6, n_target_classes=2),
    "square": dict(n_queries=30),
}
MSA = {k: CHAIN[k] for k in ("apgd-ce", "fab-t", "square")}  # 4 devices, exact, a judge
FUNCTIONS = {"apgd-ce": apgd, "apgd-t": apgd_targeted, "fab-t": fab_targeted, "square": square}
ITERATIONS = {"apgd-ce": 8, "apgd-t": 8, "fab-t": 6, "square": 30}
SQUARE_EPS = {"square": dict(eps=0.02)}  # Square breaks none of the 16 points at 0.01
EXACT_JUDGE = dict(compact=False, judge=True)
# (id, attack, settings, devices, iterations per run (the tolerance's n_iter)).
CASES = [
    *[(name, FUNCTIONS[name], dict(CHAIN[name], **SQUARE_EPS.get(name, {})), 2,
       ITERATIONS[name]) for name in CHAIN],
    *[(f"{name}-exact-judge", FUNCTIONS[name],
       dict(MSA[name], **EXACT_JUDGE, **SQUARE_EPS.get(name, {})), 4, ITERATIONS[name])
      for name in MSA],
    ("apgd-dlr-L2-restarts", apgd, dict(n_iter=8, loss="dlr", norm="L2", n_restarts=2), 1, 8),
    ("apgd-L1-largereps-exact", apgd,
     dict(n_iter=6, norm="L1", use_largereps=True, compact=False), 1, 6),
    ("apgd-dlr-eot", apgd, dict(n_iter=6, loss="dlr", eot_iter=3, randomized=True), 1, 6),
    ("fab-L1-exact-judge", fab, dict(n_iter=6, n_restarts=2, norm="L1", **EXACT_JUDGE), 1, 6),
]  # fmt: skip


@pytest.mark.parametrize("name,attack,settings,n_devices,n_iter", CASES,
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_lax_and_host_loops_agree_on_a_conv_net(nets, data, name, attack, settings, n_devices,
                                                n_iter):  # fmt: skip
    model, judge, noisy = nets
    x, y = _sharded(*data, n_devices)
    kw = dict(settings)
    fn = noisy if kw.get("randomized") else model
    if kw.pop("judge", False):
        kw["judge_fn"] = judge
    kw.setdefault("eps", EPS[kw.get("norm", "Linf")])
    if kw.setdefault("compact", True):
        kw["bucket_sizes"] = (*BUCKETS, 8) if name in SHRINK else BUCKETS
    lax_res, host_res = (attack(fn, x, y, key=jax.random.key(3), loop=loop, **kw)
                         for loop in ("lax", "host"))  # fmt: skip
    robust = np.asarray(lax_res.robust)
    np.testing.assert_array_equal(robust, np.asarray(host_res.robust))
    assert 0 < robust.sum() < B, robust  # some points broken, some not: the flags say something
    gap = np.abs(np.asarray(lax_res.x_adv) - np.asarray(host_res.x_adv)).max()
    assert gap <= rounding_tolerance(n_iter), gap


# ---------------------------------------------------------------- the chain and MSA


def _compiled(piece: str) -> int:
    return driver.compiled_programs()[piece]


def _loops_compiled(run):
    """run()'s result and how many (host step, lax loop) programs it compiled."""
    before = _compiled("step"), _compiled("loop")
    result = run()
    return result, (_compiled("step") - before[0], _compiled("loop") - before[1])


def _assert_same_verdicts(lax_res, host_res, n_iter):
    np.testing.assert_array_equal(lax_res.robust, host_res.robust)
    assert 0 < lax_res.robust.sum() < len(lax_res.robust)
    assert np.abs(lax_res.x_adv - host_res.x_adv).max() <= rounding_tolerance(n_iter)


def test_autoattack_passes_loop_to_every_attack(nets, data):
    """With loop="lax" no attack compiles a host step (APGD and FAB would on CPU under
    "auto"); with loop="host" none compiles a lax loop (Square would under "auto"). Both
    chains give the same report; it records the loop."""
    model = nets[0]
    x, y = (np.asarray(a) for a in data)

    def chain(loop):
        aa = AutoAttack(model, eps=0.01, version="standard", attack_options=CHAIN,
                        mesh=make_mesh(jax.devices()[:2]), bucket_sizes=BUCKETS, loop=loop,
                        run_checks=False, log=None)  # fmt: skip
        return aa.run(x, y, batch_size=B)

    lax_report, (steps, _) = _loops_compiled(lambda: chain("lax"))
    assert steps == 0 and lax_report.loop == "lax"
    host_report, (_, loops) = _loops_compiled(lambda: chain("host"))
    assert loops == 0 and host_report.to_dict()["loop"] == "host"
    _assert_same_verdicts(lax_report, host_report, n_iter=8)


def test_msa_passes_loop_to_every_attack(nets, data):
    """MSA (every attack through a surrogate, judged by another model, compact=False): the
    same with either loop, and each loop is the only one that compiles."""
    model, judge, _ = nets
    x, y = (np.asarray(a) for a in data)

    def msa(loop):
        return mixed_surrogate_attack(judge, {"conv": model}, x, y, eps=0.01, batch_size=B,
                                      version=list(MSA),
                                      attack_options=MSA, mesh=make_mesh(jax.devices()[:4]),
                                      loop=loop, run_checks=False, log=None)  # fmt: skip

    lax_report, (steps, _) = _loops_compiled(lambda: msa("lax"))
    host_report, (_, loops) = _loops_compiled(lambda: msa("host"))
    assert steps == 0 and loops == 0
    assert lax_report.chain.loop == "lax" and host_report.chain.loop == "host"
    _assert_same_verdicts(lax_report, host_report, n_iter=8)


def test_a_bad_loop_is_refused_before_any_work(nets):
    with pytest.raises(ValueError, match="loop must be one of"):
        AutoAttack(nets[0], eps=0.03, loop="python")
