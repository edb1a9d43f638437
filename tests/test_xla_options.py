"""hpm_jax.runtime.xla_options.jit: jax.jit with XLA:CPU's YNNPACK fusions off, on the CPU only."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from platform_support import cpu_only

from hpm_jax.runtime import xla_options
from hpm_jax.runtime.xla_options import jit

pytestmark = cpu_only("XLA:CPU's compiler options")


def _conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _args():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 16, 16, 64)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 64, 64)), jnp.float32)
    return x, w


def _compiled_text(fn, *args):
    return fn.lower(*args).compile().as_text()


def test_convolutions_leave_ynnpack_on_the_cpu_and_the_values_stay():
    x, w = _args()
    ours, plain = jit(_conv), jax.jit(_conv)
    if xla_options.compiler_options() is None:
        pytest.skip("this XLA does not know the option; jit is then plain jax.jit")
    assert "__ynn" not in _compiled_text(ours, x, w)
    if "__ynn" not in _compiled_text(plain, x, w):  # this large a convolution goes to YNNPACK
        pytest.skip("XLA:CPU does not use YNNPACK on this CPU; nothing to turn off")
    # The same sums of 576 products in another order: each differs from the exact value by at
    # most 576 * 2^-24 * sum |x_i w_i| (the classic bound for float32 summation).
    bound = 576 * 2.0**-24 * np.asarray(plain(jnp.abs(x), jnp.abs(w)))
    assert np.all(np.abs(np.asarray(ours(x, w)) - np.asarray(plain(x, w))) <= 2 * bound)


def test_jit_behaves_as_jax_jit():
    calls = []

    @functools.partial(jit, static_argnames="k")
    def scaled(x, *, k):
        calls.append(k)  # runs once per trace
        return x * k

    x = jnp.arange(4.0)
    np.testing.assert_array_equal(np.asarray(scaled(x, k=2)), [0.0, 2.0, 4.0, 6.0])
    scaled(x + 1, k=2)
    assert calls == [2] and scaled._cache_size() == 1  # the jitted function's attributes
    assert scaled.__name__ == "scaled"
    with pytest.raises(TypeError, match="compiler_options"):
        jit(_conv, compiler_options={})


def test_an_option_xla_does_not_know_is_dropped(monkeypatch):
    monkeypatch.setattr(xla_options, "CPU_OPTIONS", {"xla_cpu_no_such_option_hpm": ""})
    xla_options.compiler_options.cache_clear()
    try:
        assert xla_options.compiler_options() is None
        x, w = _args()
        assert jit(_conv)(x, w).shape == x.shape
    finally:
        xla_options.compiler_options.cache_clear()
