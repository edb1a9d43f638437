"""The arithmetic precision of an evaluation's programs, and the logit tolerance it implies.

    from hpm_jax.attacks import precision
    with precision.applied("high"):                 # every matmul / convolution traced inside
        report = AutoAttack(fn, eps=8 / 255).run(x, y, batch_size=500)
    tol = precision.logit_tolerance("default", "gpu")    # 2**-8: TF32's rounding, x8
    near = precision.decision_margin(logits, y) <= tol  # verdicts within rounding noise

Precision. `PRECISIONS` are JAX's levels for float32 matrix products and convolutions
(`jax.default_matmul_precision`): "highest" is float32 everywhere (TPU: 6 bfloat16 passes);
"high" rounds the operands to TF32 on a GPU (11 significant bits) and computes in 3
bfloat16 passes on a TPU (~16 bits); "default" is the backend's fastest (GPU: TF32, TPU: one
bfloat16 pass, 8 bits). On the CPU all three compute in float32. The default, "high", is the
reference's arithmetic: pyautoattack leaves PyTorch's defaults, float32 on the CPU and TF32
cuDNN convolutions on a GPU (docs/design.md, section 3). `applied` sets the level while
programs are traced: it is part of every program's cache key, so programs traced under
another level compile anew. An operation that asks for its own precision (the l2 heads ask
for HIGHEST) keeps it.

Tolerance. Logits computed at another batch shape, in another process or with other
kernels differ by rounding: float32 summation order (~sqrt(K) u for a sum of K terms,
u = 2**-24: ~1e-5 of the logits' scale for K up to ~4e4), and, where the operands are
rounded (TF32, bfloat16 with u = 2**-11, 2**-8), ~2u per product, 1e-3 of the logits' scale
for TF32. `logit_tolerance` is 8u (the margin between two logits moves by twice one logit's
error, and layers add up), at least 1e-5. The rule, used by the batch-dependence and final
re-evaluation checks and by a resume: a verdict or prediction that changes where the
decision margin is within the tolerance is a near tie, not a finding. The decision margin
of a row is |z_y - max_{c != y} z_c| (with a label) or the top-2 gap (without), divided by
the row's largest |z|.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

# {level: what it means}; the values are `jax.default_matmul_precision`'s names.
PRECISIONS = {
    "highest": "float32 matmuls and convolutions on every backend (TPU: 6 bfloat16 passes)",
    "high": "GPU: TF32 (11 significant bits); TPU: 3 bfloat16 passes; CPU: float32",
    "default": "the backend's fastest: GPU TF32, TPU one bfloat16 pass; CPU float32",
}
DEFAULT = "high"  # the reference's arithmetic (module docstring)

FLOAT32_UNIT = 2.0**-24
TF32_UNIT = 2.0**-11
BF16X3_UNIT = 2.0**-16  # a float32 as two bfloat16 halves: ~16 significant bits
BF16_UNIT = 2.0**-8
# The rounding unit of the operands at each level, per platform; an unknown platform gets
# the coarsest of those listed.
_UNITS = {
    "cpu": {"highest": FLOAT32_UNIT, "high": FLOAT32_UNIT, "default": FLOAT32_UNIT},
    "gpu": {"highest": FLOAT32_UNIT, "high": TF32_UNIT, "default": TF32_UNIT},
    "tpu": {"highest": FLOAT32_UNIT, "high": BF16X3_UNIT, "default": BF16_UNIT},
}
_DTYPE_UNITS = {"float32": FLOAT32_UNIT, "float16": TF32_UNIT, "bfloat16": BF16_UNIT}
FLOAT32_FLOOR = 1e-5  # float32 summation-order noise (module docstring)
SAFETY = 8  # x u: two logits' errors in a margin, times a margin for depth


def check_precision(level: str) -> str:
    """`level` if it is one of `PRECISIONS`; else a ValueError naming them."""
    if level not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {tuple(PRECISIONS)} ({DEFAULT!r}: float32 everywhere), "
            f"got {level!r}."
        )
    return level


@contextlib.contextmanager
def applied(level: str) -> Iterator[None]:
    """Programs traced inside compute float32 matmuls and convolutions at `level`."""
    with jax.default_matmul_precision(check_precision(level)):
        yield


def rounding_unit(level: str, platform: str, compute_dtype: str = "float32") -> float:
    """The unit roundoff of the operands of a model's products at `level` on `platform`
    ("cpu", "gpu", "tpu"), or of its `compute_dtype` when that is coarser (a bfloat16
    model rounds to 2**-8 whatever the level)."""
    check_precision(level)
    by_level = _UNITS.get(platform)
    unit = by_level[level] if by_level else max(u[level] for u in _UNITS.values())
    return max(unit, _DTYPE_UNITS.get(str(jnp.dtype(compute_dtype)), FLOAT32_UNIT))


def logit_tolerance(level: str, platform: str, compute_dtype: str = "float32") -> float:
    """The relative decision margin under which a changed verdict is a near tie (see the
    module): 8 x `rounding_unit`, at least 1e-5. cpu: 1e-5; gpu at "default": 3.9e-3."""
    return max(SAFETY * rounding_unit(level, platform, compute_dtype), FLOAT32_FLOOR)


def decision_margin(logits, labels=None):
    """Per row: |z_y - max_{c != y} z_c| (labels given) or z_(1) - z_(2) (top-2 gap), over
    the row's largest |z|. jnp inside a jitted program, NumPy for host arrays."""
    xp = np if isinstance(logits, np.ndarray) else jnp
    z = logits.astype(xp.float32)
    scale = xp.max(xp.abs(z), axis=-1) + xp.finfo(xp.float32).tiny
    if labels is None:
        top2 = xp.sort(z, axis=-1)[..., -2:]
        return (top2[..., 1] - top2[..., 0]) / scale
    onehot = xp.arange(z.shape[-1]) == labels[..., None]
    z_y = xp.sum(xp.where(onehot, z, 0), axis=-1)
    other = xp.max(xp.where(onehot, -xp.inf, z), axis=-1)
    return xp.abs(z_y - other) / scale
