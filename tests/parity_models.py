"""One small CNN in both frameworks with identical weights, for AutoAttack parity tests.

    x, y = fashion_mnist_arrays("test[:500]")      # float32 NHWC in [0, 1], int64 labels
    net = train_torch_net()                         # deterministic, seconds on one core
    logits_fn = jax_logits_fn(net)                  # NHWC JAX forward of the same weights
    torch_logits(net, x)                            # numpy NHWC in, numpy logits out
    plain_forward(jax_params(net), x)               # the JAX forward with autodiff's convs

The network (conv 5x5/2 -> ReLU -> conv 5x5/2 -> ReLU -> linear) is small on purpose: the
reference attacks run in PyTorch on a shared 2-core CPU, Square makes thousands of forward
passes, and parity needs several hundred points. It is trained adversarially (fast FGSM
training, a few seconds), so that attack strength matters on it.

The JAX forward is written from the torch weights with `lax.conv_general_dilated` (NHWC/HWIO
instead of NCHW/OIHW) and a linear layer whose input rows are permuted from torch's (C, H, W)
flattening order to NHWC's (H, W, C). Its convolutions carry a hand-written input gradient
(see `_conv_layer`): the same values as autodiff's, but fast inside `lax` loops on XLA:CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpm_jax.data import offline

torch = pytest.importorskip("torch", reason="parity tests need the torch extra: launch/test.sh")

CHANNELS = (16, 32)
NUM_CLASSES = 10
_DIMS = ("NHWC", "HWIO", "NHWC")
_KERNEL, _STRIDE, _PAD = 5, 2, 2


class TorchNet(torch.nn.Module):
    """The reference network: NCHW (B, 1, 28, 28) in [0, 1] -> logits (B, 10)."""

    def __init__(self, channels: tuple[int, int] = CHANNELS):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, channels[0], _KERNEL, stride=_STRIDE, padding=_PAD)
        self.conv2 = torch.nn.Conv2d(
            channels[0], channels[1], _KERNEL, stride=_STRIDE, padding=_PAD
        )
        self.fc = torch.nn.Linear(channels[1] * 7 * 7, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def fashion_mnist_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST from the Debian package: float32 NHWC images in [0, 1], int64 labels."""
    try:
        source = offline.debian_fashion_mnist(split)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    images = np.stack([source[i]["image"] for i in range(len(source))])
    labels = np.array([source[i]["label"] for i in range(len(source))], np.int64)
    return images.astype(np.float32) / 255.0, labels


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch on `n` intra-op threads inside the block, restoring the old count after."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train_torch_net(
    *,
    adversarial_eps: float = 0.1,
    num_train: int = 20000,
    epochs: int = 2,
    batch_size: int = 100,
    learning_rate: float = 2e-3,
    seed: int = 0,
) -> TorchNet:
    """TorchNet trained with Adam on the first `num_train` training images, in eval mode.

    With adversarial_eps > 0 (the default) each batch is replaced by its FGSM perturbation
    from a uniform random start in the Linf ball (Wong et al., 2020's fast adversarial
    training, step 1.25 eps). Why: on a plainly trained net, at any eps, every attack breaks
    the same points (APGD with 10 iterations as with 100), so agreeing with the reference
    would prove little; on this net weaker attacks leave measurably more points robust.

    Seeded and single-threaded, so the weights do not depend on the machine's core count
    (multi-threaded reductions may sum in another order). About 7 s of one core.
    """
    x, y = fashion_mnist_arrays(f"train[:{num_train}]")
    x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    y_t = torch.from_numpy(y)
    loss_fn = torch.nn.functional.cross_entropy
    with torch_threads(1):
        torch.manual_seed(seed)
        net = TorchNet()
        optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            order = torch.randperm(num_train, generator=generator)
            for start in range(0, num_train, batch_size):
                batch = order[start : start + batch_size]
                xb, yb = x_t[batch], y_t[batch]
                if adversarial_eps > 0:
                    delta = torch.rand(xb.shape, generator=generator) * 2 - 1
                    delta = (adversarial_eps * delta).requires_grad_()
                    (grad,) = torch.autograd.grad(loss_fn(net((xb + delta).clamp(0, 1)), yb), delta)
                    delta = delta.detach() + 1.25 * adversarial_eps * grad.sign()
                    xb = (xb + delta.clamp(-adversarial_eps, adversarial_eps)).clamp(0, 1)
                loss = loss_fn(net(xb), yb)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return net.eval()


