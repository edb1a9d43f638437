"""RobustBench backbones (PreActResNet-18, TRADES WideResNet, DeepMind WideResNet): converted
PyTorch checkpoints compute the same logits, batch statistics and running averages, and every
backbone trains identically on 1 and 4 devices.

The PyTorch references are RobustBench's own architecture files with random weights, random
batch-norm affine parameters and random running statistics (so the eval path is really used).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from hpm_jax.interop.convert import CheckpointMismatchError, torch_to_flax
from hpm_jax.models import get_model
from hpm_jax.models.layers import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from hpm_jax.runtime.sharding import data_sharding, make_mesh, replicated

pytestmark = pytest.mark.slow  # builds RobustBench's architectures in both frameworks


@pytest.fixture(scope="module")
def ref():
    """tests/torch_reference.py; skips the test when torch or robustbench is missing."""
    import torch_reference

    torch_reference.torch.manual_seed(0)
    return torch_reference


# ---------------------------------------------------------------------------------------------
# Reference models. Each case: arch, kwargs for the Flax model, a builder of the torch model
# (taking the torch_reference module) and the input size.


def _preact_rice(ref):
    m = ref.robustbench_architecture("resnet")
    return m.PreActResNet(m.PreActBlockV2, [2, 2, 2, 2], bn_before_fc=True)


def _preact_wong(ref):
    m = ref.robustbench_architecture("resnet")
    return m.PreActResNet(m.PreActBlock, [2, 2, 2, 2])


def _wrn(depth, width, **kw):
    return lambda ref: ref.robustbench_architecture("wide_resnet").WideResNet(
        depth=depth, widen_factor=width, **kw
    )


def _dm(depth, width, swish=True, **kw):
    def build(ref):
        m = ref.robustbench_architecture("dm_wide_resnet")
        act = m.Swish if swish else ref.torch.nn.ReLU
        return m.DMWideResNet(depth=depth, width=width, activation_fn=act, **kw)

    return build


# Wong2020Fast-style normalisation buffers, added to the plain PreActResNet's state dict.
_MU_SIGMA = {"mu": CIFAR10_MEAN, "sigma": CIFAR10_STD}

CASES = {
    # Rice2020Overfitting / Kireev2021 layout: final BN, shortcut of the pre-activation.
    "preact_rice": ("preact_resnet18", {}, _preact_rice, 32),
    # Wong2020Fast layout, normalising inside the model with mu/sigma buffers.
    "preact_wong": (
        "preact_resnet18",
        dict(bn_before_fc=False, out_shortcut=False, mean=CIFAR10_MEAN, std=CIFAR10_STD),
        _preact_wong,
        32,
    ),
    "wrn_16_2": ("wide_resnet", dict(depth=16, width=2), _wrn(16, 2), 32),
    "wrn_10_1_sub_block1": (
        "wide_resnet",
        dict(depth=10, width=1),
        _wrn(10, 1, sub_block1=True),
        32,
    ),
    "dm_wrn_16_2": ("dm_wide_resnet", dict(depth=16, width=2), _dm(16, 2), 32),
    # ReLU, CIFAR-100 statistics, 28x28 images padded to 32x32 before normalisation.
    "dm_wrn_10_1_padded": (
        "dm_wide_resnet",
        dict(depth=10, width=1, activation="relu", padding=2, image_size=28)
        | {"mean": CIFAR100_MEAN, "std": CIFAR100_STD},
        _dm(10, 1, swish=False, mean=CIFAR100_MEAN, std=CIFAR100_STD, padding=2),
        28,
    ),
}


def _build(ref, case: str):
    arch, kwargs, builder, size = CASES[case]
    model = builder(ref)
    ref.randomize_batch_norm(model)
    # Copies: a train-mode forward updates the running statistics of the model in place.
    state_dict = {k: v.clone() for k, v in model.state_dict().items()}
    if case == "preact_wong":
        state_dict |= {k: ref.torch.tensor(v).view(1, 3, 1, 1) for k, v in _MU_SIGMA.items()}
    return arch, dict(kwargs), model, state_dict, size


def _images(size: int, n: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, size, size, 3)).astype(np.float32)


def _torch_forward(ref, case: str, model, x: np.ndarray) -> np.ndarray:
    torch = ref.torch
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    if case == "preact_wong":  # what Wong2020FastNet.forward adds
        mu, sigma = (torch.tensor(v).view(1, 3, 1, 1) for v in _MU_SIGMA.values())
        xt = (xt - mu) / sigma
    return model(xt).detach().numpy()


def _assert_close(got, want, rel: float = 1e-4) -> None:
    """Elementwise within `rel` of the reference's scale."""
    want = np.asarray(want)
    np.testing.assert_allclose(
        np.asarray(got), want, rtol=rel, atol=rel * float(np.abs(want).max())
    )


