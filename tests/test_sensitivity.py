"""Sensitivity analysis against closed forms and independent compositions.

FC: grad m = w_y - w_c*, worst-case change under radius r = -r ||w_y - w_c*|| while the
runner-up cannot change, random change r <g, u> with known moments. Un-squared l2:
grad m = s (u_c* - u_y), so ||grad m|| <= 2s and no perturbation of radius r moves m by more
than 2sr. Batch-coupled heads: the isolated gradient is the Jacobian's diagonal block,
checked against a per-sample loop. Input gradients against jax.grad of the composition.
"""

import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from hpm_jax import models as hpm_models
from hpm_jax.analysis import checkpoint_analysis as cli
from hpm_jax.analysis import sensitivity as S
from hpm_jax.data import offline
from hpm_jax.models import PROTOTYPES, HPMHead, get_model
from hpm_jax.models.export import save_model

B, C, D = 24, 5, 12


def normal(rng, *shape):
    # NumPy data: JAX's threefry sampler compiles for seconds per new shape on a CPU.
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def fc_logits(w, b):
    return lambda f: f @ w + b


def l2_logits_direct(protos, scale):
    # B x C x D differences: independent of the heads' ||f||^2 - 2 f.P + ||P||^2 expansion.
    return lambda f: -scale * jnp.sqrt(jnp.sum((f[:, None, :] - protos[None]) ** 2, axis=-1))


def runner_up_np(logits, labels):
    z = np.array(logits, np.float64)
    z[np.arange(len(labels)), labels] = -np.inf
    return z.argmax(axis=1)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    w, b, protos = normal(rng, D, C), normal(rng, C), 2.0 * normal(rng, C, D)
    f, y = normal(rng, B, D), jnp.asarray(rng.integers(0, C, B), jnp.int32)
    return w, b, protos, f, y


def test_margins_by_hand():
    logits = jnp.array([[1.0, 3.0, 2.0], [5.0, 0.0, 4.5], [0.0, 1.0, 2.0]])
    m, runner = S.margins(logits, jnp.array([1, 0, 0]))
    np.testing.assert_allclose(m, [1.0, 0.5, -2.0])
    np.testing.assert_array_equal(runner, [2, 2, 2])


def test_fc_margin_gradient_is_w_y_minus_w_runner_up(problem):
    w, b, _, f, y = problem
    m, grad, _ = jax.jit(lambda f, y: S.margin_gradients(fc_logits(w, b), f, y))(f, y)
    z = np.asarray(f @ w + b)
    c = runner_up_np(z, np.asarray(y))
    rows = np.arange(B)
    np.testing.assert_allclose(m, z[rows, y] - z[rows, c], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, np.asarray(w).T[y] - np.asarray(w).T[c], rtol=1e-5, atol=1e-6)


def test_l2_margin_gradient_closed_form_and_bound(problem):
    _, _, protos, f, y = problem
    scale = 3.0
    _, grad, logits = jax.jit(
        lambda f, y: S.margin_gradients(l2_logits_direct(protos, scale), f, y)
    )(f, y)
    f64, p64 = np.asarray(f, np.float64), np.asarray(protos, np.float64)
    c = runner_up_np(logits, np.asarray(y))
    diff = f64[:, None, :] - p64[None]
    unit = diff / np.linalg.norm(diff, axis=-1, keepdims=True)  # u_c = (f - P_c) / ||f - P_c||
    rows = np.arange(B)
    np.testing.assert_allclose(grad, scale * (unit[rows, c] - unit[rows, y]), atol=1e-5)
    assert np.all(np.linalg.norm(grad, axis=-1) <= 2 * scale + 1e-5)


