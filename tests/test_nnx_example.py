"""examples/nnx_hpm_head.py: the Linen HPMHead trained as an NNX module through nnx.bridge."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hpm_jax.models import MODES, HPMHead

_PATH = pathlib.Path(__file__).resolve().parents[1] / "examples" / "nnx_hpm_head.py"
_spec = importlib.util.spec_from_file_location("nnx_hpm_head", _PATH)
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)


def test_one_training_step_updates_params_and_prototypes():
    in_dim, num_classes = 12, 4
    x = jax.random.normal(jax.random.key(0), (10, in_dim))
    y = jnp.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 0])  # class 3 absent
    model = example.NNXClassifier(in_dim, 6, num_classes, rngs=nnx.Rngs(0), ema_decay=0.9)
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    copy = lambda tree: jax.tree.map(np.array, tree)
    params_before = copy(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    # The prototypes are NNX variables of their own type: not parameters, not trained.
    assert isinstance(model.head.ema, example.PrototypeVariable)
    assert not isinstance(model.head.ema, nnx.Param)
    assert "ema" not in str(jax.tree_util.tree_structure(nnx.state(model, nnx.Param)))
    w = np.asarray(model.backbone.kernel.get_value(), np.float64)
    b = np.asarray(model.backbone.bias.get_value(), np.float64)
    feats_before = np.maximum(np.asarray(x, np.float64) @ w + b, 0)

    loss, out = example.train_step(model, optimizer, x, y)

    assert np.isfinite(loss) and set(out) == {"hpm", "fc"}
    params_after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), params_before, params_after)
    assert all(jax.tree.leaves(changed))  # backbone, fc and log_scale all moved
    # First observation of each class: P_ema[c] = mean of the (pre-step) features of class c.
    ema, seen = model.head.ema.get_value(), model.head.seen.get_value()
    np.testing.assert_array_equal(seen, [3, 3, 4, 0])
    for c in range(3):
        np.testing.assert_allclose(ema[c], feats_before[y == c].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ema[3], 0.0)


def test_nnx_logits_match_the_linen_head_on_the_same_variables():
    result = example.main(steps=2)
    model, x = result["model"], result["x"]
    assert all(np.isfinite(result["losses"]))
    variables = example.linen_variables(model.head)
    assert variables["prototypes"]["seen"].sum() == 2 * x.shape[0]  # two EMA updates
    feats = model.features(x)
    linen_head = HPMHead(model.head.to_nnx__module.num_classes)
    for mode in MODES:
        nnx_logits = model(x, mode=mode)
        assert np.isfinite(nnx_logits).all()
        np.testing.assert_allclose(
            nnx_logits, linen_head.apply(variables, feats, mode=mode), rtol=1e-6, atol=1e-6
        )
