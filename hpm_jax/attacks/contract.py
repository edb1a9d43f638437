"""The attack contract: what every attack takes and returns, checked in one place.

    from hpm_jax.attacks import contract
    from hpm_jax.models import logits_fn
    target = logits_fn(model, variables)                    # a pytree: weights are traced
    checked = contract.validate(target, None, x, y, norm="Linf", eps=8 / 255)
    checked.eps, checked.num_classes, checked.judge_fn      # (B,) eps, C, never None
    loss, judge = contract.traced_pair(target, checked.judge_fn, x)  # jit arguments

Every attack is `attack(logits_fn, x, y, *, key, norm, eps, judge_fn=None, ...)` returning
`AttackResult(x_adv, robust)` (`types`). `logits_fn` maps NHWC images in [0, 1] to logits (B, C) and
supplies the loss and its gradient; `judge_fn` decides which points are broken and which
iterate is kept. The judge is resolved once, at the public entry point (`validate`: no
judge means `logits_fn` judges), and is never None inside an attack. The judge is always
called on the whole batch, so a batch-dependent model (HPM) is judged in batch context.

Logits functions come in two forms, and both work everywhere:
- a pytree, e.g. `jax.tree_util.Partial(model.apply, variables)` or
  `hpm_jax.models.logits_fn(model, variables, mode=...)` (preferred): its array leaves enter
  the jitted attack programs as arguments, so the weights are never compile-time constants
  (no copy of a 1 GB model inside every compiled program, fast compiles) and calling an
  attack again with new variables of the same shapes compiles nothing;
- a plain Python callable (a closure, a lambda): static, hashed by identity. Whatever it
  closes over is baked into the compiled program as constants, and a new function object
  compiles again. Fine for small models and tests.

`traced(fn)` wraps either form as the pytree the jitted programs take: array leaves
(jax and NumPy arrays) are traced, every other leaf (the function, strings, numbers) is
static and must be hashable.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hpm_jax.attacks import types
from hpm_jax.runtime import sharding


# ------------------------------------------------------------------------------ traced fns
def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array | np.ndarray | np.generic)


class _Static:
    """A non-array leaf of a logits function, compared by equality and hash (functions: by
    identity) when jit looks up its cache."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        try:
            hash(value)
        except TypeError:
            raise TypeError(
                f"a logits function holds the unhashable {type(value).__name__} {value!r:.80}; "
                "put arrays in its pytree (jax.tree_util.Partial(fn, variables)) and only "
                "hashable settings beside them."
            ) from None
        self.value = value

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Static)
            and type(self.value) is type(other.value)
            and (self.value is other.value or self.value == other.value)
        )

    def __hash__(self) -> int:
        return hash((type(self.value), self.value))


@jax.tree_util.register_pytree_node_class
class Traced:
    """A logits function as a jit argument: its array leaves traced, the rest static."""

    __slots__ = ("fn",)

    def __init__(self, fn: types.LogitsFn):
        self.fn = fn

    def __call__(self, *args: Any) -> jax.Array:
        return self.fn(*args)

    def tree_flatten(self):
        leaves, treedef = jax.tree_util.tree_flatten(self.fn)
        arrays = [leaf for leaf in leaves if _is_array(leaf)]
        static = tuple(None if _is_array(leaf) else _Static(leaf) for leaf in leaves)
        return arrays, (treedef, static)

    @classmethod
    def tree_unflatten(cls, aux, arrays):
        treedef, static = aux
        it = iter(arrays)
        leaves = [next(it) if s is None else s.value for s in static]
        return cls(jax.tree_util.tree_unflatten(treedef, leaves))


def traced(fn: types.LogitsFn, like: Any = None) -> Traced:
    """`fn` as the pytree the jitted attack programs take (see the module docstring). With
    `like` (the batch, or a Mesh), its arrays are first `place`d beside it."""
    if not isinstance(fn, Traced):
        if not callable(fn):
            raise TypeError(f"a logits function must be callable, got {type(fn).__name__}.")
        fn = Traced(fn)
        fn.tree_flatten()  # unhashable static leaves fail here, not inside jit
    return fn if like is None else place(fn, like)


def traced_pair(
    logits_fn: types.LogitsFn, judge_fn: types.LogitsFn, like: Any
) -> tuple[Traced, Traced]:
    """(loss, judge) as jit arguments placed beside `like`; one copy when they are one."""
    loss = traced(logits_fn, like)
    return loss, loss if judge_fn is logits_fn else traced(judge_fn, like)


