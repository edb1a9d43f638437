"""`jit`: `jax.jit` plus the XLA:CPU compiler options hpm-jax's model programs run fastest with.

    from hpm_jax.runtime.xla_options import jit
    step = jit(step_fn, static_argnames="config")         # used exactly like jax.jit
    @functools.partial(jit, static_argnames="n")           # or as a decorator
    def judge(fn, x, y, *, n): ...

XLA:CPU (jax 0.10) hands convolutions and matrix products to YNNPACK fusions by default. For
the convolution networks of the model zoo its classic (Eigen) kernels are faster: a
ResNet-18's forward pass takes 0.82-0.89 of the time, forward + input gradient 0.91-0.93,
from 12 to 128 images (`benchmarks/xla_cpu_options.py`, benchmarks/RESULTS.md).
`CPU_OPTIONS` turns the YNNPACK fusions off.

The options reach only programs compiled while the default backend is the CPU, decided at
the first call (importing hpm_jax initialises no backend; GPU and TPU compilations never see
a CPU option). An XLA that no longer knows an option runs without it rather than failing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

# Empty: no op kind goes to YNNPACK, so convolutions and dots use XLA:CPU's own kernels.
CPU_OPTIONS: dict[str, str] = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def compiler_options() -> dict[str, str] | None:
    """The options for programs compiled now: `CPU_OPTIONS` on the CPU if XLA accepts them."""
    if jax.default_backend() != "cpu":
        return None
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS)(0.0)
    except jax.errors.JaxRuntimeError:  # "No such compile option" in a later XLA
        return None
    return dict(CPU_OPTIONS)


class _Jitted:
    """A `jax.jit` built at the first call, with `compiler_options()`; attributes such as
    `lower` and `_cache_size` are the jitted function's."""

    def __init__(self, fun: Callable, jit_kwargs: dict[str, Any]):
        functools.update_wrapper(self, fun)
        self._fun, self._jit_kwargs, self._jitted = fun, jit_kwargs, None

    def _get(self) -> Any:
        if self._jitted is None:
            self._jitted = jax.jit(
                self._fun, compiler_options=compiler_options(), **self._jit_kwargs
            )
        return self._jitted

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._get()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_j") or name == "_fun":  # not yet set (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self._get(), name)


def jit(fun: Callable | None = None, /, **jit_kwargs: Any) -> Any:
    """`jax.jit(fun, **jit_kwargs)` compiled with `compiler_options()`."""
    if fun is None:
        return functools.partial(jit, **jit_kwargs)
    if "compiler_options" in jit_kwargs:
        raise TypeError(
            "hpm_jax.runtime.xla_options.jit sets compiler_options itself; use jax.jit."
        )
    return _Jitted(fun, jit_kwargs)
