"""with_head (FC variables -> l2/HPM variables), init_prototypes against NumPy class means with
a masked tail on a 4-device mesh, and the save/load round trip of an HPM model."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from platform_support import take_devices

from hpm_jax import data
from hpm_jax.models import get_model
from hpm_jax.models.export import CheckpointMismatchError, load_model, save_model
from hpm_jax.models.prototypes import init_prototypes, with_head
from hpm_jax.runtime.sharding import make_mesh

C = 4
SMALL = {"channels": (4, 4, 4), "num_features": 8}  # a tiny small_cnn: fast on 2 CPU cores


@functools.cache
def _fc_model_and_variables():
    model = get_model("small_cnn", num_classes=C, **SMALL)
    x = jax.random.uniform(jax.random.key(0), (16, 28, 28, 1))
    variables = jax.jit(model.init)(jax.random.key(1), x[:1])
    # Non-trivial batch statistics, as a trained model has.
    train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    return model, variables | train(variables, x)[1], x


def fc_model_and_variables():
    model, variables, x = _fc_model_and_variables()
    return model, jax.tree.map(lambda a: a, variables), x  # fresh dicts: tests may edit them


@pytest.mark.parametrize("head", ["hpm", "l2"])
def test_with_head_keeps_backbone_fc_and_batch_stats_and_adds_fresh_state(head):
    fc_model, variables, x = fc_model_and_variables()
    model = get_model("small_cnn", num_classes=C, head=head, init_scale=2.0, **SMALL)
    converted = with_head(variables, model)
    want = jax.tree.map(jnp.shape, jax.eval_shape(model.init, jax.random.key(2), x[:1]))
    assert jax.tree.map(jnp.shape, converted) == want
    same = np.testing.assert_array_equal
    jax.tree.map(same, converted["params"]["backbone"], variables["params"]["backbone"])
    jax.tree.map(same, converted["batch_stats"], variables["batch_stats"])
    np.testing.assert_allclose(converted["params"]["head"]["log_scale"], np.log(2.0), rtol=1e-6)
    same(converted["prototypes"]["head"]["ema"], np.zeros((C, 8)))
    same(converted["prototypes"]["head"]["seen"], np.zeros(C))
    if head == "hpm":  # the pretrained FC layer drops in: "fc" mode is the FC model
        jax.tree.map(same, converted["params"]["head"]["fc"], variables["params"]["head"]["fc"])
        same(model.apply(converted, x, mode="fc"), fc_model.apply(variables, x))
    else:
        assert "fc" not in converted["params"]["head"]


def test_with_head_rejects_another_backbone_or_class_count():
    _, variables, _ = fc_model_and_variables()
    with pytest.raises(CheckpointMismatchError, match="mis-shaped"):
        with_head(variables, get_model("small_cnn", num_classes=C + 1, head="hpm", **SMALL))
    with pytest.raises(CheckpointMismatchError, match="backbone and num_classes"):
        with_head(variables, get_model("small_cnn", num_classes=C, head="hpm"))


def test_init_prototypes_equals_numpy_class_means_with_a_masked_tail():
    _, variables, _ = fc_model_and_variables()
    model = get_model("small_cnn", num_classes=C, head="hpm", **SMALL)
    variables = with_head(variables, model)
    variables["prototypes"]["head"]["ema"] = jnp.full((C, 8), 7.0)  # class 3 keeps this
    rng = np.random.default_rng(0)
    n = 22  # 3 batches of 8: the last has 2 padding rows (zero images, label 0, mask False)
    images = rng.integers(0, 256, size=(n, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, C - 1, size=n)  # class 3 never occurs
    source = [{"image": images[i], "label": int(labels[i])} for i in range(n)]
    mesh = make_mesh(take_devices(4))  # the batches are split over 4 devices
    batches = data.eval_iterator(source, batch_size=8, mesh=mesh, num_threads=1)

    with pytest.warns(UserWarning, match=r"classes \[3\] had no example"):
        out = init_prototypes(model, variables, batches)

    feats = np.asarray(
        model.apply(variables, jnp.asarray(images, jnp.float32) / 255, method="features"),
        np.float64,
    )
    ema, seen = out["prototypes"]["head"]["ema"], out["prototypes"]["head"]["seen"]
    for c in range(C - 1):
        np.testing.assert_allclose(ema[c], feats[labels == c].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ema[C - 1], 7.0)
    np.testing.assert_array_equal(seen, [*np.bincount(labels, minlength=C)[: C - 1], 0])
    # The padding would have moved class 0's mean: the mask really matters here.
    pad = np.asarray(
        model.apply(variables, jnp.zeros((1, 28, 28, 1)), method="features"), np.float64
    )
    with_pad = np.concatenate([feats[labels == 0], pad, pad]).mean(0)
    assert not np.allclose(with_pad, ema[0], rtol=1e-3)
    # Everything else is untouched.
    jax.tree.map(np.testing.assert_array_equal, out["params"], variables["params"])


def test_init_prototypes_needs_a_prototype_head():
    fc_model, variables, x = fc_model_and_variables()
    batches = [{"image": x, "label": jnp.zeros(16, jnp.int32)}]
    with pytest.raises(ValueError, match="with_head"):
        init_prototypes(fc_model, variables, batches)


def test_save_and_load_round_trip_the_hpm_head_and_its_prototypes(tmp_path):
    options = {"head": "hpm", "mixing": "convex", "lam": 0.3, "ema_decay": 0.9, **SMALL}
    model = get_model("small_cnn", num_classes=C, **options)
    x = jax.random.uniform(jax.random.key(3), (8, 28, 28, 1))
    variables = jax.jit(model.init)(jax.random.key(4), x[:1])
    variables["prototypes"]["head"] = {
        "ema": jax.random.normal(jax.random.key(5), (C, 8)),
        "seen": jnp.array([3, 0, 1, 2], jnp.int32),
    }
    directory = save_model(
        str(tmp_path / "hpm"), variables, arch="small_cnn", num_classes=C, **options
    )
    loaded_model, loaded = load_model(directory)
    head = loaded_model.head
    assert (type(head).__name__, head.mixing, head.lam, head.ema_decay) == (
        "HPMHead",
        "convex",
        0.3,
        0.9,
    )
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)
    for mode in ("hpm", "ema_l2"):
        np.testing.assert_array_equal(
            loaded_model.apply(loaded, x, mode=mode), model.apply(variables, x, mode=mode)
        )


def test_save_model_refuses_variables_its_description_does_not_fit(tmp_path):
    model = get_model("small_cnn", num_classes=C, head="hpm", **SMALL)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    target = str(tmp_path / "forgot_head")
    with pytest.raises(CheckpointMismatchError, match="head='hpm'"):
        save_model(target, variables, arch="small_cnn", num_classes=C, **SMALL)
    assert not os.path.exists(target)  # nothing written
