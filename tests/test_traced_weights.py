"""Model weights are data: pytree logits functions enter the attacks as traced arguments.

A second call with new variables of the same shapes compiles nothing and uses the new weights;
the compiled program's size does not grow with the parameter count (a closure's does).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from platform_support import take_devices
from train_support import compiles

from hpm_jax.attacks import (
    AutoAttack,
    apgd,
    apgd_steps,
    apgd_targeted,
    contract,
    driver,
    fab_targeted,
    mixed_surrogate_attack,
    pgd,
    square,
)
from hpm_jax.attacks.apgd_attack import ApgdSteps
from hpm_jax.attacks.apgd_steps import ApgdConfig
from hpm_jax.models import forward, get_model, head_logits_fn, logits_fn, logits_fns

pytestmark = pytest.mark.slow  # whole chains with weights as arguments

N, SIZE, EPS = 8, 8, 1e-3  # a small eps: most points stay robust under the first weights


@functools.lru_cache(maxsize=1)
def _setup():
    model = get_model("small_cnn", num_classes=4, head="hpm", in_channels=1, image_size=SIZE,
                      channels=(4, 8), num_features=8)  # fmt: skip
    x = np.random.default_rng(0).uniform(0, 1, (N, SIZE, SIZE, 1)).astype(np.float32)
    first = model.init(jax.random.key(0), jnp.asarray(x[:1]))
    # Other weights of the same shapes, with other predictions: the FC layer negated (its bias
    # is zero at init, so the logits are negated and every clean prediction changes).
    second = jax.tree_util.tree_map(lambda a: a, first)
    second["params"]["head"]["fc"]["kernel"] = -first["params"]["head"]["fc"]["kernel"]
    y = np.asarray(jnp.argmax(model.apply(first, jnp.asarray(x), mode="fc"), 1), np.int32)
    return model, first, second, x, y


ATTACKS = {
    "apgd-host": lambda f, x, y: apgd(f, x, y, key=jax.random.key(1), eps=EPS, n_iter=3,
                                      loop="host"),
    "apgd-lax": lambda f, x, y: apgd(f, x, y, key=jax.random.key(1), eps=EPS, n_iter=3,
                                     loop="lax"),
    "apgd-t": lambda f, x, y: apgd_targeted(f, x, y, key=jax.random.key(1), eps=EPS, n_iter=3,
                                            n_target_classes=2),
    "fab-t": lambda f, x, y: fab_targeted(f, x, y, key=jax.random.key(1), eps=EPS, n_iter=3,
                                          n_target_classes=2),
    "square": lambda f, x, y: square(f, x, y, key=jax.random.key(1), eps=EPS, n_queries=5),
    "pgd": lambda f, x, y: pgd.pgd(f, x, y, key=jax.random.key(1), eps=EPS, step_size=0.02,
                                   num_steps=3),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ATTACKS))
def test_new_variables_of_the_same_shapes_compile_nothing_and_are_used(name):
    model, first, second, x, y = _setup()
    attack = ATTACKS[name]
    fn_first = logits_fn(model, first, mode="fc")
    before = attack(fn_first, x, y)
    jax.block_until_ready(before)
    results = []
    names = compiles(lambda: results.append(jax.block_until_ready(
        attack(jax.tree_util.Partial(fn_first.func, second), x, y))))  # fmt: skip
    assert names == [], names
    # The second call saw the second weights (a stale constant would repeat the first
    # verdicts): the negated FC head (zero bias) ranks the labels last, so nothing is robust.
    assert np.mean(before.robust) >= 0.5
    assert not np.any(results[0].robust)


def test_the_chain_and_msa_compile_nothing_for_new_variables():
    model, first, second, x, y = _setup()
    options = {
        "apgd-ce": {"n_iter": 3},
        "apgd-t": {"n_iter": 3, "n_target_classes": 2},
        "fab-t": {"n_iter": 3, "n_target_classes": 2},
        "square": {"n_queries": 5},
    }

    def evaluate(variables):
        target = logits_fn(model, variables)
        surrogates = {m: logits_fn(model, variables, mode=m) for m in ("fc", "soft")}
        aa = AutoAttack(logits_fn(model, variables, mode="fc"), eps=EPS, attack_options=options,
                        log=None).run(x, y, batch_size=N)  # fmt: skip
        msa = mixed_surrogate_attack(target, surrogates, x, y, eps=EPS, batch_size=N,
                                     attack_options=options, log=None)  # fmt: skip
        return aa, msa

    aa_first, _ = evaluate(first)
    results = []
    names = compiles(lambda: results.append(evaluate(second)))
    assert names == [], names
    aa_second, _ = results[0]
    assert aa_first.clean_accuracy == 1.0 and aa_second.clean_accuracy == 0.0


def test_every_kind_of_logits_function_takes_the_weights_as_traced_leaves():
    """Train-mode, head-only and per-mode dicts of logits functions are pytrees of the
    variables like eval mode's: a jitted consumer compiles nothing for new weights, and uses
    them. (A closure over the variables would be recompiled, or would keep the first ones.)"""
    model, first, second, x, _ = _setup()
    feats = model.apply(first, jnp.asarray(x), method="features")
    makers = {
        "train": (lambda v: logits_fn(model, v, mode="fc", train=True), x),
        "head": (lambda v: head_logits_fn(model, v, mode="fc"), feats),
        "dict": (lambda v: logits_fns(model, v, ("fc", "hpm", "ste")), x),
    }

    @jax.jit
    def evaluate(fns, inputs):
        return jax.tree.map(lambda f: f(inputs), fns, is_leaf=callable)

    for name, (make, inputs) in makers.items():
        fn = make(first)
        copies = len(fn) if name == "dict" else 1
        assert jax.tree.leaves(fn) == jax.tree.leaves([first] * copies), name
        out_first = evaluate(fn, inputs)
        results = []

        def run_second(make=make, inputs=inputs, results=results):
            results.append(jax.block_until_ready(evaluate(make(second), inputs)))

        names = compiles(run_second)
        assert names == [], (name, names)
        fc_first = out_first["fc"] if name == "dict" else out_first
        fc_second = results[0]["fc"] if name == "dict" else results[0]
        # The second weights negate the FC layer (zero bias): the FC logits are negated.
        np.testing.assert_allclose(fc_second, -fc_first, rtol=1e-6, atol=1e-6)


def test_the_training_forward_is_differentiable_in_the_variables():
    model, first, _, x, y = _setup()

    def loss(params):
        out, _ = forward(model, {**first, "params": params}, jnp.asarray(x), jnp.asarray(y),
                         train=True, modes=("hpm", "fc"), mutable=("batch_stats",))  # fmt: skip
        return out["hpm"].sum() + out["fc"].sum()

    grads = jax.grad(loss)(first["params"])
    assert float(jnp.abs(grads["head"]["fc"]["kernel"]).sum()) > 0


def _mlp(params, x):
    hidden = jax.nn.relu(x.reshape(x.shape[0], -1) @ params["w1"])
    return hidden @ params["w2"]


def _lowered_size(fn, width):
    x = jnp.full((N, SIZE, SIZE, 1), 0.5)
    y = jnp.zeros(N, jnp.int32)
    attack = ApgdSteps(ApgdConfig(norm="Linf", loss="ce"), n_restarts=1)
    loss = contract.traced(fn)
    lowered = driver.lower(attack, (loss, loss), dict(rho=jnp.float32(0.75)), x, y,
                           jnp.full((N,), EPS), jax.random.key(0),
                           phase=driver.Phase(5, apgd_steps.schedule(5, "Linf")))  # fmt: skip
    return len(lowered.as_text())


def test_compiled_program_size_does_not_grow_with_the_parameter_count():
    sizes = {}
    for width in (16, 1024):
        rng = np.random.default_rng(width)
        params = {
            "w1": jnp.asarray(rng.normal(size=(SIZE * SIZE, width)), jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(width, 4)), jnp.float32),
        }
        closure = lambda v, p=params: _mlp(p, v)
        sizes[width] = (
            _lowered_size(jax.tree_util.Partial(_mlp, params), width),
            _lowered_size(closure, width),
        )
    traced_small, closure_small = sizes[16]
    traced_large, closure_large = sizes[1024]
    # Traced: the same program text up to the shapes written in it (a few characters each).
    assert traced_large < 1.05 * traced_small, sizes
    # A closure bakes its 68 * 1024 float32 weights (272 kB) into the program as constants.
    weight_bytes = (SIZE * SIZE + 4) * 1024 * 4
    assert closure_large - closure_small > weight_bytes, sizes


def test_weights_on_one_device_attack_a_batch_sharded_over_four():
    """A model restored onto one device (as load_model does) and a batch sharded over the
    mesh: attacks place the weights beside the batch; the chain and MSA place them once."""
    model, first, _, x, y = _setup()
    device = jax.devices()[0]
    committed = jax.device_put(first, device)
    fn = logits_fn(model, committed, mode="fc")
    mesh = jax.sharding.Mesh(np.asarray(take_devices(4)), ("data",))
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    xs, ys = jax.device_put((x, y), batch)
    sharded = apgd(fn, xs, ys, key=jax.random.key(1), eps=EPS, n_iter=3)
    single = apgd(fn, jax.device_put(x, device), jax.device_put(y, device),
                  key=jax.random.key(1), eps=EPS, n_iter=3)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(sharded.robust), np.asarray(single.robust))
    placed = contract.place(fn, mesh)
    assert placed.args[0]["params"]["head"]["fc"]["kernel"].sharding.device_set == set(
        take_devices(4)
    )
    kernel = placed.args[0]["params"]["head"]["fc"]["kernel"]
    assert contract.place(placed, mesh).args[0]["params"]["head"]["fc"]["kernel"] is kernel  # once
    report = mixed_surrogate_attack(
        fn, {"fc": fn}, x, y, eps=EPS, batch_size=N, version=["apgd-ce"],
        attack_options={"apgd-ce": {"n_iter": 3}}, mesh=mesh, log=None,
    )  # fmt: skip
    assert report.chain.num_devices == 4 and report.clean_accuracy == 1.0
