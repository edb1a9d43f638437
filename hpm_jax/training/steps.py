"""The jitted step functions of training and evaluation (pure, module level).

    step_fn = jax.jit(functools.partial(train_step, model, optimizer, objective, 0.999),
                      donate_argnums=0)
    state, metrics = step_fn(state, batch, key)          # key: the run's base key
    eval_fn = jax.jit(functools.partial(eval_step, model, attack, "hpm"))
    counts = eval_fn(variables, batch, key, batch_index)

Randomness is `jax.random.fold_in(key, state["step"])`, so a resumed run draws exactly what an
uninterrupted one would at the same step. Batches are global arrays sharded over the mesh's
`data` axis and the state is replicated; the compiler inserts the cross-device reductions,
so a step computes the same thing on 1 device or 8, on one host or several.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from hpm_jax import models
from hpm_jax.attacks import losses, pgd
from hpm_jax.training import objectives
from hpm_jax.training import train_state as state_lib

Batch = dict[str, jax.Array]


def train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    objective: objectives.Objective,
    ema_decay: float,
    state: dict[str, Any],
    batch: Batch,
    key: jax.Array,
) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """One adversarial-training step: craft x_adv, descend the objective, average weights.

    Returns the new state (step + 1) and scalar metrics (the loss, its terms, training
    accuracies, the gradient norm).
    """
    step = state["step"]
    x, y = batch["image"], batch["label"]
    x_adv = objectives.adversarial_examples(
        model, state_lib.model_variables(state), x, y, jax.random.fold_in(key, step), objective
    )
    grad_fn = jax.value_and_grad(objectives.objective_loss, has_aux=True)
    (_, (metrics, collections)), grads = grad_fn(
        state["params"], model, state["collections"], x, x_adv, y, objective
    )
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {
        "step": step + 1,
        "params": params,
        "collections": collections,
        "opt_state": opt_state,
    }
    if "ema" in state:
        new_state["ema"] = state_lib.update_ema(
            state["ema"],
            {"params": params, "collections": collections},
            state_lib.ema_decay_at(step, ema_decay),
        )
    metrics["grad_norm"] = optax.tree.norm(grads)
    return new_state, metrics


def eval_step(
    model: nn.Module,
    attack: objectives.AttackSpec,
    judge_mode: str | None,
    variables: dict[str, Any],
    batch: Batch,
    key: jax.Array,
    index: jax.Array | int,
) -> dict[str, jax.Array]:
    """Clean and PGD correct counts over the real (unmasked) examples of eval batch `index`.

    The model runs in eval mode. The attack differentiates `attack.mode`'s logits; the head
    in `judge_mode` (the model's real output, `hpm_jax.models.judge_mode(model)`; None is
    the same) decides correctness, on the whole batch, so a
    batch-dependent head is judged in batch context. A point wrong on the clean input counts
    as broken.
    """
    x, y, mask = batch["image"], batch["label"], batch["mask"]
    fns = models.logits_fns(model, variables, (judge_mode, attack.mode))  # one if they agree
    judge = fns[judge_mode]
    clean_correct = losses.correct(judge(x), y)
    x_adv = pgd.perturb(
        fns[attack.mode], x, y, key=jax.random.fold_in(key, index), eps=attack.eps,
        step_size=attack.step_size, num_steps=attack.num_steps, norm=attack.norm,
        random_start=attack.random_start,
    )  # fmt: skip
    adv_correct = clean_correct & losses.correct(judge(x_adv), y)
    return {
        "clean_correct": jnp.sum(clean_correct & mask),
        "adv_correct": jnp.sum(adv_correct & mask),
        "count": jnp.sum(mask),
    }
