"""Registry, classifier contract and input validation; ResNet-18 and the small CNN
forward and backward under jit on 1 and 4 devices (other backbones have their own files)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_checks import grads_on_devices

from hpm_jax.models import BACKBONES, get_model


@pytest.mark.parametrize(
    ("name", "kwargs", "shape", "features"),
    [
        ("small_cnn", {"in_channels": 1, "image_size": 28}, (8, 28, 28, 1), 256),
        ("small_cnn", {"in_channels": 3, "image_size": 32}, (8, 32, 32, 3), 256),
        ("resnet18", {}, (8, 32, 32, 3), 512),
    ],
)
@pytest.mark.slow
def test_forward_backward_same_on_1_and_4_devices(name, kwargs, shape, features):
    model = get_model(name, num_classes=10, **kwargs)
    x = jax.random.uniform(jax.random.key(0), shape)
    y = jnp.arange(shape[0]) % 10
    variables = model.init(jax.random.key(1), x[:1])
    assert model.apply(variables, x, method="features").shape == (shape[0], features)
    assert model.apply(variables, x).shape == (shape[0], 10)

    loss1, grads1, stats1 = grads_on_devices(model, variables, x, y, num_devices=1)
    loss4, grads4, stats4 = grads_on_devices(model, variables, x, y, num_devices=4)
    assert np.isfinite(loss1)
    np.testing.assert_allclose(loss1, loss4, rtol=1e-5)
    # Compared to the gradients' scale: on this batch ResNet-18's float32 gradient is itself
    # ~3e-3 off its float64 value on 1 and on 4 devices alike (see the float64 test below).
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads1))
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=5e-3 * scale)
    jax.tree.map(close, grads1, grads4)
    same_stats = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    jax.tree.map(same_stats, stats1, stats4)  # batch statistics are over the global batch


@pytest.mark.slow
def test_sharding_changes_nothing_but_rounding_in_float64():
    with jax.enable_x64(True):
        model = get_model("resnet18", num_classes=10, dtype=jnp.float64)
        x = jax.random.uniform(jax.random.key(0), (8, 32, 32, 3), jnp.float64)
        y = jnp.arange(8) % 10
        variables = jax.tree.map(
            lambda a: a.astype(jnp.float64), model.init(jax.random.key(1), x[:1])
        )
        _, grads1, _ = grads_on_devices(model, variables, x, y, num_devices=1)
        _, grads4, _ = grads_on_devices(model, variables, x, y, num_devices=4)
        scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads1))
        # Backbones hand float32 features to the head, so 1e-7, not float64's 1e-15.
        close = lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-7 * scale)
        jax.tree.map(close, grads1, grads4)


def test_train_mode_uses_batch_statistics_and_eval_mode_running_ones():
    model = get_model("small_cnn", num_classes=10)
    x = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
    variables = model.init(jax.random.key(1), x)
    eval_logits = model.apply(variables, x)
    train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(eval_logits, train_logits)
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


def test_registry_errors_name_the_choices():
    with pytest.raises(ValueError, match="resnet18"):
        get_model("resnet19", num_classes=10)
    with pytest.raises(ValueError, match="head"):
        get_model("resnet18", num_classes=10, head="svm")
    with pytest.raises(ValueError, match="num_classes"):
        get_model("resnet18", num_classes=1)
    with pytest.raises(TypeError, match="options are"):
        get_model("resnet18", num_classes=10, widen_factor=3)
    assert set(BACKBONES) == {
        "small_cnn", "resnet18", "preact_resnet18", "wide_resnet", "dm_wide_resnet", "resnet50"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("x", "error", "fix"),
    [
        (np.zeros((28, 28, 1), np.float32), ValueError, "x\\[None\\]"),
        (np.zeros((2, 1, 28, 28), np.float32), ValueError, "transpose"),
        (np.zeros((2, 28, 28, 1), np.uint8), TypeError, "/ 255"),
    ],
)
def test_bad_images_get_errors_that_say_the_fix(x, error, fix):
    model = get_model("small_cnn", num_classes=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    with pytest.raises(error, match=fix):
        model.apply(variables, x)


def test_get_model_routes_options_to_the_head_or_the_backbone():
    from hpm_jax.models import FCHead, HPMHead, L2Head

    model = get_model(
        "small_cnn", num_classes=10, head="hpm", mixing="convex", lam=0.2, in_channels=3
    )
    assert isinstance(model.head, HPMHead) and model.head.num_classes == 10
    assert (model.head.mixing, model.head.lam, model.backbone.in_channels) == ("convex", 0.2, 3)
    l2 = get_model("small_cnn", num_classes=5, head="l2", squared=True, num_features=32)
    assert isinstance(l2.head, L2Head) and l2.head.squared and l2.backbone.num_features == 32
    assert isinstance(get_model("small_cnn", num_classes=10).head, FCHead)
    # An option that fits neither lists both sets; a head option on the FC head fits neither.
    with pytest.raises(TypeError, match=r"options are .*in_channels.*\(backbone\).*mixing"):
        get_model("small_cnn", num_classes=10, head="hpm", mixin="count")
    with pytest.raises(TypeError, match=r"unknown option.*'mixing'"):
        get_model("small_cnn", num_classes=10, head="fc", mixing="count")
    with pytest.raises(ValueError, match="choose one of"):
        get_model("small_cnn", num_classes=10, head="hpm", mixing="mean")


def test_classifier_passes_labels_and_modes_to_the_head():
    model = get_model("small_cnn", num_classes=10, head="hpm", channels=(8, 8, 8))
    x = jax.random.uniform(jax.random.key(0), (6, 28, 28, 1))
    variables = model.init(jax.random.key(1), x[:1])
    feats = model.apply(variables, x, method="features")
    head_vars = {k: v["head"] for k, v in variables.items() if "head" in v}
    out = model.apply(variables, x, mode=("fc", "ema_l2"))
    for mode, logits in out.items():
        np.testing.assert_allclose(
            logits, model.head.apply(head_vars, feats, mode=mode), rtol=1e-6, atol=1e-6
        )
    y = jnp.arange(6)
    _, updates = model.apply(variables, x, y, train=True, mutable=["batch_stats", "prototypes"])
    np.testing.assert_array_equal(updates["prototypes"]["head"]["seen"], [1] * 6 + [0] * 4)


# ---- logits functions and the training forward (hpm_jax.models.logits) --------------------


def _hpm_with_prototypes():
    """A small HPM classifier whose prototypes and running statistics are not init's: eval
    and train mode, and every head mode, give different logits."""
    model = get_model("small_cnn", num_classes=4, head="hpm", channels=(4, 8), num_features=8)
    x = jax.random.uniform(jax.random.key(0), (6, 28, 28, 1))
    variables = jax.tree.map(lambda a: a, model.init(jax.random.key(1), x[:1]))
    rng = np.random.default_rng(0)
    variables["prototypes"]["head"]["ema"] = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
    variables["prototypes"]["head"]["seen"] = jnp.full(4, 3, jnp.int32)
    variables["batch_stats"] = jax.tree.map(
        lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape), a.dtype), variables["batch_stats"]
    )
    return model, variables, x


def test_logits_fns_are_exactly_model_apply_in_every_mode():
    from hpm_jax.models import head_logits_fn, head_modes, logits_fn

    model, variables, x = _hpm_with_prototypes()
    feats = model.apply(variables, x, method="features")
    outputs = {}
    for mode in head_modes(model):
        want = model.apply(variables, x, mode=mode)
        np.testing.assert_array_equal(logits_fn(model, variables, mode=mode)(x), want)
        # The head alone on the features: what sensitivity.head_logits_fn computed by hand.
        head_want = model.apply(
            variables, feats, method=lambda m, f, mode=mode: m.head(f, mode=mode)
        )
        head_got = head_logits_fn(model, variables, mode=mode)(feats)
        np.testing.assert_array_equal(head_got, head_want)
        outputs[mode] = np.asarray(want)
    # Distinct modes are distinct logits, so the checks above could tell them apart.
    assert all(not np.allclose(outputs[a], outputs[b]) for a in outputs for b in outputs if a < b)
    np.testing.assert_array_equal(logits_fn(model, variables)(x), outputs["hpm"])  # own output
    np.testing.assert_array_equal(logits_fn(model, variables, mode="ste")(x), outputs["hpm"])
    # Same logits, same function: None and "ste" are "hpm" (one compiled program for all).
    assert logits_fn(model, variables).func == logits_fn(model, variables, mode="ste").func


def test_train_mode_logits_fn_uses_batch_statistics_and_changes_nothing():
    from hpm_jax.models import logits_fn

    model, variables, x = _hpm_with_prototypes()
    before = jax.tree.map(np.array, variables)
    for mode in ("fc", "hpm"):
        fn = logits_fn(model, variables, mode=mode, train=True)
        got = fn(x)
        want, _ = model.apply(variables, x, train=True, mode=mode, mutable=["batch_stats"])
        np.testing.assert_array_equal(got, want)
        assert not np.allclose(got, model.apply(variables, x, mode=mode))  # not eval mode
        np.testing.assert_array_equal(fn(x), got)  # no statistics carried between calls
        assert jax.tree.leaves(fn) == jax.tree.leaves(variables)  # the leaves are the weights
    jax.tree.map(np.testing.assert_array_equal, variables, before)


def test_logits_fns_share_one_function_for_hpm_and_ste():
    from hpm_jax.models import logits_fn, logits_fns

    model, variables, x = _hpm_with_prototypes()
    fns = logits_fns(model, variables, ["fc", "hpm", "ste", "soft"])
    assert list(fns) == ["fc", "hpm", "ste", "soft"]
    assert fns["ste"] is fns["hpm"] and fns["fc"] is not fns["hpm"]
    for mode, fn in fns.items():
        assert fn.func == logits_fn(model, variables, mode=mode).func
        np.testing.assert_array_equal(fn(x), model.apply(variables, x, mode=mode))
    alias_first = logits_fns(model, variables, ["ste", "hpm"])
    assert alias_first["hpm"] is alias_first["ste"]
    trained = logits_fns(model, variables, ["hpm"], train=True)["hpm"]
    assert trained.func == logits_fn(model, variables, mode="hpm", train=True).func


def test_an_fc_classifier_refuses_modes_it_does_not_have():
    from hpm_jax.models import forward, head_logits_fn, logits_fn, logits_fns

    model = get_model("small_cnn", num_classes=4, channels=(4, 8), num_features=8)
    x = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
    variables = model.init(jax.random.key(1), x[:1])
    feats = model.apply(variables, x, method="features")
    np.testing.assert_array_equal(logits_fn(model, variables)(x), model.apply(variables, x))
    for mode in ("ema_l2", "soft", "hpm", "ste"):
        match = rf"FCHead has no logits mode.*'{mode}'.*\['fc'\]"
        with pytest.raises(ValueError, match=match):
            logits_fn(model, variables, mode=mode)
        with pytest.raises(ValueError, match=match):
            logits_fns(model, variables, ["fc", mode])
        with pytest.raises(ValueError, match=match):
            head_logits_fn(model, variables, mode=mode)
        with pytest.raises(ValueError, match=match):
            forward(model, variables, x, None, train=False, modes=("fc", mode))
        with pytest.raises(ValueError, match=match):
            model.apply(variables, x, mode=mode)
        with pytest.raises(ValueError, match=match):
            model.apply(variables, feats, mode=mode, method="head_logits")


def test_forward_is_one_train_mode_apply_with_its_updates():
    from hpm_jax.models import forward

    model, variables, x = _hpm_with_prototypes()
    y = jnp.arange(6) % 4
    mutable = ["batch_stats", "prototypes"]
    out, updates = forward(model, variables, x, y, train=True, modes=("hpm", "fc"),
                           mutable=mutable)  # fmt: skip
    want, want_updates = model.apply(variables, x, y, train=True, mode=("hpm", "fc"),
                                     mutable=mutable)  # fmt: skip
    assert set(out) == {"hpm", "fc"}
    for mode in out:
        np.testing.assert_array_equal(out[mode], want[mode])
    jax.tree.map(np.testing.assert_array_equal, updates, dict(want_updates))
    single, _ = forward(model, variables, x, None, train=False, modes=("ema_l2",))
    np.testing.assert_array_equal(single["ema_l2"], model.apply(variables, x, mode="ema_l2"))
    # Collections a model lacks are skipped: an FC model has no prototypes.
    fc = get_model("small_cnn", num_classes=4, channels=(4, 8), num_features=8)
    fc_vars = fc.init(jax.random.key(1), x[:1])
    _, fc_updates = forward(fc, fc_vars, x, y, train=True, modes=("fc",), mutable=mutable)
    assert set(fc_updates) == {"batch_stats"}
