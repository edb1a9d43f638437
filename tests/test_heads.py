"""FC, l2 and HPM heads against float64 NumPy: every mode, both mixing rules, the EMA update,
the straight-through gradient, smoothness of `soft`, tuple modes, and 1 vs 4 devices."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from platform_support import take_devices

from hpm_jax import models
from hpm_jax.models import MODES, Classifier, FCHead, HPMHead, L2Head, get_model
from hpm_jax.runtime.sharding import data_sharding, make_mesh, replicated

C, D, B = 6, 5, 4  # fewer examples than classes: some classes are always absent from a batch


# ---- independent float64 NumPy references -------------------------------------------------


def np_softmax(z, temperature=1.0):
    z = np.asarray(z, np.float64) / temperature
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_l2(f, p, scale, squared):
    d2 = ((f[:, None, :] - p[None, :, :]) ** 2).sum(-1)  # direct differences, no expansion
    return -scale * (d2 if squared else np.sqrt(d2))


def np_mix(p_ema, assign, f, mixing, m, lam):
    n, s = assign.sum(0), assign.T @ f
    if mixing == "count":
        return (m * p_ema + s) / (m + n)[:, None]
    mixed = p_ema.copy()
    for c in np.flatnonzero(n > 0):
        mixed[c] = lam * p_ema[c] + (1 - lam) * s[c] / n[c]
    return mixed


def np_head(v, f, mode, *, head="hpm", mixing="count", m=10.0, lam=0.5, squared=False, t=1.0):
    """Logits of the head with NumPy variables `v` in `mode`."""
    f = np.asarray(f, np.float64)
    z_fc = f @ v["kernel"] + v["bias"] if "kernel" in v else None
    if head == "fc":
        return z_fc
    scale = np.exp(v["log_scale"])
    if head == "l2" or mode == "ema_l2":
        return np_l2(f, v["ema"], scale, squared)
    if mode == "fc":
        return z_fc
    if mode == "soft":
        assign = np_softmax(z_fc, t)
    else:
        assign = np.eye(z_fc.shape[1])[np.argmax(z_fc, axis=1)]
    return np_l2(f, np_mix(v["ema"], assign, f, mixing, m, lam), scale, squared)


def np_ema(ema, seen, f, labels, beta):
    ema, seen = np.array(ema, np.float64), np.array(seen)
    for c in range(ema.shape[0]):
        rows = f[labels == c]
        if len(rows):
            mu = rows.mean(0)
            ema[c] = mu if seen[c] == 0 else beta * ema[c] + (1 - beta) * mu
            seen[c] += len(rows)
    return ema, seen


# ---- helpers -------------------------------------------------------------------------------


def random_values(seed, *, seen=None):
    rng = np.random.default_rng(seed)
    return {
        "kernel": rng.normal(size=(D, C)),
        "bias": rng.normal(size=C) * 0.1,
        "log_scale": 0.3,
        "ema": rng.normal(size=(C, D)),
        "seen": np.full(C, 7) if seen is None else np.asarray(seen),
    }


def to_variables(v, head):
    """Flax variables holding the NumPy values `v` (float32, as a head stores them)."""
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    fc = {"fc": {"kernel": f32(v["kernel"]), "bias": f32(v["bias"])}}
    if isinstance(head, FCHead):
        return {"params": fc}
    params = {"log_scale": f32(v["log_scale"])}
    if isinstance(head, HPMHead):
        params |= fc
    protos = {"ema": f32(v["ema"]), "seen": jnp.asarray(v["seen"], jnp.int32)}
    variables = {"params": params, "prototypes": protos}
    # The tree must be exactly what init creates.
    want = jax.tree.map(jnp.shape, head.init(jax.random.key(0), jnp.zeros((1, D))))
    assert jax.tree.map(jnp.shape, variables) == want
    return variables


def features(seed, n=B):
    return np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)


HEADS = {
    "fc": (FCHead(C), {"head": "fc"}),
    "l2": (L2Head(C), {"head": "l2"}),
    "l2_squared": (L2Head(C, squared=True), {"head": "l2", "squared": True}),
    "hpm_count": (HPMHead(C), {}),
    "hpm_convex": (HPMHead(C, mixing="convex", lam=0.3), {"mixing": "convex", "lam": 0.3}),
    "hpm_squared_t2": (
        HPMHead(C, squared=True, pseudo_count=2.0, ste_temperature=2.0),
        {"squared": True, "m": 2.0, "t": 2.0},
    ),
}


# ---- forward -------------------------------------------------------------------------------


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_and_mode_matches_numpy(name, mode, jit):
    """Every mode a head declares matches NumPy; every other mode is refused (an FC head
    asked for "ema_l2" used to answer with its FC logits)."""
    head, options = HEADS[name]
    v, f = random_values(0), features(1)
    apply = functools.partial(head.apply, mode=mode)
    apply = jax.jit(apply) if jit else apply
    if ("hpm" if mode == "ste" else mode) not in type(head).logits_modes:
        with pytest.raises(ValueError, match=f"{type(head).__name__} has no logits mode"):
            apply(to_variables(v, head), jnp.asarray(f))
        return
    got = apply(to_variables(v, head), jnp.asarray(f))
    want = np_head(v, f, "hpm" if mode == "ste" else mode, **options)
    assert got.shape == (B, C) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_hpm_batch_really_has_absent_and_shared_classes():
    # The forward test above is only meaningful if some classes get no example and, for the
    # mixing rules, some get several: check that on its data.
    v, f = random_values(0), features(1)
    counts = np.bincount(np.argmax(f @ v["kernel"] + v["bias"], 1), minlength=C)
    assert (counts == 0).any() and (counts >= 2).any()


def test_count_and_convex_mixing_by_hand():
    # C = 3, D = 1, W = identity-like on a 1-D feature: assignments chosen by the bias.
    head_count = HPMHead(3, pseudo_count=2.0, squared=True, init_scale=1.0)
    head_convex = HPMHead(3, mixing="convex", lam=0.25, squared=True)
    v = {
        "kernel": np.zeros((1, 3)),
        "bias": np.array([5.0, 0.0, 0.0]),  # every example goes to class 0
        "log_scale": 0.0,
        "ema": np.array([[1.0], [2.0], [3.0]]),
        "seen": np.array([1, 1, 1]),
    }
    f = np.array([[4.0], [6.0]], np.float32)  # n = (2, 0, 0), S = (10, 0, 0)
    variables = {
        "params": {"fc": {"kernel": jnp.zeros((1, 3)), "bias": jnp.asarray(v["bias"])}}
        | {"log_scale": jnp.float32(0.0)},
        "prototypes": {"ema": jnp.asarray(v["ema"], jnp.float32), "seen": jnp.ones(3, jnp.int32)},
    }
    # count: P0 = (2*1 + 10) / (2 + 2) = 3; absent classes keep P_ema (m P / m).
    p_count = np.array([3.0, 2.0, 3.0])
    # convex: P0 = 0.25*1 + 0.75*5 = 4; absent classes P_ema.
    p_convex = np.array([4.0, 2.0, 3.0])
    for head, p in ((head_count, p_count), (head_convex, p_convex)):
        got = head.apply(variables, jnp.asarray(f))
        np.testing.assert_allclose(got, -((f - p[None, :]) ** 2), rtol=1e-6)


def test_tuple_modes_equal_single_calls_and_update_the_ema_once():
    head = HPMHead(C, mixing="convex", ema_decay=0.9)
    v, f = random_values(2, seen=[0, 3, 3, 0, 3, 3]), features(3, n=8)
    labels = jnp.array([0, 1, 1, 2, 5, 5, 5, -1])  # -1: left out of the class means
    variables = to_variables(v, head)
    modes = ("hpm", "fc", "soft", "ema_l2", "ste")
    run = jax.jit(
        lambda var, f, y, mode: head.apply(var, f, y, train=True, mode=mode, mutable=True),
        static_argnums=3,
    )
    out, updates = run(variables, f, labels, modes)
    assert set(out) == set(modes)
    for mode in modes:
        single, single_updates = run(variables, f, labels, mode)
        np.testing.assert_array_equal(out[mode], single)
        jax.tree.map(np.testing.assert_array_equal, updates, single_updates)
    ema, seen = np_ema(v["ema"], v["seen"], f.astype(np.float64), np.asarray(labels), 0.9)
    np.testing.assert_allclose(updates["prototypes"]["ema"], ema, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(updates["prototypes"]["seen"], seen)  # added once, not 5x


def test_heads_declare_their_modes_the_judge_and_the_batch_coupled_ones():
    want = {
        FCHead: (("fc",), "fc", set()),
        L2Head: (("ema_l2",), "ema_l2", set()),
        HPMHead: (("fc", "ema_l2", "soft", "hpm"), "hpm", {"soft", "hpm"}),
    }
    for cls, (modes, judge, coupled) in want.items():
        assert (cls.logits_modes, cls.judge_mode, set(cls.coupled_modes)) == (modes, judge, coupled)
        assert judge in modes and set(coupled) <= set(modes) and set(modes) <= set(MODES)
        # Declarations are class attributes, not module fields (get_model routes by field).
        assert not {"logits_modes", "judge_mode", "coupled_modes"} & set(cls.__dataclass_fields__)
    for name, cls in models.HEADS.items():
        model = get_model("small_cnn", num_classes=C, head=name)
        assert models.head_modes(model) == cls.logits_modes
        assert models.judge_mode(model) == cls.judge_mode
        assert [models.is_coupled(model, m) for m in cls.logits_modes] == [
            m in want[cls][2] for m in want[cls][0]
        ]
    hpm = get_model("small_cnn", num_classes=C, head="hpm")
    assert models.is_coupled(hpm, "ste")  # the alias of "hpm"
    fc = get_model("small_cnn", num_classes=C)
    with pytest.raises(ValueError, match=r"FCHead has no logits mode.*'ema_l2'.*\['fc'\]"):
        models.is_coupled(fc, "ema_l2")
    with pytest.raises(ValueError, match="does not declare its modes"):
        models.head_modes(Classifier(backbone=fc.backbone, head=_UndeclaredHead()))


class _UndeclaredHead(nn.Module):
    @nn.compact
    def __call__(self, features, labels=None, *, train=False, mode=None):
        return nn.Dense(C)(features)


@pytest.mark.parametrize("name", list(HEADS))
def test_the_default_mode_is_the_judge_mode_and_tuples_of_own_modes_work(name):
    head, _ = HEADS[name]
    variables = to_variables(random_values(4), head)
    f = jnp.asarray(features(5))
    judge = type(head).judge_mode
    np.testing.assert_array_equal(head.apply(variables, f), head.apply(variables, f, mode=judge))
    out = head.apply(variables, f, mode=type(head).logits_modes)
    assert set(out) == set(type(head).logits_modes)
    for mode, logits in out.items():
        np.testing.assert_array_equal(logits, head.apply(variables, f, mode=mode))
    missing = [m for m in ("fc", "ema_l2", "soft", "hpm") if m not in type(head).logits_modes]
    if missing:  # one missing mode in a tuple refuses the whole call
        with pytest.raises(ValueError, match=repr(missing[0])):
            head.apply(variables, f, mode=(judge, missing[0]))


# ---- the EMA update ------------------------------------------------------------------------


@pytest.mark.parametrize("head", [L2Head(C, ema_decay=0.8), HPMHead(C, ema_decay=0.8)])
def test_ema_first_observation_decay_and_absent_classes(head):
    v = random_values(6, seen=[0, 0, 5, 5, 1, 0])
    variables = to_variables(v, head)
    step = jax.jit(lambda var, f, y: head.apply(var, f, y, train=True, mutable=["prototypes"]))
    f1, y1 = features(7, n=6), np.array([0, 0, 2, 3, 3, 3])  # classes 1, 4, 5 absent
    f2, y2 = features(8, n=4), np.array([0, 1, 2, 2])  # class 0 now seen: decays
    logits, updates = step(variables, f1, y1)
    # Logits use the stored prototypes, not this batch's update.
    np.testing.assert_allclose(logits, head.apply(variables, f1), rtol=1e-6)
    assert not np.allclose(logits, head.apply(variables | updates, f1), rtol=1e-3)
    ema1, seen1 = np_ema(v["ema"], v["seen"], f1.astype(np.float64), y1, 0.8)
    np.testing.assert_allclose(updates["prototypes"]["ema"], ema1, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(updates["prototypes"]["seen"], seen1)
    # First observation sets the class mean; absent classes are untouched (bitwise).
    np.testing.assert_allclose(updates["prototypes"]["ema"][0], f1[:2].mean(0), rtol=1e-6)
    for c in (1, 4, 5):
        np.testing.assert_array_equal(
            updates["prototypes"]["ema"][c], variables["prototypes"]["ema"][c]
        )

    _, updates2 = step(variables | updates, f2, y2)
    ema2, seen2 = np_ema(ema1, seen1, f2.astype(np.float64), y2, 0.8)
    np.testing.assert_allclose(updates2["prototypes"]["ema"], ema2, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(updates2["prototypes"]["seen"], seen2)
    want0 = 0.8 * f1[:2].mean(0) + 0.2 * f2[0]
    np.testing.assert_allclose(updates2["prototypes"]["ema"][0], want0, rtol=1e-6)


def test_no_update_in_eval_mode_or_with_an_immutable_collection():
    head = HPMHead(C)
    variables = to_variables(random_values(9), head)
    f, y = jnp.asarray(features(10)), jnp.arange(B)
    _, updates = head.apply(variables, f, y, train=False, mutable=["prototypes"])
    jax.tree.map(np.testing.assert_array_equal, updates["prototypes"], variables["prototypes"])
    # Training without a mutable `prototypes` keeps them fixed and needs no labels.
    head.apply(variables, f, train=True)


def test_ema_gets_no_gradient_and_stops_feature_gradients():
    head = L2Head(C)
    variables = to_variables(random_values(11), head)
    f, y = jnp.asarray(features(12)), jnp.arange(B)

    def updated_ema_sum(f):
        _, updates = head.apply(variables, f, y, train=True, mutable=["prototypes"])
        return updates["prototypes"]["ema"].sum()

    np.testing.assert_array_equal(jax.grad(updated_ema_sum)(f), 0.0)


# ---- gradients -----------------------------------------------------------------------------


def test_ste_gradient_is_the_softmax_jacobian_chain_rule():
    # d(sum w * hpm_logits) / d bias = sum_i J_i^T dL/dA_i with J_i = (diag p - p p^T) / T,
    # dL/dA by central differences of the NumPy reference with A continuous.
    t, m = 1.5, 3.0
    head = HPMHead(C, pseudo_count=m, ste_temperature=t)
    v, f = random_values(13), features(14)
    w = np.random.default_rng(15).normal(size=(B, C))
    variables = to_variables(v, head)

    def loss(params):
        return jnp.sum(w * head.apply(variables | {"params": params}, jnp.asarray(f)))

    got = jax.grad(loss)(variables["params"])["fc"]["bias"]

    f64 = f.astype(np.float64)
    z = f64 @ v["kernel"] + v["bias"]
    assign = np.eye(C)[np.argmax(z, 1)]
    scale = np.exp(v["log_scale"])
    loss_of_a = lambda a: np.sum(
        w * np_l2(f64, np_mix(v["ema"], a, f64, "count", m, 0), scale, False)
    )
    eps, dl_da = 1e-6, np.zeros((B, C))
    for i in range(B):
        for c in range(C):
            step = np.zeros((B, C))
            step[i, c] = eps
            dl_da[i, c] = (loss_of_a(assign + step) - loss_of_a(assign - step)) / (2 * eps)
    p = np_softmax(z, t)
    want = sum((np.diag(p[i]) - np.outer(p[i], p[i])) / t @ dl_da[i] for i in range(B))
    assert np.abs(want).max() > 1e-2  # a real gradient, not a vacuous zero
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mixing", ["count", "convex"])
@pytest.mark.parametrize("mode", ["hpm", "soft", "ema_l2"])
def test_gradients_are_finite_with_empty_classes_and_zero_distances(mixing, mode):
    head = HPMHead(C, mixing=mixing)
    v = random_values(16)
    f = features(17)
    v["ema"][1] = f[0]  # a feature exactly on its prototype: distance 0
    variables = to_variables(v, head)

    def loss(params, f):
        return head.apply(variables | {"params": params}, f, mode=mode).sum()

    grads = jax.grad(loss, argnums=(0, 1))(variables["params"], jnp.asarray(f))
    for g in jax.tree.leaves(grads):
        assert np.isfinite(g).all()


def test_soft_is_smooth_where_hpm_jumps():
    # z_fc = f (identity kernel): example 0 sits on the boundary between classes 0 and 1.
    head = HPMHead(3, pseudo_count=1.0)
    variables = {
        "params": {"fc": {"kernel": jnp.eye(3), "bias": jnp.zeros(3)}, "log_scale": 0.0},
        "prototypes": {"ema": jnp.zeros((3, 3)), "seen": jnp.ones(3, jnp.int32)},
    }
    others = jnp.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0]])
    eps = 1e-5

    def logits(mode, sign):
        f0 = jnp.array([[1.0, 1.0, -1.0]]) + sign * eps * jnp.array([[1.0, -1.0, 0.0]])
        return head.apply(variables, jnp.concatenate([f0, others]), mode=mode)

    hard_jump = np.abs(logits("hpm", 1) - logits("hpm", -1)).max()
    soft_change = np.abs(logits("soft", 1) - logits("soft", -1)).max()
    assert hard_jump > 0.1  # the argmax flips: example 0 moves to the other batch prototype
    assert soft_change < 1e-3


# ---- sharding ------------------------------------------------------------------------------


def _train_step(model, variables, x, y):
    def loss_fn(params):
        out, updates = model.apply(
            variables | {"params": params},
            x,
            y,
            train=True,
            mode=("hpm", "fc"),
            mutable=["batch_stats", "prototypes"],
        )
        ce = optax.softmax_cross_entropy_with_integer_labels
        return ce(out["hpm"], y).mean() + ce(out["fc"], y).mean(), (out, updates)

    (loss, (out, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    return loss, out, updates, grads


@pytest.mark.slow
def test_same_results_on_1_and_4_devices():
    model = get_model("small_cnn", num_classes=C, head="hpm", channels=(8, 8, 8), num_features=D)
    x = jax.random.uniform(jax.random.key(0), (16, 28, 28, 1))
    y = jnp.arange(16) % C
    variables = model.init(jax.random.key(1), x[:1])
    ema = jax.random.normal(jax.random.key(2), (C, D))
    variables["prototypes"]["head"] = {"ema": ema, "seen": jnp.array([0, 2, 2, 2, 2, 2])}
    results = []
    for n in (1, 4):
        mesh = make_mesh(take_devices(n))
        batch = jax.device_put((x, y), data_sharding(mesh))
        step = jax.jit(functools.partial(_train_step, model))
        results.append(step(jax.device_put(variables, replicated(mesh)), *batch))
    (loss1, out1, upd1, grads1), (loss4, out4, upd4, grads4) = results
    assert out4["hpm"].sharding.spec[0] == "data"  # really split over the devices
    np.testing.assert_allclose(loss1, loss4, rtol=1e-5)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    jax.tree.map(close, (out1, upd1, grads1), (out4, upd4, grads4))
    np.testing.assert_array_equal(out1["fc"].argmax(1), out4["fc"].argmax(1))
    np.testing.assert_array_equal(upd1["prototypes"]["head"]["seen"], [3, 5, 5, 5, 4, 4])


# ---- errors --------------------------------------------------------------------------------


def test_errors_name_the_problem_and_the_fix():
    head = HPMHead(C)
    variables = to_variables(random_values(18), head)
    f = jnp.asarray(features(19))
    with pytest.raises(ValueError, match="ema_l2"):
        head.apply(variables, f, mode="msa")
    with pytest.raises(TypeError, match="tuple of names"):
        head.apply(variables, f, mode=())
    with pytest.raises(ValueError, match="pass labels"):
        head.apply(variables, f, train=True, mutable=["prototypes"])
    with pytest.raises(TypeError, match="integer class indices"):
        head.apply(variables, f, jnp.zeros(B), train=True, mutable=["prototypes"])
    with pytest.raises(ValueError, match="with_head"):
        head.apply({"params": variables["params"]}, f)
    with pytest.raises(ValueError, match="convex"):
        HPMHead(C, mixing="mean")
    for bad in ({"ema_decay": 1.0}, {"pseudo_count": 0.0}, {"lam": 1.5}, {"ste_temperature": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            HPMHead(C, **bad)
    with pytest.raises(ValueError, match="init_scale"):
        L2Head(C, init_scale=-1.0)