def test_relative_sensitivity_ignores_the_logit_scale(problem):
    w, b, protos, f, y = problem
    radii, u = jnp.array([0.5]), S.unit_directions(0, (2, B, D))

    @jax.jit
    def l2(scale):
        return S.measure_features(l2_logits_direct(protos, scale), f, y, radii, u)

    @jax.jit
    def fc(scale):
        return S.measure_features(fc_logits(scale * w, scale * b), f, y, radii, u)

    for measure in (l2, fc):
        a, z = measure(1.0), measure(7.0)
        np.testing.assert_allclose(a["lipschitz"] * 7.0, z["lipschitz"], rtol=1e-4)
        np.testing.assert_allclose(a["relative_sensitivity"], z["relative_sensitivity"], rtol=1e-4)
        np.testing.assert_array_equal(a["worst_wrong"], z["worst_wrong"])
        np.testing.assert_array_equal(a["random_wrong"], z["random_wrong"])
        expected = a["lipschitz"] * np.linalg.norm(f, axis=-1) / np.abs(a["margin"])
        np.testing.assert_allclose(a["relative_sensitivity"], expected, rtol=1e-5)


def test_fc_worst_case_is_r_times_gradient_norm_for_two_classes():
    # Two classes: m = (w_0 - w_1).f + b_0 - b_1 exactly (with the sign of the label), linear.
    rng = np.random.default_rng(1)
    w, b, f = normal(rng, D, 2), normal(rng, 2), normal(rng, B, D)
    y = jnp.asarray(rng.integers(0, 2, B), jnp.int32)
    radii = jnp.array([0.05, 0.3, 1.0])
    out = jax.jit(lambda f, y: S.worst_case_perturbations(fc_logits(w, b), f, y, radii))(f, y)
    g = np.linalg.norm(np.asarray(w[:, 0] - w[:, 1]))
    expected = -np.asarray(radii)[:, None] * g * np.ones((1, B))
    np.testing.assert_allclose(out["margin_change"], expected, rtol=1e-5)
    m, _ = S.margins(f @ w + b, y)
    assert np.array_equal(out["wrong"], (np.asarray(m)[None] + expected) < 0)


def test_fc_worst_case_multiclass_against_the_exact_optimum(problem):
    w, b, _, f, y = problem
    radii = jnp.array([0.02, 0.1, 0.5, 2.0])
    out = jax.jit(lambda f, y: S.worst_case_perturbations(fc_logits(w, b), f, y, radii))(f, y)
    z, wt = np.asarray(f @ w + b, np.float64), np.asarray(w, np.float64).T
    y_np, rows = np.asarray(y), np.arange(B)
    c = runner_up_np(z, y_np)
    m = z[rows, y_np] - z[rows, c]
    g = np.linalg.norm(wt[y_np] - wt[c], axis=-1)
    # min over ||d|| <= r of min_c (z_y - z_c)(f + d) = min_c [(z_y - z_c)(f) - r ||w_y - w_c||].
    pair = np.linalg.norm(wt[y_np][:, None] - wt[None], axis=-1)  # (B, C) ||w_y - w_c||
    gaps = z[rows, y_np][:, None] - z
    gaps[rows, y_np] = np.inf
    for i, r in enumerate(np.asarray(radii)):
        optimum = (gaps - r * pair).min(axis=1) - m
        found = np.asarray(out["margin_change"][i])
        assert np.all(found >= optimum - 1e-4)  # nothing beats the exact optimum
        # Where no other class can overtake c* in the ball (its gap exceeds r times the norm
        # of the difference of their weights), m is linear there and PGD reaches the optimum.
        other = z[rows, c][:, None] - z - r * np.linalg.norm(wt[c][:, None] - wt[None], axis=-1)
        other[rows, y_np], other[rows, c] = np.inf, np.inf
        stays = other.min(axis=1) > 0
        assert stays.sum() >= (3 if r <= 0.1 else 0)
        np.testing.assert_allclose(found[stays], -r * g[stays], rtol=1e-4)


