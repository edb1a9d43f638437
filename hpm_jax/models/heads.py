"""Classifier heads: they map penultimate features (B, D) to logits (B, C).

    head = HPMHead(num_classes=10)                       # or FCHead(10), L2Head(10)
    variables = head.init(key, features)                 # params fc, log_scale; prototypes
    logits = head.apply(variables, features)                         # HPM logits (eval)
    out, updates = head.apply(variables, features, labels, train=True,
                              mode=("hpm", "fc"), mutable=["prototypes"])
    out["hpm"], out["fc"]                                 # one pass, EMA updated once

Every head shares one call signature, `head(features, labels=None, *, train, mode)`.
`mode` picks the logits (the surrogates of the Mixed Surrogate Attack share the same
variables): "hpm" (alias "ste"), "fc", "ema_l2", "soft"; a tuple of modes returns a dict
{mode: logits}; None (the default) the head's own output. Each head class declares the
modes it really has and the one that judges it:

    FCHead.logits_modes == ("fc",);  L2Head.logits_modes == ("ema_l2",)
    HPMHead.logits_modes == ("fc", "ema_l2", "soft", "hpm");  HPMHead.judge_mode == "hpm"
    HPMHead.coupled_modes == {"soft", "hpm"}      # a row's logits depend on the whole batch

Asking a head for a mode it lacks is a ValueError (an FC head has no prototypes, so its
"ema_l2" logits would be its FC logits under another name).

The maths is docs/design.md, section 1:

* FC: z_fc = f W + b (a Dense named `fc`).
* l2: z[c] = -s ||f - P[c]||_2 (or its square), s = exp(log_scale) learned.
* HPM: A = onehot(argmax z_fc) with the gradient of softmax(z_fc / T) (straight-through);
  n = A^T 1, S = A^T f; P_mix by the "count" or "convex" rule; logits l2 against P_mix.

Prototypes P_ema (collection `prototypes`: `ema` (C, D), `seen` (C,) examples observed)
are updated when `train=True` and the collection is mutable, by an EMA of per-class means
of the detached features over the global batch, using the true labels. Logits always use
the stored P_ema, i.e. the one before this batch's update; the update is a side output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from hpm_jax.ops import straight_through_onehot

MODES = ("hpm", "ste", "fc", "ema_l2", "soft")  # every mode name of any head
ALIASES = {"ste": "hpm"}  # the straight-through "ste" logits are the "hpm" logits
MIXINGS = ("count", "convex")
PROTOTYPES = "prototypes"  # the Flax collection holding `ema` and `seen`

Mode = str | Sequence[str]
Logits = jax.Array | dict[str, jax.Array]
_HIGHEST = jax.lax.Precision.HIGHEST


def canonical_mode(mode: str) -> str:
    """The mode a name stands for: "ste" -> "hpm", any other name itself."""
    return ALIASES.get(mode, mode)


def parse_modes(mode: Mode | None, head: nn.Module | None = None) -> tuple[tuple[str, ...], bool]:
    """(mode names, whether a single name was given); ValueError for unknown names.

    With `head` (a head module or class declaring `logits_modes` and `judge_mode`), None
    stands for its `judge_mode`, and a name the head does not have is a ValueError.
    """
    if mode is None and head is not None:
        mode = head.judge_mode
    if isinstance(mode, str):
        names, single = (mode,), True
    elif isinstance(mode, (tuple, list)) and mode and all(isinstance(m, str) for m in mode):
        names, single = tuple(mode), False
    else:
        raise TypeError(f"mode must be a mode name or a non-empty tuple of names, got {mode!r}.")
    unknown = [m for m in names if m not in MODES]
    if unknown:
        raise ValueError(f"Unknown head mode(s) {unknown}; choose from {list(MODES)}.")
    if head is not None:
        missing = [m for m in names if canonical_mode(m) not in head.logits_modes]
        if missing:
            cls = head if isinstance(head, type) else type(head)
            raise ValueError(
                f"{cls.__name__} has no logits mode(s) {missing}: its modes are "
                f"{list(head.logits_modes)}. Other modes need another head, e.g. an FC model "
                "as an HPM model (fc, ema_l2, soft, hpm) by "
                "hpm_jax.models.prototypes.with_head and init_prototypes."
            )
    return names, single


def _output(names: tuple[str, ...], single: bool, logits_of: Callable[[str], jax.Array]) -> Logits:
    out = {name: logits_of(name) for name in names}
    return out[names[0]] if single else out


def l2_logits(
    features: jax.Array, prototypes: jax.Array, scale: jax.Array, *, squared: bool = False
) -> jax.Array:
    """-scale * ||f - P[c]|| (or its square) for every example and class: (B, D), (C, D) -> (B, C).

    Uses ||f||^2 - 2 f.P + ||P||^2 (B x C x D differences would not fit for ImageNet) at the
    highest matmul precision, since TPUs' default bfloat16 passes would ruin the cancellation.
    The un-squared distance has gradient 0, not NaN, where f equals a prototype.
    """
    chex.assert_rank([features, prototypes], 2)
    chex.assert_equal_shape_suffix([features, prototypes], 1)
    cross = jnp.matmul(features, prototypes.T, precision=_HIGHEST)
    sq = jnp.sum(features**2, axis=-1, keepdims=True) - 2 * cross + jnp.sum(prototypes**2, axis=-1)
    sq = jnp.maximum(sq, 0.0)  # rounding can make it slightly negative
    if squared:
        return -scale * sq
    positive = sq > 0
    dist = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
    return -scale * dist


def mix_prototypes(
    p_ema: jax.Array,
    counts: jax.Array,
    sums: jax.Array,
    *,
    mixing: str = "count",
    pseudo_count: float = 10.0,
    lam: float = 0.5,
) -> jax.Array:
    """P_mix from dataset prototypes (C, D), batch counts n (C,) and feature sums S (C, D).

    "count":  (m P_ema[c] + S[c]) / (m + n[c]), m = pseudo_count.
    "convex": lam P_ema[c] + (1 - lam) S[c] / n[c] where n[c] > 0, else P_ema[c].
    """
    chex.assert_rank([p_ema, counts, sums], [2, 1, 2])
    chex.assert_equal_shape([p_ema, sums])
    if mixing == "count":
        return (pseudo_count * p_ema + sums) / (pseudo_count + counts)[:, None]
    if mixing == "convex":
        present = (counts > 0)[:, None]
        # Divide by 1 where n = 0: that branch is discarded, and its gradient stays finite.
        p_batch = sums / jnp.where(present, counts[:, None], 1.0)
        return jnp.where(present, lam * p_ema + (1 - lam) * p_batch, p_ema)
    raise ValueError(f"Unknown mixing {mixing!r}; choose one of {list(MIXINGS)}.")


def ema_update(
    ema: jax.Array, seen: jax.Array, features: jax.Array, labels: jax.Array, decay: float
) -> tuple[jax.Array, jax.Array]:
    """New (ema, seen) after one batch: class means mu[c] of the detached features.

    P[c] <- decay P[c] + (1 - decay) mu[c] for classes in the batch; a class seen for the first
    time (seen == 0) takes mu[c]; absent classes keep P[c]. Labels outside [0, C) (e.g. -1 for
    padding) are left out. `seen` counts the examples observed per class.
    """
    chex.assert_rank([ema, seen, features, labels], [2, 1, 2, 1])
    chex.assert_equal_shape_prefix([features, labels], 1)
    features = jax.lax.stop_gradient(features).astype(ema.dtype)
    onehot = jax.nn.one_hot(labels, ema.shape[0], dtype=ema.dtype)  # zero rows off [0, C)
    counts = onehot.sum(axis=0)
    sums = jnp.matmul(onehot.T, features, precision=_HIGHEST)
    present = counts > 0
    mean = sums / jnp.where(present, counts, 1.0)[:, None]
    blended = jnp.where((seen > 0)[:, None], decay * ema + (1 - decay) * mean, mean)
    new_ema = jnp.where(present[:, None], blended, ema)
    return new_ema, seen + counts.astype(seen.dtype)


def _check_inputs(features: jax.Array, labels: jax.Array | None) -> None:
    chex.assert_rank(features, 2)
    if labels is not None:
        chex.assert_shape(labels, (features.shape[0],))
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}.")


class _PrototypeHead(nn.Module):
    """Shared pieces of the heads with learned scale and EMA prototypes."""

    num_classes: int
    squared: bool = False
    ema_decay: float = 0.99
    init_scale: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}; e.g. 0.99.")
        if not self.init_scale > 0:
            raise ValueError(
                f"init_scale must be > 0 (it is exp(log_scale)), got {self.init_scale}."
            )
        super().__post_init__()

    def _scale_and_prototypes(
        self, features: jax.Array
    ) -> tuple[jax.Array, nn.Variable, nn.Variable]:
        cls = type(self).__name__
        if not self.is_initializing() and not self.has_variable(PROTOTYPES, "ema"):
            raise ValueError(
                f"{cls} needs the `{PROTOTYPES}` collection (ema, seen) and the `log_scale` "
                "parameter. Turn an FC model's variables into this model's with "
                "hpm_jax.models.prototypes.with_head(variables, model), then fill the prototypes "
                "with hpm_jax.models.prototypes.init_prototypes."
            )
        c, d = self.num_classes, features.shape[-1]
        log_scale = self.param(
            "log_scale", nn.initializers.constant(math.log(self.init_scale)), (), jnp.float32
        )
        ema = self.variable(PROTOTYPES, "ema", jnp.zeros, (c, d), jnp.float32)
        seen = self.variable(PROTOTYPES, "seen", jnp.zeros, (c,), jnp.int32)
        return jnp.exp(log_scale), ema, seen

    def _maybe_update(
        self, ema: nn.Variable, seen: nn.Variable, features: jax.Array, labels, train: bool
    ) -> None:
        # The update is skipped at init (prototypes start at zero, `seen` 0) and in eval mode.
        if not train or self.is_initializing() or not self.is_mutable_collection(PROTOTYPES):
            return
        if labels is None:
            raise ValueError(
                f"{type(self).__name__}: training with a mutable `{PROTOTYPES}` collection "
                "updates the prototypes from the true labels; pass labels, or leave "
                f"`{PROTOTYPES}` out of `mutable` to keep them fixed."
            )
        ema.value, seen.value = ema_update(ema.value, seen.value, features, labels, self.ema_decay)


class FCHead(nn.Module):
    """The fully connected head of a standard classifier: z = f W + b (a Dense named `fc`).

    Its one mode is "fc" (a tuple ("fc", ...) gives a dict); it has no prototypes, so "ema_l2",
    "soft" and "hpm" are ValueErrors.
    """

    # The head's declarations (see the module docstring): plain class attributes, since any
    # annotation, ClassVar included, makes Flax's dataclass transform turn them into fields.
    logits_modes = ("fc",)
    judge_mode = "fc"
    coupled_modes = frozenset()

    num_classes: int

    @nn.compact
    def __call__(
        self,
        features: jax.Array,
        labels: jax.Array | None = None,
        *,
        train: bool = False,
        mode: Mode | None = None,
    ) -> Logits:
        del train
        names, single = parse_modes(mode, self)
        _check_inputs(features, labels)
        logits = nn.Dense(self.num_classes, name="fc")(features)
        return _output(names, single, lambda _: logits)


class L2Head(_PrototypeHead):
    """l2 logits against EMA prototypes: z[c] = -s ||f - P_ema[c]|| (squared: its square).

    Fields: num_classes; squared (False); ema_decay (0.99); init_scale (1.0, the initial s).
    Its one mode is "ema_l2"; it has no FC layer, so "fc", "soft" and "hpm" are ValueErrors.
    """

    logits_modes = ("ema_l2",)
    judge_mode = "ema_l2"
    coupled_modes = frozenset()

    @nn.compact
    def __call__(
        self,
        features: jax.Array,
        labels: jax.Array | None = None,
        *,
        train: bool = False,
        mode: Mode | None = None,
    ) -> Logits:
        names, single = parse_modes(mode, self)
        _check_inputs(features, labels)
        scale, ema, seen = self._scale_and_prototypes(features)
        logits = l2_logits(features, ema.value, scale, squared=self.squared)
        self._maybe_update(ema, seen, features, labels, train)
        return _output(names, single, lambda _: logits)


class HPMHead(_PrototypeHead):
    """Hybrid Prototype Mixing: the l2 re-classifier against FC-assigned batch prototypes.

    Fields (plain values, so config knobs):
      num_classes.
      mixing: "count" (default; P_mix = (m P_ema + S) / (m + n)) or "convex".
      pseudo_count: m of "count", 10.0: about a batch's per-class count (128 / 10 classes),
        so dataset and batch prototypes weigh alike.
      lam: weight of P_ema in "convex", 0.5.
      ema_decay: beta of the prototype EMA, 0.99 (fine-tuning starts from exact class means
        from `init_prototypes`, so a long memory; lower it when training from scratch).
      squared: squared distances (False: un-squared, s-Lipschitz logits).
      ste_temperature: T of the softmax whose gradient the argmax assignment uses, 1.0.
      init_scale: the initial s = exp(log_scale), 1.0.

    Variables: params `fc` (Dense kernel, bias: FCHead's path, so FC weights drop in) and
    `log_scale`; collection `prototypes` with `ema` (C, D) and `seen` (C,).

    Modes: "hpm" / "ste" (hard argmax assignments, straight-through gradient), "fc" (z_fc),
    "ema_l2" (l2 against P_ema only), "soft" (A = softmax(z_fc / T) forward too: smooth).
    "hpm" and "soft" logits depend on the whole batch (through n and S). The default (None)
    is "hpm", the model's real output.
    """

    # In the order evaluation reports them: the surrogates, then the real output.
    logits_modes = ("fc", "ema_l2", "soft", "hpm")
    judge_mode = "hpm"
    coupled_modes = frozenset({"soft", "hpm"})

    mixing: str = "count"
    pseudo_count: float = 10.0
    lam: float = 0.5
    ste_temperature: float = 1.0

    def __post_init__(self):
        if self.mixing not in MIXINGS:
            raise ValueError(f"Unknown mixing {self.mixing!r}; choose one of {list(MIXINGS)}.")
        if not self.pseudo_count > 0:
            raise ValueError(
                f"pseudo_count must be > 0, got {self.pseudo_count}; it keeps (m + n[c]) > 0."
            )
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {self.lam}.")
        if not self.ste_temperature > 0:
            raise ValueError(f"ste_temperature must be > 0, got {self.ste_temperature}.")
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        features: jax.Array,
        labels: jax.Array | None = None,
        *,
        train: bool = False,
        mode: Mode | None = None,
    ) -> Logits:
        names, single = parse_modes(mode, self)
        _check_inputs(features, labels)
        # fc and the prototypes are always created, so any mode initialises every variable.
        z_fc = nn.Dense(self.num_classes, name="fc")(features)
        scale, ema, seen = self._scale_and_prototypes(features)
        p_ema = ema.value  # the stored prototypes: logits never see this batch's update
        temperature = self.ste_temperature

        def mixed_logits(assign: jax.Array) -> jax.Array:
            assign = assign.astype(features.dtype)
            counts = assign.sum(axis=0)
            sums = jnp.matmul(assign.T, features, precision=_HIGHEST)
            p_mix = mix_prototypes(
                p_ema.astype(features.dtype),
                counts,
                sums,
                mixing=self.mixing,
                pseudo_count=self.pseudo_count,
                lam=self.lam,
            )
            return l2_logits(features, p_mix, scale, squared=self.squared)

        computed: dict[str, jax.Array] = {}

        def logits_of(name: str) -> jax.Array:
            name = canonical_mode(name)
            if name not in computed:  # shared pieces are computed once per call
                if name == "fc":
                    computed[name] = z_fc
                elif name == "ema_l2":
                    computed[name] = l2_logits(features, p_ema, scale, squared=self.squared)
                elif name == "soft":
                    computed[name] = mixed_logits(jax.nn.softmax(z_fc / temperature, axis=-1))
                else:
                    computed[name] = mixed_logits(straight_through_onehot(z_fc, temperature))
            return computed[name]

        out = _output(names, single, logits_of)
        self._maybe_update(ema, seen, features, labels, train)
        return out
