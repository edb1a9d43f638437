"""APGD inside the training step (`attack.method="apgd"`): the same iterates as the standalone
attack, a known answer, one compile per run, and the training program's guarantees (1 vs 4
devices, resume) as PGD has them."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from platform_support import take_devices
from train_support import (
    assert_close,
    compiles,
    final_params,
    kill_at_step,
    load,
    run,
    tiny_overrides,
)

from hpm_jax.attacks import apgd_attack, apgd_steps, contract, driver
from hpm_jax.models import get_model
from hpm_jax.training import metrics, objectives

pytestmark = pytest.mark.slow  # trains end to end

SHAPE = (4, 4, 3)
STEPS = 4  # the training runs': checkpoints at 2 and 4, so a kill at 3 resumes from 2


def _losses(workdir):
    records = metrics.read_jsonl(os.path.join(workdir, metrics.JSONL))
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


def _linear(classes, seed=0):
    w = np.random.default_rng(seed).normal(size=(int(np.prod(SHAPE)), classes))
    return w, lambda v: v.reshape(v.shape[0], -1) @ jnp.asarray(w, v.dtype)


def _host_loop_best(fn, x, y, key, *, loss, n_iter, n_restarts, eps, reference=None):
    """The standalone attack machinery: the driver's host loop (one jitted call per
    iteration, the evaluation's path) on the same keep-best APGD."""
    attack = apgd_attack.ApgdSteps(apgd_steps.ApgdConfig(norm="Linf", loss=loss), n_restarts,
                                   keep_best=True)  # fmt: skip
    params = dict(rho=jnp.asarray(0.75, x.dtype))
    if reference is not None:
        params["reference"] = reference
    traced = contract.traced(fn)
    phases = [driver.Phase(n_iter, apgd_steps.schedule(n_iter, "Linf"))]
    return driver.run(attack, (traced, traced), params, x, y, jnp.full(y.shape, eps, x.dtype),
                      key, runs=n_restarts, phases=phases, loop="host", compact=False)  # fmt: skip


@pytest.mark.parametrize("loss", ["ce", "dlr", "kl"])
def test_the_traced_attack_runs_the_iterates_of_the_host_loop(loss):
    """In float64, where no float rounding reaches APGD's discrete choices (gradient signs,
    loss comparisons, step halvings), the one traced program and the host loop of jitted
    steps give the same points. (In float32 the fused program rounds some sums differently,
    and a near-tie then picks another iterate: 3 of 12 rows moved by a step on this model.)"""
    with jax.enable_x64(True):
        _, f = _linear(10)
        x = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (12, *SHAPE)))
        y = jnp.argmax(f(x), 1)
        reference = f(x) if loss == "kl" else None
        kw = dict(loss=loss, n_iter=7, n_restarts=2)
        perturb = functools.partial(apgd_attack.perturb, f, eps=0.05, **kw)
        traced = jax.jit(lambda x, y, k, r: perturb(x, y, key=k, reference_logits=r))(
            x, y, jax.random.key(5), reference
        )
        host = _host_loop_best(f, x, y, jax.random.key(5), eps=0.05, reference=reference, **kw)
        np.testing.assert_array_equal(np.asarray(traced), np.asarray(host))
        assert np.abs(np.asarray(traced - x)).max() <= 0.05 + 1e-15


def test_on_two_classes_the_best_iterate_is_the_known_vertex():
    """Two classes, a linear model: CE grows with the margin z_other - z_y, which is linear in
    x, so its maximum over the Linf ball is the vertex x + eps * sign(w_other - w_y) (inside
    the box here); APGD's first 2-eps sign step lands on it and projection keeps it there."""
    w, f = _linear(2, seed=3)
    x = jnp.asarray(np.random.default_rng(4).uniform(0.3, 0.7, (8, *SHAPE)), jnp.float32)
    y = jnp.argmax(f(x), 1)
    eps = 0.05
    best = apgd_attack.perturb(f, x, y, key=jax.random.key(0), eps=eps, n_iter=5)
    direction = np.sign(w[:, 1] - w[:, 0])[None, :] * np.where(np.asarray(y) == 0, 1, -1)[:, None]
    expected = np.asarray(x).reshape(8, -1) + eps * direction
    np.testing.assert_allclose(np.asarray(best).reshape(8, -1), expected, atol=1e-6)