def test_l2_perturbations_move_the_margin_at_most_2_s_r(problem):
    _, _, protos, f, y = problem
    scale, radii = 2.5, jnp.array([0.1, 1.0, 4.0])
    logits_fn = l2_logits_direct(protos, scale)
    u = S.unit_directions(3, (8, B, D))
    rand = jax.jit(lambda f: S.random_perturbations(logits_fn, f, y, radii, u))(f)
    worst = jax.jit(lambda f: S.worst_case_perturbations(logits_fn, f, y, radii, num_steps=20))(f)
    bound = 2 * scale * np.asarray(radii)
    assert np.all(np.abs(rand["margin_change"]) <= bound[:, None, None] * (1 + 1e-5))
    assert np.all(worst["margin_change"] >= -bound[:, None] * (1 + 1e-5))
    # The worst case is far worse than random directions at every radius.
    assert np.all(worst["margin_change"].mean(1) < 3 * rand["margin_change"].mean((1, 2)))


def test_random_perturbations_of_fc_have_the_moments_of_a_uniform_direction():
    # Two classes: dm = r <g, u> with u uniform on the sphere S^{D-1}:
    # E|u_1| = Gamma(D/2) / (sqrt(pi) Gamma((D+1)/2)), E[u_1^2] = 1/D.
    rng = np.random.default_rng(2)
    w, b, f = normal(rng, D, 2), normal(rng, 2), normal(rng, 256, D)
    y = jnp.asarray(rng.integers(0, 2, 256), jnp.int32)
    radii, u = jnp.array([0.3, 2.0]), S.unit_directions(5, (32, 256, D))
    out = jax.jit(lambda f, y: S.random_perturbations(fc_logits(w, b), f, y, radii, u))(f, y)
    g = float(np.linalg.norm(w[:, 0] - w[:, 1]))
    scaled = np.asarray(out["margin_change"]) / (np.asarray(radii)[:, None, None] * g)
    e_abs = math.exp(math.lgamma(D / 2) - math.lgamma((D + 1) / 2)) / math.sqrt(math.pi)
    np.testing.assert_allclose(np.abs(scaled).mean(axis=(1, 2)), e_abs, rtol=0.04)
    np.testing.assert_allclose((scaled**2).mean(axis=(1, 2)), 1 / D, rtol=0.06)
    assert np.all(np.abs(scaled.mean(axis=(1, 2))) < 0.02)  # symmetric: mean 0
    # The same directions serve every radius: the change scales exactly with r.
    np.testing.assert_allclose(scaled[0], scaled[1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(u, axis=-1), 1.0, rtol=1e-5)
    assert u.dtype == np.float32


def coupled_logits(w, v):
    """A smooth batch-coupled head: z_i = f_i W + mean_j(f_j) V."""
    return lambda f: f @ w + jnp.mean(f, axis=0, keepdims=True) @ v


def test_isolated_gradient_is_the_diagonal_block(problem):
    w, _, protos, f, y = problem
    logits_fn = coupled_logits(w, protos.T)

    @jax.jit
    def own_gradient(fi, i):  # d m_i / d f_i with the other rows fixed, one row at a time
        return jax.grad(lambda fi: S.margins(logits_fn(f.at[i].set(fi)), y)[0][i])(fi)

    loop = np.stack([own_gradient(f[i], i) for i in range(B)])
    for max_elements in (1 << 24, 4 * B * D):  # one vmap; chunks of 4 rows in a loop
        iso = S.isolated(logits_fn, f, max_elements=max_elements)
        _, grad, logits = jax.jit(lambda f, y, iso=iso: S.margin_gradients(iso, f, y))(f, y)
        np.testing.assert_allclose(grad, loop, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(logits, logits_fn(f), rtol=1e-5, atol=1e-6)
    # The gradient of the sum of margins differs: it adds how i moves the others' logits.
    _, joint, _ = jax.jit(lambda f, y: S.margin_gradients(logits_fn, f, y))(f, y)
    assert np.abs(np.asarray(joint) - loop).max() > 0.1
    # For independent rows isolation changes nothing.
    fc = fc_logits(w, protos[:, 0])
    np.testing.assert_allclose(S.isolated(fc, f)(f + 1.0), fc(f + 1.0), rtol=1e-5)


def test_isolated_context_perturbs_one_sample_at_a_time(problem):
    w, _, protos, f, y = problem
    logits_fn, radii = coupled_logits(w, protos.T), jnp.array([0.5, 2.0])
    u = S.unit_directions(9, (3, B, D))

    @jax.jit
    def measure(f):
        iso = S.measure_features(logits_fn, f, y, radii, u, coupled=True, context="isolated")
        joint = S.measure_features(logits_fn, f, y, radii, u, coupled=True, context="joint")
        return iso, joint

    out, joint = measure(f)
    m, _ = S.margins(logits_fn(f), y)
    for i in (0, 7):
        for k in range(3):
            moved, _ = S.margins(logits_fn(f.at[i].add(radii[1] * u[k, i])), y)
            np.testing.assert_allclose(out["random_margin_change"][i, 1, k], moved[i] - m[i],
                                       rtol=1e-4, atol=1e-5)  # fmt: skip
    # Joint: every row moves at once, so the change of row i is that of the whole batch.
    moved, _ = S.margins(logits_fn(f + radii[0] * u[2]), y)
    np.testing.assert_allclose(joint["random_margin_change"][:, 0, 2], moved - m, atol=1e-5)
    np.testing.assert_allclose(joint["lipschitz"], out["lipschitz"], rtol=1e-6)  # always diagonal
    assert np.abs(joint["random_margin_change"] - out["random_margin_change"]).max() > 1e-3


def tiny_backbone(params, x):
    """Conv 3x3 -> tanh -> mean pool -> dense: an independent per-sample composition."""
    h = jax.lax.conv_general_dilated(x, params["k"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
    return jnp.tanh(h).mean(axis=(1, 2)) @ params["d"]


def test_input_gradients_match_jax_grad_of_the_composition(problem):
    w, b, protos, _, y = problem
    rng = np.random.default_rng(4)
    params = {"k": normal(rng, 3, 3, 2, 6), "d": normal(rng, 6, D)}
    x = jnp.asarray(rng.uniform(size=(B, 5, 5, 2)), jnp.float32)
    backbone = lambda x: tiny_backbone(params, x)

    def sum_margins(x, head):
        return S.margins(head(backbone(x)), y)[0].sum()

    fc = fc_logits(w, b)
    _, g, _ = S.margin_gradients(fc, backbone(x), y)
    got = jax.jit(lambda x, g: S.input_gradients(backbone, x, g))(x, g)
    np.testing.assert_allclose(got, jax.grad(sum_margins)(x, fc), rtol=1e-4, atol=1e-6)

    coupled = coupled_logits(w, protos.T)  # per sample i: d m_i / d x_i, others fixed
    feats = backbone(x)
    _, g, _ = S.margin_gradients(S.isolated(coupled, feats), feats, y)
    got = S.input_gradients(backbone, x, g)

    @jax.jit
    def own_gradient(xi, i):
        return jax.grad(lambda xi: S.margins(coupled(backbone(x.at[i].set(xi))), y)[0][i])(xi)

    for i in (0, 5, B - 1):
        np.testing.assert_allclose(got[i], own_gradient(x[i], i), rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_hpm():
    """One model object for the module, so analyses reuse each other's compiled functions."""
    return tiny_hpm_model()


def tiny_hpm_model(scale=3.0, seed=0):
    model = get_model("small_cnn", num_classes=4, head="hpm", in_channels=1, image_size=8,
                      channels=(4, 4, 8), num_features=D)  # fmt: skip
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.uniform(size=(16, 8, 8, 1)), jnp.float32)
    y = jnp.arange(16) % 4
    # An "rbg" key: threefry would take seconds to compile for every parameter shape.
    variables = jax.jit(model.init)(jax.random.key(seed, impl="rbg"), x[:1])
    variables = jax.tree.map(lambda a: a, variables)  # a mutable copy of the dicts
    feats = np.asarray(model.apply(variables, x, method="features"))
    means = np.stack([feats[np.asarray(y) == c].mean(axis=0) for c in range(4)])
    noise = 0.1 * rng.standard_normal(means.shape)  # prototypes near the class means
    variables[PROTOTYPES] = {"head": {"ema": means + noise, "seen": jnp.full(4, 4, jnp.int32)}}
    variables["params"]["head"]["log_scale"] = jnp.log(scale)
    return model, variables, x, y


def test_analyze_an_hpm_model_gives_fc_l2_and_hpm_with_closed_forms(tiny_hpm):
    model, variables, x, y = tiny_hpm
    batches = [{"image": x[:8], "label": y[:8]}, {"image": x[8:], "label": y[8:]}]
    radii = (0.05, 0.5)
    result = S.analyze(model, variables, batches, relative_radii=radii, num_draws=2, num_steps=3)
    summary, per = result["summary"], result["per_sample"]
    json.dumps(summary)  # JSON-ready
    assert list(summary["heads"]) == ["fc", "l2", "hpm"]
    assert summary["heads"]["l2"]["logit_scale"] == pytest.approx(3.0)
    assert summary["heads"]["fc"]["logit_scale"] is None
    assert summary["heads"]["hpm"]["coupled"] and not summary["heads"]["l2"]["coupled"]
    feats = model.apply(variables, x, method="features")
    np.testing.assert_allclose(per["fc"]["feature_norm"], np.linalg.norm(feats, axis=-1), 1e-5)
    norm = np.linalg.norm(feats, axis=-1).mean()
    np.testing.assert_allclose(summary["radii"], np.array(radii) * norm, rtol=1e-5)

    wt = np.asarray(variables["params"]["head"]["fc"]["kernel"]).T
    fc = per["fc"]
    np.testing.assert_allclose(
        fc["lipschitz"], np.linalg.norm(wt[y] - wt[fc["runner_up"]], axis=-1), rtol=1e-5
    )
    assert np.all(per["l2"]["lipschitz"] <= 2 * 3.0 + 1e-5)

    def margin_sum(x):
        return S.margins(model.apply(variables, x, mode="fc"), y)[0].sum()

    grad = jax.jit(jax.grad(margin_sum))(x)
    np.testing.assert_allclose(fc["input_gradient"], np.linalg.norm(grad.reshape(16, -1), axis=1),
                               rtol=1e-4)  # fmt: skip
    np.testing.assert_allclose(fc["input_distance"], np.abs(fc["margin"]) / fc["input_gradient"])

    # HPM: the batch context is each 8-image batch; sample i's gradient with the others fixed.
    xb, yb = x[:8], y[:8]

    @jax.jit
    def own_gradient(xi, i):
        return jax.grad(lambda xi: S.margins(model.apply(variables, xb.at[i].set(xi)), yb)[0][i])(
            xi
        )

    for i in (0, 3):
        g = own_gradient(xb[i], i)
        np.testing.assert_allclose(per["hpm"]["input_gradient"][i], np.linalg.norm(g), rtol=1e-4)
    for name, head in summary["heads"].items():
        for kind in ("random", "worst_case"):
            assert len(head[kind]["flip_rate"]) == 2
            assert all(0 <= v <= 1 for v in head[kind]["flip_rate"]), name
        assert per[name]["random_margin_change"].shape == (16, 2, 2)
        assert per[name]["worst_margin_change"].shape == (16, 2)


def test_analyze_drops_padding_and_refuses_it_for_coupled_heads(tiny_hpm):
    model, variables, x, y = tiny_hpm
    mask = jnp.arange(8) < 5
    batches = [{"image": x[:8], "label": y[:8], "mask": jnp.ones(8, bool)},
               {"image": x[8:], "label": y[8:], "mask": mask}]  # fmt: skip
    heads = S.model_heads(model)[:2]  # fc, l2: rows independent
    # The settings of the test above: its compiled functions serve again.
    settings = {"relative_radii": (0.05, 0.5), "num_draws": 2, "num_steps": 3}
    result = S.analyze(model, variables, batches, heads=heads, **settings)
    assert result["summary"]["heads"]["l2"]["num_examples"] == 13
    full = S.analyze(model, variables, [{"image": x[8:], "label": y[8:]}], heads=heads, **settings)
    for name in ("margin", "lipschitz", "input_gradient", "relative_sensitivity"):
        np.testing.assert_allclose(result["per_sample"]["l2"][name][8:],
                                   full["per_sample"]["l2"][name][:5], rtol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="padding"):
        S.analyze(model, variables, batches, **settings)


class _UncoupledHPM(HPMHead):
    """HPM declaring its batch-mixed modes uncoupled: model_heads must follow the class."""

    coupled_modes = frozenset()


class _Undeclared(nn.Module):
    @nn.compact
    def __call__(self, features, labels=None, *, train=False, mode=None):
        return nn.Dense(4)(features)


def test_model_heads_come_from_the_head_declarations():
    def described(model):
        return [(h.name, h.mode, h.coupled) for h in S.model_heads(model)]

    models = {h: get_model("small_cnn", num_classes=4, head=h) for h in ("fc", "l2", "hpm")}
    assert described(models["fc"]) == [("fc", "fc", False)]
    assert described(models["l2"]) == [("l2", "ema_l2", False)]
    assert described(models["hpm"]) == [
        ("fc", "fc", False), ("l2", "ema_l2", False), ("hpm", "hpm", True)
    ]  # fmt: skip
    uncoupled = models["hpm"].clone(head=_UncoupledHPM(4))
    assert [h.coupled for h in S.model_heads(uncoupled)] == [False, False, False]
    with pytest.raises(ValueError, match="No sensitivity analysis for a _Undeclared head"):
        S.model_heads(models["fc"].clone(head=_Undeclared()))
    assert S.head_logits_fn is hpm_models.head_logits_fn  # the one in hpm_jax.models


def test_missing_checkpoints_fail_with_the_recipe(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*hpm_jax\.demo"):
        cli.resolve_checkpoint(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"no model\.json"):
        cli.resolve_checkpoint(str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "hpm_jax.analysis", f"--checkpoint={tmp_path}/nowhere",
         f"--out={tmp_path}/out"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "error: --checkpoint=" in proc.stderr and "does not exist" in proc.stderr


@pytest.mark.skipif(
    not offline.fashion_mnist_files_present(), reason="needs apt-get install dataset-fashion-mnist"
)
def test_command_line_on_an_fc_checkpoint_writes_summary_arrays_and_figures(tmp_path):
    # An FC small CNN (random weights): the program adds l2 prototypes from training images.
    kwargs = {"num_classes": 10, "in_channels": 1, "image_size": 28, "channels": [4, 8, 8],
              "num_features": 16}  # fmt: skip
    model = get_model("small_cnn", **kwargs)
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), jnp.zeros((1, 28, 28, 1)))
    save_model(str(tmp_path / "model"), variables, arch="small_cnn", **kwargs)
    out = str(tmp_path / "out")
    result = cli.run(str(tmp_path), out, num_examples=32, batch_size=16, heads=("fc", "l2"),
                     relative_radii=(0.1, 1.0), num_draws=2, num_steps=2,
                     prototype_examples=64)  # fmt: skip
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["checkpoint"] == str(tmp_path / "model")
    assert list(summary["heads"]) == ["fc", "l2"] and summary["heads"]["l2"]["num_examples"] == 32
    arrays = np.load(os.path.join(out, "per_sample.npz"))
    np.testing.assert_array_equal(arrays["l2/margin"], result["per_sample"]["l2"]["margin"])
    for name, size in (("histograms.png", (440, 1716)), ("perturbations.png", (462, 1210))):
        image = matplotlib.image.imread(os.path.join(out, name))  # a real PNG of that size
        assert image.shape[:2] == size
        assert image[..., :3].std() > 0.05  # something was drawn on the white canvas
    assert "l2: acc" in cli.report(summary)
    with pytest.raises(ValueError, match="multiple of --batch_size"):
        cli.run(str(tmp_path), out, num_examples=30, batch_size=16)
    with pytest.raises(ValueError, match="does not fit the checkpoint"):
        cli.run(str(tmp_path), out, dataset="cifar10", num_examples=32, batch_size=16)