# ---------------------------------------------------------------------------------------------
# Parity with PyTorch.


@pytest.mark.parametrize("case", list(CASES))
def test_eval_logits_match_robustbench(ref, case):
    arch, kwargs, model, state_dict, size = _build(ref, case)
    variables = torch_to_flax(arch, state_dict, **kwargs)
    x = _images(size)
    model.eval()
    want = _torch_forward(ref, case, model, x)
    flax_model = get_model(arch, num_classes=10, **kwargs)
    got = jax.jit(flax_model.apply)(variables, jnp.asarray(x))
    _assert_close(got, want)
    np.testing.assert_array_equal(np.argmax(got, -1), np.argmax(want, -1))


@pytest.mark.parametrize("case", ["preact_rice", "wrn_16_2", "dm_wrn_16_2"])
def test_train_mode_batch_statistics_match_torch(ref, case):
    torch = ref.torch
    arch, kwargs, model, state_dict, size = _build(ref, case)
    variables = torch_to_flax(arch, state_dict, **kwargs)
    x = _images(size, n=16, seed=1)

    # Count the values each BN averages over (N*H*W), for the running-variance correction.
    counts, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            hook = lambda m, inp, out, name=name: counts.__setitem__(
                name, inp[0].numel() // m.num_features
            )
            hooks.append(module.register_forward_hook(hook))
    model.train()
    want = _torch_forward(ref, case, model, x)
    for hook in hooks:
        hook.remove()

    flax_model = get_model(arch, num_classes=10, **kwargs)
    got, updates = jax.jit(
        lambda v, x: flax_model.apply(v, x, train=True, mutable=["batch_stats"])
    )(variables, jnp.asarray(x))
    _assert_close(got, want)

    # Running means: torch momentum 0.1 == Flax momentum 0.9; same update, compared tightly.
    # Running variances: torch averages in the UNBIASED batch variance (n / (n - 1) times
    # the biased one), Flax the biased one. Map torch's update onto Flax's convention:
    # flax_new = 0.9 old + 0.1 var_b = 0.9 old + (torch_new - 0.9 old) (n - 1) / n.
    after = {k: v.clone() for k, v in model.state_dict().items()}
    for name, n in counts.items():
        old = state_dict[f"{name}.running_var"]
        after[f"{name}.running_var"] = 0.9 * old + (after[f"{name}.running_var"] - 0.9 * old) * (
            (n - 1) / n
        )
    expected = torch_to_flax(arch, after, **kwargs)["batch_stats"]
    flat_got = traverse_util.flatten_dict(updates["batch_stats"], sep="/")
    flat_want = traverse_util.flatten_dict(expected, sep="/")
    assert flat_got.keys() == flat_want.keys()
    for path, value in flat_want.items():
        _assert_close(flat_got[path], value, rel=2e-6)


def test_wrapped_checkpoint_converts_the_same(ref):
    arch, kwargs, _, state_dict, _ = _build(ref, "wrn_10_1_sub_block1")
    plain = torch_to_flax(arch, state_dict, **kwargs)
    wrapped = torch_to_flax(
        arch, {"state_dict": {f"module.{k}": v for k, v in state_dict.items()}}, **kwargs
    )
    assert jax.tree.structure(plain) == jax.tree.structure(wrapped)
    jax.tree.map(np.testing.assert_array_equal, plain, wrapped)
    # sub_block1 is dropped, not converted anywhere.
    assert any(k.startswith("sub_block1.") for k in state_dict)
    assert "sub_block1" not in str(jax.tree_util.tree_structure(plain))


def test_wrong_width_lists_misshaped_keys(ref):
    arch, _, _, state_dict, _ = _build(ref, "wrn_16_2")
    with pytest.raises(CheckpointMismatchError) as info:
        torch_to_flax(arch, state_dict, depth=16, width=1)
    assert "block1.layer.0.conv1.weight" in info.value.misshaped
    assert "mis-shaped (" in str(info.value) and "block1.layer.0.conv1.weight" in str(info.value)
    # At width 1 the first block keeps 16 channels, so it has no projection shortcut.
    assert info.value.unexpected == ["block1.layer.0.convShortcut.weight"]