def test_the_training_step_crafts_the_standalone_attack():
    """`adversarial_examples`, what the jitted training step calls, is the standalone APGD on
    the model as the objective sees it (its mode, batch norm in train mode for PGD-AT, no
    gradient into the weights): the same points as the driver's host loop, in float64."""
    with jax.enable_x64(True):
        model = get_model("small_cnn", num_classes=10, head="fc", in_channels=3, image_size=8,
                          channels=(4, 8), num_features=8)  # fmt: skip
        x = jnp.asarray(np.random.default_rng(2).uniform(0, 1, (6, 8, 8, 3)))
        variables = model.init(jax.random.key(0), x[:1].astype(jnp.float32))
        variables = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), variables)
        y = jnp.asarray([0, 1, 2, 3, 4, 5])
        config = load(tiny_overrides("/unused", **{"attack.method": "apgd",
                                                   "attack.num_steps": 4}))  # fmt: skip
        objective = objectives.Objective.from_config(config)
        assert objective.attack.method == "apgd" and objective.attack.bn_train
        key = jax.random.key(7)
        step = jax.jit(lambda v, x, y, k: objectives.adversarial_examples(
            model, v, x, y, k, objective))  # fmt: skip
        crafted = step(variables, x, y, key)

        def as_attacked(v):  # the objective's view of the model: train-mode batch norm
            logits, _ = model.apply(variables, v, train=True, mode="fc", mutable=["batch_stats"])
            return logits

        attack = objective.attack
        host = _host_loop_best(as_attacked, x, y, key, loss="ce", n_iter=attack.num_steps,
                               n_restarts=attack.restarts, eps=attack.eps)  # fmt: skip
        np.testing.assert_array_equal(np.asarray(crafted), np.asarray(host))


@pytest.fixture(scope="module")
def apgd_run(tmp_path_factory):
    """A tiny PGD-AT run with APGD (2 iterations, 2 restarts) on 4 devices, and what it
    compiled."""
    root = tmp_path_factory.mktemp("apgd_run")
    workdir = root / "work"
    apgd = {"attack.method": "apgd", "attack.num_steps": 2, "attack.restarts": 2,
            "train.num_steps": STEPS}  # fmt: skip
    # L2 steps are continuous in the gradient (Linf's sign() turns float rounding into steps).
    l2 = {"attack.norm": "L2", "attack.eps": 0.5, "eval.attack.step_size": 0.2}
    overrides = tiny_overrides(root, **apgd, **l2)
    summary = {}
    names = compiles(lambda: summary.update(run(workdir, root, overrides)))
    return workdir, root, overrides, summary, names


def test_the_training_step_compiles_once_for_the_whole_run(apgd_run):
    workdir, _, _, summary, names = apgd_run
    assert summary["steps"] == STEPS and summary["devices"] == 4
    assert names.count("Compiling jit(train_step)") == 1, names
    losses = [loss for _, loss in _losses(workdir)]
    assert len(losses) == STEPS and np.all(np.isfinite(losses))


def test_apgd_training_on_one_device_equals_four(apgd_run, tmp_path):
    workdir, root, overrides, _, _ = apgd_run
    one = run(tmp_path / "one", root, overrides, devices=take_devices(1))
    assert one["devices"] == 1
    # Float32 sums in another order (the L2 steps are continuous in them): as PGD's test.
    assert_close(final_params(tmp_path / "one"), final_params(workdir), rtol=2e-4, atol=2e-5)


@pytest.mark.slow
def test_a_killed_apgd_run_resumes_to_the_uninterrupted_result(apgd_run, tmp_path):
    workdir, root, overrides, _, _ = apgd_run
    killed = tmp_path / "killed"
    kill_at_step(killed, root, overrides, step=3, total=STEPS)
    assert not os.path.exists(killed / "model")  # it never got to the end
    again = run(killed, root, overrides)
    assert again["resumed_from"] == 2
    # Same devices, same programs, data and randomness by step: bit for bit.
    expected, got = final_params(workdir), final_params(killed)
    assert sorted(got) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert _losses(killed) == _losses(workdir)


def test_bad_apgd_settings_are_named():
    def objective(**changes):
        return objectives.Objective.from_config(load(tiny_overrides("/unused", **changes)))

    with pytest.raises(ValueError, match=r"attack\.method must be one of"):
        objective(**{"attack.method": "fgsm"})
    with pytest.raises(ValueError, match=r"attack\.loss must be one of"):
        objective(**{"attack.method": "pgd", "attack.loss": "dlr"})
    with pytest.raises(ValueError, match=r"attack\.restarts is APGD's"):
        objective(**{"attack.restarts": 3})
    assert objective(**{"attack.method": "apgd", "attack.loss": "dlr"}).attack.loss == "dlr"
    trades = objective(**{"attack.method": "apgd", "objective.name": "trades"})
    assert trades.attack.loss == "kl"
