"""The training state, the optimizer and its learning-rate schedules, weight averaging.

    optimizer = make_optimizer(config.train)              # SGD + momentum + weight decay
    state = create_state(variables, optimizer, ema=config.train.ema_decay > 0)
    state["step"], state["params"], state["collections"]  # batch_stats, prototypes, ...
    eval_vars = eval_variables(state)                      # the averaged weights when kept

The state is a plain dict (a pytree Orbax saves and restores as is):
`step` (int32 scalar), `params`, `collections` (every other variable collection of the
model: `batch_stats`, and `prototypes` for HPM heads), `opt_state`, and `ema` (an
exponential moving average of params and collections) when weight averaging is on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ("cosine", "piecewise", "constant")

# Parameter names that are not weights: weight decay would pull them towards an arbitrary
# value. HPM's `log_scale` is a temperature (log s); decaying it would drag s towards 1.
_NO_DECAY = ("log_scale",)


def make_schedule(train: ml_collections.ConfigDict) -> optax.Schedule:
    """The learning rate per step: linear warmup from 0, then cosine / piecewise / constant.

    Keys of `train`: learning_rate, num_steps, schedule, warmup_steps, and for "piecewise"
    piecewise_boundaries (fractions of num_steps, e.g. (0.5, 0.75)) and piecewise_factor.
    """
    lr, total, warmup = float(train.learning_rate), int(train.num_steps), int(train.warmup_steps)
    if train.schedule not in SCHEDULES:
        raise ValueError(
            f"train.schedule must be one of {SCHEDULES}, got {train.schedule!r}; set e.g. "
            "--config.train.schedule=cosine."
        )
    if not 0 <= warmup < max(total, 1):
        raise ValueError(
            f"train.warmup_steps={warmup} must be >= 0 and below train.num_steps={total}."
        )
    rest = total - warmup
    if train.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, max(rest, 1))
    elif train.schedule == "piecewise":
        boundaries = tuple(train.piecewise_boundaries)
        if any(not 0 < b < 1 for b in boundaries):
            raise ValueError(
                f"train.piecewise_boundaries are fractions of train.num_steps in (0, 1), got "
                f"{boundaries}."
            )
        main = optax.piecewise_constant_schedule(
            lr,
            {max(round(b * total) - warmup, 1): float(train.piecewise_factor) for b in boundaries},
        )
    else:
        main = optax.constant_schedule(lr)
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _decay_mask(params: Any) -> Any:
    def decayed(path, _):
        return not any(getattr(k, "key", None) in _NO_DECAY for k in path)

    return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """SGD with (Nesterov) momentum and coupled weight decay, as the PyTorch references use:
    the update is lr * (momentum buffer of (grad + weight_decay * param))."""
    return optax.chain(
        optax.add_decayed_weights(float(train.weight_decay), mask=_decay_mask),
        optax.sgd(make_schedule(train), momentum=float(train.momentum), nesterov=train.nesterov),
    )


def create_state(
    variables: Mapping[str, Any], optimizer: optax.GradientTransformation, *, ema: bool
) -> dict[str, Any]:
    """A fresh training state at step 0 from model variables ({"params", collections...})."""
    if "params" not in variables:
        raise ValueError(f"Model variables need a 'params' collection, got {sorted(variables)}.")
    params = variables["params"]
    collections = {k: v for k, v in variables.items() if k != "params"}
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "collections": collections,
        "opt_state": optimizer.init(params),
    }
    if ema:
        state["ema"] = {"params": params, "collections": collections}
    return state


def model_variables(state: Mapping[str, Any]) -> dict[str, Any]:
    """The live model's variables, for `model.apply`."""
    return {"params": state["params"], **state["collections"]}


def eval_variables(state: Mapping[str, Any]) -> dict[str, Any]:
    """The variables evaluated and saved: the weight average when kept, else the live ones."""
    if "ema" in state:
        return {"params": state["ema"]["params"], **state["ema"]["collections"]}
    return model_variables(state)


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    """The averaging decay at `step`, warmed up as min(decay, (1 + t) / (10 + t)), so the
    average forgets the random initialisation early instead of lagging it for 1/(1 - decay)
    steps."""
    t = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def update_ema(ema: Any, new: Any, decay: jax.Array) -> Any:
    """ema <- decay * ema + (1 - decay) * new for floating leaves; others (counters) copied."""

    def mix(old, value):
        if jnp.issubdtype(value.dtype, jnp.floating):
            return (decay * old + (1.0 - decay) * value).astype(value.dtype)
        return value

    return jax.tree.map(mix, ema, new)