def torch_logits(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Logits of the torch net for NHWC numpy images."""
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def jax_params(net: TorchNet) -> dict[str, np.ndarray]:
    """The torch weights in JAX layouts: HWIO conv kernels, an (H*W*C, classes) linear."""
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    channels = state["conv2.weight"].shape[0]
    fc = state["fc.weight"].reshape(NUM_CLASSES, channels, 7, 7)  # torch flattens (C, H, W)
    return {
        "conv1_w": np.ascontiguousarray(state["conv1.weight"].transpose(2, 3, 1, 0)),
        "conv1_b": state["conv1.bias"],
        "conv2_w": np.ascontiguousarray(state["conv2.weight"].transpose(2, 3, 1, 0)),
        "conv2_b": state["conv2.bias"],
        "fc_w": np.ascontiguousarray(fc.transpose(2, 3, 1, 0).reshape(-1, NUM_CLASSES)),
        "fc_b": state["fc.bias"],
    }


def _conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    pad = ((_PAD, _PAD), (_PAD, _PAD))
    return jax.lax.conv_general_dilated(x, kernel, (_STRIDE,) * 2, pad, dimension_numbers=_DIMS)


def _conv_layer(kernel: np.ndarray, bias: np.ndarray) -> Callable[[jax.Array], jax.Array]:
    """TorchNet's 5x5 stride-2 conv (padding 2) on NHWC, with its input gradient written out.

    Why not plain autodiff: inside `lax` loops (every attack's body) XLA:CPU emits autodiff's
    transposed convolution, whose kernel it keeps in (H, W, O, I) layout, as a naive loop
    nest, about 4x slower than outside a loop, where it pre-transposes the kernel and calls
    its convolution library. A backward pass given the kernel already flipped and in
    (H, W, I, O) layout avoids that; the gradient is the same (the tests check it).
    """
    forward_kernel = jnp.asarray(kernel)
    flipped = np.ascontiguousarray(np.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    backward_kernel = jnp.asarray(flipped)
    bias = jnp.asarray(bias)

    @jax.custom_vjp
    def conv(x: jax.Array) -> jax.Array:
        return _conv(x, forward_kernel)

    def conv_fwd(x: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
        return _conv(x, forward_kernel), x.shape[1:3]

    def conv_bwd(size: tuple[int, ...], g: jax.Array) -> tuple[jax.Array]:
        # The transpose of a strided conv: dilate g by the stride, pad by kernel - 1 - padding
        # (plus the rows the forward stride skipped at the end), convolve with the flipped kernel.
        lo = _KERNEL - 1 - _PAD
        pad = [(lo, lo + (n + 2 * _PAD - _KERNEL) % _STRIDE) for n in size]
        dx = jax.lax.conv_general_dilated(
            g, backward_kernel, (1, 1), pad, lhs_dilation=(_STRIDE,) * 2, dimension_numbers=_DIMS
        )
        return (dx,)

    conv.defvjp(conv_fwd, conv_bwd)
    return lambda x: conv(x) + bias


def plain_forward(params: dict[str, np.ndarray], x: jax.Array) -> jax.Array:
    """TorchNet's forward pass on NHWC images with plain convolutions (autodiff's gradient)."""
    h = x
    for name in ("conv1", "conv2"):
        h = jax.nn.relu(_conv(h, jnp.asarray(params[f"{name}_w"])) + params[f"{name}_b"])
    return h.reshape(h.shape[0], -1) @ params["fc_w"] + params["fc_b"]


def jax_logits_fn(net: TorchNet) -> Callable[[jax.Array], jax.Array]:
    """`logits_fn` for hpm-jax attacks: NHWC images in [0, 1] -> logits, same weights as net.

    Build it once per net and reuse the function object: attacks hash it to reuse compiles.
    """
    params = jax_params(net)
    conv1 = _conv_layer(params["conv1_w"], params["conv1_b"])
    conv2 = _conv_layer(params["conv2_w"], params["conv2_b"])
    fc_w, fc_b = jnp.asarray(params["fc_w"]), jnp.asarray(params["fc_b"])

    def logits_fn(x: jax.Array) -> jax.Array:
        h = jax.nn.relu(conv2(jax.nn.relu(conv1(x))))
        return h.reshape(h.shape[0], -1) @ fc_w + fc_b

    return logits_fn
