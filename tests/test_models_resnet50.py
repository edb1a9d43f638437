"""ImageNet ResNet-50: parity with a torchvision-layout PyTorch net, conversion, sharding.

One jitted step (eval logits + train-mode loss, gradients and batch stats) is compiled
in float32 for 1 device (the torch parity tests) and in float64 for 1 and 4 (the float64
parity test and the sharding test, whose point is exactness), and shared by the tests:
compiling ResNet-50 dominates the runtime. Images are 64x64 (the net is fully convolutional
with adaptive pooling).
"""

from __future__ import annotations

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from platform_support import take_devices

torch = pytest.importorskip("torch", reason="parity tests need the torch extra: launch/test.sh")

import torchvision_resnet_reference as tv  # noqa: E402

from hpm_jax.interop.convert import CheckpointMismatchError, torch_to_flax  # noqa: E402
from hpm_jax.models import get_model  # noqa: E402
from hpm_jax.models.imagenet_resnet import ResNet50, torch_max_pool  # noqa: E402
from hpm_jax.models.layers import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from hpm_jax.runtime.sharding import data_sharding, make_mesh, replicated  # noqa: E402

pytestmark = pytest.mark.slow  # ResNet-50 in float64

NUM_CLASSES = 10
BATCH, SIZE = 4, 64


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def randomize_batch_norms(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN affine and running stats, so eval mode really uses them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return net


def to_torch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module")
def torch_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = randomize_batch_norms(tv.resnet50(NUM_CLASSES)).eval()
    # Small residual branches, as in a trained net (or torchvision's zero_init_residual).
    # Without this the random residual stream grows block after block, and float32
    # train-mode gradients of either framework are a few % off their float64 values.
    with torch.no_grad():
        for name, module in net.named_modules():
            if name.endswith("bn3"):
                module.weight.mul_(0.2)
    return net


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
    return x, rng.integers(0, NUM_CLASSES, BATCH)


@pytest.fixture(scope="module")
def variables(torch_net):
    return torch_to_flax("resnet50", torch_net.state_dict())


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def train_loss(model, params, batch_stats, x, y):
    """Train-mode loss (batch statistics), with the updated running statistics as aux."""
    logits, updates = model.apply(
        {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
    )
    return cross_entropy(logits, y), updates["batch_stats"]


def step(model, variables, x, y):
    """Eval mode: logits and the gradients an attack or a fine-tune sees (input, params).
    Train mode: loss, parameter gradients and the updated batch stats."""
    params, batch_stats = variables["params"], variables["batch_stats"]

    def eval_loss(params, x):
        logits = model.apply({"params": params, "batch_stats": batch_stats}, x)
        return cross_entropy(logits, y), logits

    grad_eval = jax.grad(eval_loss, argnums=(0, 1), has_aux=True)
    (eval_param_grads, input_grads), logits = grad_eval(params, x)
    grad_train = jax.value_and_grad(train_loss, argnums=1, has_aux=True)
    (loss, stats), grads = grad_train(model, params, batch_stats, x, y)
    return {
        "logits": logits,
        "eval_param_grads": eval_param_grads,
        "input_grads": input_grads,
        "train_loss": loss,
        "train_grads": grads,
        "batch_stats": stats,
    }


@pytest.fixture(scope="module")
def jitted_step():
    return jax.jit(functools.partial(step, get_model("resnet50", num_classes=NUM_CLASSES)))


def run_on(devices, jitted_step, variables, data):
    mesh = make_mesh(devices)
    x, y = data
    out = jitted_step(
        jax.device_put(variables, replicated(mesh)),
        jax.device_put(x, data_sharding(mesh)),
        jax.device_put(y, data_sharding(mesh)),
    )
    return jax.block_until_ready(out)  # so that torch does not compete with it for the CPU


@pytest.fixture(scope="module")
def one_device(jitted_step, variables, data):
    return run_on(take_devices(1), jitted_step, variables, data)


def torch_train_step(net: torch.nn.Module, x: np.ndarray, y: np.ndarray, dtype=torch.float32):
    """Train-mode loss of a copy of `net` (normalised like RobustBench), after backward."""
    net = tv.normalize_model(copy.deepcopy(net), IMAGENET_MEAN, IMAGENET_STD).to(dtype).train()
    loss = torch.nn.functional.cross_entropy(net(to_torch(x).to(dtype)), torch.from_numpy(y))
    loss.backward()
    return net, loss.item()


def torch_grads(net: torch.nn.Module) -> dict:
    """The `.grad`s of a torch ResNet as a Flax `params` tree (converted like weights)."""
    grads = {k: p.grad for k, p in net.named_parameters()}
    return torch_to_flax("resnet50", {**grads, **dict(net.named_buffers())})["params"]


def max_leaf_err(a, b) -> float:
    return max(jax.tree.leaves(jax.tree.map(rel_err, a, b)))


def global_err(a, b) -> float:
    """|a - b| / |b| over all leaves together: robust to leaves whose float32 values are
    dominated by rounding (train-mode batch norm over few elements cancels a lot)."""
    diff = sum(
        np.sum((np.asarray(u) - np.asarray(v)) ** 2)
        for u, v in zip(*map(jax.tree.leaves, (a, b)), strict=True)
    )
    norm = sum(np.sum(np.asarray(v) ** 2) for v in jax.tree.leaves(b))
    return float(np.sqrt(diff / norm))


def test_eval_logits_and_gradients_match_torch(torch_net, data, one_device):
    x, y = data
    net = tv.normalize_model(copy.deepcopy(torch_net), IMAGENET_MEAN, IMAGENET_STD).eval()
    x_torch = to_torch(x).requires_grad_()
    logits = net(x_torch)
    torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).backward()
    expected = logits.detach().numpy()
    got = np.asarray(one_device["logits"])
    assert rel_err(got, expected) < 1e-4
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    input_grads = x_torch.grad.numpy().transpose(0, 2, 3, 1)
    assert rel_err(one_device["input_grads"], input_grads) < 1e-4
    assert max_leaf_err(one_device["eval_param_grads"], torch_grads(net)) < 1e-4


def test_train_mode_matches_torch(torch_net, data, one_device):
    net, loss = torch_train_step(torch_net, *data)
    assert rel_err(one_device["train_loss"], loss) < 1e-5
    # Tight only because layers.batch_norm computes the variance in two passes like torch;
    # Flax's default E[x^2] - E[x]^2 put these gradients ~1e-3 off.
    assert global_err(one_device["train_grads"], torch_grads(net)) < 1e-4
    # Running means follow torch's momentum. (Running variances differ by n / (n - 1):
    # Flax updates them with the biased batch variance, torch with the unbiased one.)
    stats = torch_to_flax("resnet50", net.state_dict())["batch_stats"]
    means = lambda tree: {k: v for k, v in flatten_dict(tree).items() if k[-1] == "mean"}
    assert max_leaf_err(means(one_device["batch_stats"]), means(stats)) < 1e-4


def run_float64_on(devices, variables, data):
    """`step` in float64 on `devices` (the batch sharded over them), as NumPy float64."""
    x, y = data
    with jax.enable_x64(True):
        model = get_model("resnet50", num_classes=NUM_CLASSES, dtype=jnp.float64)
        v64 = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
        out = run_on(devices, jax.jit(functools.partial(step, model)), v64,
                     (x.astype(np.float64), y))  # fmt: skip
        assert out["logits"].dtype == jnp.float64
        return out


@pytest.fixture(scope="module")
def float64_one_device(variables, data):
    return run_float64_on(take_devices(1), variables, data)


def test_train_mode_gradients_match_torch_in_float64(torch_net, data, float64_one_device):
    x, y = data
    net, loss = torch_train_step(torch_net, x, y, dtype=torch.float64)
    # Not 1e-12: torch's float64 kernels sum in other orders, through ~50 layers.
    assert rel_err(float64_one_device["train_loss"], loss) < 1e-6
    assert max_leaf_err(float64_one_device["train_grads"], torch_grads(net)) < 1e-5


def test_four_devices_match_one(variables, data, float64_one_device):
    """Sharding the batch over 4 devices changes only the order of the reductions (batch-norm
    statistics, gradient sums), i.e. rounding. In float32 that rounding alone reached 9.8e-4
    of a leaf's scale on one CPU (1e-4 on another): ResNet-50's train-mode backward pass
    amplifies the 6e-8 unit roundoff ~1.6e4-fold, and the amplification depends on the
    CPU's vector width and XLA's reduction order, so no float32 bound is safe everywhere.
    In float64 the same amplification of the 1.1e-16 unit roundoff gives ~2e-12; the bound
    1e-9 leaves a factor ~500 for any CPU and reduction order, while real sharding bugs
    (per-device batch statistics, a missing gradient all-reduce) change these values by
    1e-2 and more."""
    four = run_float64_on(take_devices(4), variables, data)
    one = float64_one_device
    assert len(four["logits"].sharding.device_set) == 4
    for name in ("logits", "eval_param_grads", "input_grads", "train_loss", "batch_stats"):
        assert max_leaf_err(four[name], one[name]) < 1e-9, name
    assert global_err(four["train_grads"], one["train_grads"]) < 1e-9
    assert max_leaf_err(four["train_grads"], one["train_grads"]) < 1e-6


def test_robustbench_wrapped_checkpoint_converts_to_the_same_variables(torch_net, variables):
    wrapped = tv.normalize_model(torch_net, IMAGENET_MEAN, IMAGENET_STD)
    state_dict = wrapped.state_dict()
    assert {"normalize.mean", "normalize.std", "model.conv1.weight"} <= set(state_dict)
    converted = torch_to_flax("resnet50", state_dict)
    jax.tree.map(np.testing.assert_array_equal, converted, variables)


def test_checkpoint_normalisation_must_match_the_model(torch_net, data):
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    wrapped = tv.normalize_model(torch_net, mean, std).eval()
    with pytest.raises(ValueError, match=r"normalises with mean=.*pass mean=\.\.\."):
        torch_to_flax("resnet50", wrapped.state_dict())
    # Built with the file's constants, the model converts and computes what torch does.
    converted = torch_to_flax("resnet50", wrapped.state_dict(), mean=mean, std=std)
    x, _ = data
    model = get_model("resnet50", num_classes=NUM_CLASSES, mean=mean, std=std)
    logits = jax.jit(model.apply)(converted, x[:2])
    with torch.no_grad():
        expected = wrapped(to_torch(x[:2])).numpy()
    assert rel_err(logits, expected) < 1e-4


def test_mismatched_checkpoint_lists_keys(torch_net):
    state_dict = dict(torch_net.state_dict())
    del state_dict["layer3.5.bn3.running_var"]
    state_dict["layer5.0.conv1.weight"] = torch.zeros(8, 8, 1, 1)
    state_dict["layer1.0.conv2.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(CheckpointMismatchError) as info:
        torch_to_flax("resnet50", state_dict)
    error = info.value
    assert error.missing == ["batch_stats/backbone/layer3_5/bn3/var"]
    assert error.unexpected == ["layer5.0.conv1.weight"]
    assert error.misshaped == {"layer1.0.conv2.weight": ((64, 64, 1, 1), (3, 3, 64, 64))}
    assert "layer5.0.conv1.weight" in str(error)


def eval_logits_both(net: torch.nn.Module, variables, x: np.ndarray, **arch):
    """Eval logits of the normalised torch `net` and of the Flax model with `variables`."""
    model = get_model("resnet50", num_classes=NUM_CLASSES, **arch)
    logits = jax.jit(model.apply)(variables, x)
    wrapped = tv.normalize_model(net, IMAGENET_MEAN, IMAGENET_STD).eval()
    with torch.no_grad():
        return np.asarray(logits), wrapped(to_torch(x)).numpy()


def test_imagenet_resolution_matches_torch(torch_net, variables):
    x = np.random.default_rng(1).uniform(size=(2, 224, 224, 3)).astype(np.float32)
    logits, expected = eval_logits_both(torch_net, variables, x)
    assert rel_err(logits, expected) < 1e-4
    np.testing.assert_array_equal(logits.argmax(-1), expected.argmax(-1))


@pytest.mark.parametrize(
    "block, arch",
    [
        (tv.BasicBlock, {"stage_sizes": (2, 2, 2, 2), "bottleneck": False}),  # ResNet-18
        (tv.Bottleneck, {"stage_sizes": (1, 1, 1, 1), "width_per_group": 128}),  # wide, short
    ],
    ids=["resnet18", "wide_bottleneck"],
)
def test_variants_match_torch(block, arch, data):
    torch.manual_seed(1)
    net = tv.ResNet(block, arch["stage_sizes"], NUM_CLASSES, arch.get("width_per_group", 64))
    net = randomize_batch_norms(net, seed=1)
    converted = torch_to_flax("resnet50", net.state_dict(), **arch)
    logits, expected = eval_logits_both(net, converted, data[0][:2], **arch)
    assert rel_err(logits, expected) < 1e-4


def test_max_pool_pads_like_torch():
    # Negative inputs: zero padding would win at the borders, torch's -inf never does.
    x = -np.random.default_rng(0).uniform(1, 2, size=(2, 7, 9, 3)).astype(np.float32)
    expected = torch.nn.MaxPool2d(3, 2, 1)(to_torch(x)).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(torch_max_pool(jnp.asarray(x)), expected)


def test_imagenet_shapes_and_bfloat16_features():
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    for dtype in (jnp.float32, jnp.bfloat16):
        backbone = ResNet50(dtype=dtype)
        features, variables = jax.eval_shape(backbone.init_with_output, jax.random.key(0), x)
        assert features.shape == (1, 2048) and features.dtype == jnp.float32
        assert variables["params"]["conv1"]["kernel"].shape == (7, 7, 3, 64)
        assert variables["params"]["layer4_0"]["downsample_conv"]["kernel"].dtype == jnp.float32