def test_wrong_depth_lists_missing_and_unexpected_keys(ref):
    arch, _, _, state_dict, _ = _build(ref, "dm_wrn_16_2")
    with pytest.raises(CheckpointMismatchError) as info:
        torch_to_flax(arch, state_dict, depth=10, width=2)
    assert "layer.0.block.1.conv_0.weight" in info.value.unexpected


def test_normalization_buffers_are_checked(ref):
    arch, kwargs, _, state_dict, _ = _build(ref, "preact_wong")
    del kwargs["mean"], kwargs["std"]
    with pytest.raises(CheckpointMismatchError, match="does not normalise"):
        torch_to_flax(arch, state_dict, **kwargs)
    with pytest.raises(ValueError, match="normalises with"):
        torch_to_flax(arch, state_dict, mean=CIFAR100_MEAN, std=CIFAR100_STD, **kwargs)


@pytest.mark.parametrize(
    "arch, torch_builder, kwargs",
    [
        ("preact_resnet18", _preact_rice, {}),
        ("wide_resnet", _wrn(28, 10), {}),  # RobustBench's default: WRN-28-10
        ("wide_resnet", _wrn(34, 10), dict(depth=34)),  # TRADES' WRN-34-10
        ("dm_wide_resnet", _dm(28, 10), {}),  # the defaults: WRN-28-10
    ],
)
def test_full_size_checkpoints_fit_the_default_models(ref, arch, torch_builder, kwargs):
    """Every key of a full-size RobustBench model has a Flax variable of the same shape."""
    state_dict = torch_builder(ref).state_dict()
    variables = torch_to_flax(arch, state_dict, **kwargs)
    n_flax = sum(np.size(v) for v in jax.tree.leaves(variables))
    n_torch = sum(v.numel() for k, v in state_dict.items() if "num_batches" not in k)
    assert n_flax == n_torch


# ---------------------------------------------------------------------------------------------
# Training steps on 1 and 4 devices (no torch needed).

TINY = {
    "preact_resnet18": dict(width=4, stage_sizes=(1, 1, 1, 1)),
    "wide_resnet": dict(depth=10, width=1),
    "dm_wide_resnet": dict(depth=10, width=1),
}


def _loss(model, params, batch_stats, x, y):
    logits, updates = model.apply(
        {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, updates["batch_stats"]


@pytest.mark.parametrize("arch", list(TINY))
def test_grads_agree_on_1_and_4_devices(arch):
    devices = jax.devices()
    assert len(devices) >= 4, "tests/conftest.py should give 4 CPU devices"
    model = get_model(arch, num_classes=10, image_size=16, **TINY[arch])
    x = jnp.asarray(_images(16, n=8, seed=2))
    y = jnp.arange(8) % 10
    variables = jax.jit(model.init)(jax.random.key(0), x[:1])  # eager init: 3x slower
    step = jax.jit(jax.value_and_grad(lambda *a: _loss(model, *a), has_aux=True))

    one = jax.device_put((variables["params"], variables["batch_stats"], x, y), devices[0])
    (loss1, stats1), grads1 = step(*one)

    mesh = make_mesh(devices[:4])
    params, stats = jax.device_put(
        (variables["params"], variables["batch_stats"]), replicated(mesh)
    )
    xs, ys = jax.device_put((x, y), data_sharding(mesh))
    assert len(xs.addressable_shards) == 4 and xs.addressable_shards[0].data.shape[0] == 2
    (loss4, stats4), grads4 = step(params, stats, xs, ys)

    # Compared in numpy: eager jnp ops would compile one kernel per distinct leaf shape.
    (loss1, stats1, grads1), (loss4, stats4, grads4) = jax.device_get(
        ((loss1, stats1, grads1), (loss4, stats4, grads4))
    )
    assert np.isfinite(loss1)
    np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
    for tree1, tree4 in ((grads1, grads4), (stats1, stats4)):
        for a, b in zip(jax.tree.leaves(tree1), jax.tree.leaves(tree4), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())
    # Every parameter gets a gradient (nothing built and left unused).
    assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(grads1))