def _replicated(like: Any) -> jax.sharding.Sharding | None:
    """A sharding that replicates over the devices of `like` (a Mesh or a concrete array)."""
    if isinstance(like, Mesh):
        return NamedSharding(like, PartitionSpec())
    if not isinstance(like, jax.Array) or isinstance(like, jax.core.Tracer):
        return None  # a NumPy batch goes to the default device, as the weights do
    if isinstance(like.sharding, NamedSharding):
        return NamedSharding(like.sharding.mesh, PartitionSpec())
    devices = sorted(like.sharding.device_set, key=lambda d: d.id)
    if len(devices) == 1:
        return jax.sharding.SingleDeviceSharding(devices[0])
    return NamedSharding(Mesh(np.asarray(devices), ("devices",)), PartitionSpec())


def place(fn: types.LogitsFn, like: Any, memo: dict[int, Any] | None = None) -> types.LogitsFn:
    """`fn` with its arrays replicated on the devices of `like` (a batch or a Mesh), so a
    model restored onto one device can attack a batch sharded over many. Arrays already
    replicated there are not copied: place a model once (the chain and MSA do) rather than
    have every attack call copy it. Functions placed with one `memo` dict share the copies
    of the arrays they share (the head modes of one model)."""
    target = _replicated(like)
    if target is None:
        return fn
    memo = {} if memo is None else memo

    def move(leaf):
        if not _is_array(leaf) or isinstance(leaf, jax.core.Tracer):
            return leaf
        if isinstance(leaf, jax.Array) and leaf.sharding.is_equivalent_to(target, leaf.ndim):
            return leaf
        if id(leaf) not in memo:  # several processes: each puts its own devices' copies
            moved = (jax.device_put(leaf, target) if target.is_fully_addressable
                     else sharding.put(np.asarray(leaf), target))  # fmt: skip
            memo[id(leaf)] = (leaf, moved)  # keeps id(leaf) unique
        return memo[id(leaf)][1]

    leaves, tree = jax.tree_util.tree_flatten(fn)
    return jax.tree_util.tree_unflatten(tree, [move(leaf) for leaf in leaves])


def call(fn: types.LogitsFn, x: jax.Array, key: jax.Array | None, randomized: bool) -> jax.Array:
    """fn(x, key) for a randomized model, fn(x) otherwise."""
    return fn(x, key) if randomized else fn(x)


# ------------------------------------------------------------------------------- validation
class Checked(NamedTuple):
    """What `validate` hands the attack: eps as (B,) in x's dtype, the number of classes,
    and the judge (logits_fn itself when none was given), never None."""

    eps: jax.Array
    num_classes: int
    judge_fn: types.LogitsFn


def check_norm(norm: str, allowed: tuple[str, ...] = types.NORMS) -> None:
    if norm not in allowed:
        raise ValueError(f"norm must be one of {allowed}, got {norm!r}.")


def check_eps(eps: Any, batch: int) -> float:
    """eps must be a finite number > 0, or one such value per image (shape (batch,)).
    Returns the smallest value (1.0 for an empty batch)."""
    if np.ndim(eps) == 0:
        try:
            value = float(eps)
        except (TypeError, ValueError):
            value = float("nan")
        if isinstance(eps, bool | str | bytes) or not np.isfinite(value) or value <= 0:
            raise ValueError(f"eps must be a finite number > 0, got {eps!r}.")
        return value
    values = np.asarray(eps, dtype=np.float64)
    if values.shape != (batch,) or not np.all(np.isfinite(values) & (values > 0)):
        raise ValueError(
            f"eps must be a number > 0 or one finite value > 0 per image, shape ({batch},); "
            f"got shape {values.shape} with values {values.ravel()[:4]}."
        )
    return float(values.min()) if values.size else 1.0


def check_int(name: str, value: Any, low: int) -> None:
    """An integer setting (not a bool) of at least `low`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")


def check_range(name: str, value: Any, low: float, high: float, *, closed: bool = True) -> None:
    """A number in [low, high] (closed) or (low, high) (open); NaN never is."""
    try:
        inside = low <= value <= high if closed else low < value < high
    except TypeError:
        inside = False
    if not inside:
        brackets = "[]" if closed else "()"
        raise ValueError(
            f"{name} must lie in {brackets[0]}{low:g}, {high:g}{brackets[1]}, got {value!r}."
        )


def check_images(x: Any, y: Any) -> None:
    """Shapes and dtypes of a batch, and (for concrete arrays) images in [0, 1]."""
    if np.ndim(x) != 4:
        raise ValueError(
            f"x must be a batch of NHWC images (4 dimensions), got shape {tuple(np.shape(x))}."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"x must be floating point in [0, 1], got {x.dtype}; use x.astype('float32') / 255."
        )
    if np.shape(y) != (x.shape[0],):
        raise ValueError(
            f"y must hold one label per image, shape ({x.shape[0]},), got {tuple(np.shape(y))}."
        )
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"y must be integer class labels, got {y.dtype}.")
    if isinstance(x, jax.core.Tracer) or x.shape[0] == 0:
        return
    lo, hi = float(jnp.min(x)), float(jnp.max(x))
    if not (lo >= 0 and hi <= 1):  # also catches NaN
        raise ValueError(
            f"x must be images in [0, 1], got values in [{lo:.4g}, {hi:.4g}]. Pass raw images "
            "and put any normalisation inside logits_fn (the models do it themselves)."
        )


def check_labels(y: Any, num_classes: int) -> None:
    """Labels in [0, num_classes) (skipped for traced or empty labels)."""
    if isinstance(y, jax.core.Tracer) or np.size(y) == 0:
        return
    if isinstance(y, jax.Array) and not y.is_fully_addressable:  # multi-process: on device
        lo, hi = int(jnp.min(y)), int(jnp.max(y))
    else:  # on the host: a jnp reduction would compile once per dataset size
        values = np.asarray(y)
        lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got values in [{lo}, {hi}].")


def output_classes(fn: types.LogitsFn, x: Any, name: str, *, randomized: bool = False) -> int:
    """The number of classes `fn` scores, checking it returns (B, C) logits (no compute)."""
    probe = jax.ShapeDtypeStruct(x.shape, x.dtype)
    key = jax.random.key(0)
    shape = jax.eval_shape(lambda v: call(fn, v, key, randomized), probe).shape
    if len(shape) != 2 or shape[0] != x.shape[0]:
        raise ValueError(
            f"{name} must map a batch of {x.shape[0]} images to logits of shape "
            f"({x.shape[0]}, num_classes), got shape {tuple(shape)}."
        )
    return int(shape[1])


def validate(
    logits_fn: types.LogitsFn,
    judge_fn: types.LogitsFn | None,
    x: Any,
    y: Any,
    *,
    norm: str,
    eps: Any,
    randomized: bool = False,
    allowed_norms: tuple[str, ...] = types.NORMS,
    min_classes: int = 2,
    needs: str = "an attack",
) -> Checked:
    """Every check the contract asks of an attack's arguments, with errors that name the
    problem and the fix; call it outside `jit` (value checks need concrete arrays and are
    skipped for tracers). `needs` names what requires `min_classes` classes."""
    check_norm(norm, allowed_norms)
    check_images(x, y)
    check_eps(eps, x.shape[0])
    num_classes = output_classes(logits_fn, x, "logits_fn", randomized=randomized)
    if num_classes < min_classes:
        raise ValueError(
            f"{needs} needs at least {min_classes} classes; logits_fn gives {num_classes}."
        )
    if judge_fn is None:
        judge_fn = logits_fn
    elif judge_fn is not logits_fn:
        judged = output_classes(judge_fn, x, "judge_fn", randomized=randomized)
        if judged != num_classes:
            raise ValueError(
                f"judge_fn must score the same {num_classes} classes as logits_fn, got {judged}."
            )
    check_labels(y, num_classes)
    eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), x.shape[:1])
    return Checked(eps, num_classes, judge_fn)


def check_dataset(
    x: np.ndarray, y: np.ndarray, norm: str, eps: float, num_classes: int | None
) -> None:
    """A whole evaluation set (AutoAttack.run's): the checks of shapes and dtypes on the first
    image (as every attack checks them), the value ranges of all images and labels in NumPy
    (the set never goes to the device whole)."""
    if y.shape != (len(x),):
        raise ValueError(f"y must hold one label per image, shape ({len(x)},), got {y.shape}.")
    check_norm(norm)
    check_eps(eps, 1)
    check_images(x[:1], y[:1])
    lo, hi = float(np.min(x)), float(np.max(x))
    if not (0 <= lo and hi <= 1):  # also catches NaN
        raise ValueError(
            f"x must be images in [0, 1], got values in [{lo:.4g}, {hi:.4g}]. Pass raw images "
            "and put any normalisation inside logits_fn (the models do it themselves)."
        )
    if num_classes is not None and not 0 <= int(np.min(y)) <= int(np.max(y)) < num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}], got values in "
            f"[{int(np.min(y))}, {int(np.max(y))}]."
        )
