"""Adversarial-training objectives: PGD-AT and TRADES, for FC and HPM heads.

    objective = Objective.from_config(config)              # static: hashable, jit-safe
    x_adv = adversarial_examples(model, variables, x, y, key, objective)
    loss, (metrics, collections) = objective_loss(
        params, model, collections, x, x_adv, y, objective)

PGD-AT (Madry et al. 2018): minimise CE(f(x_adv), y) with x_adv = PGD maximising CE.
TRADES (Zhang et al. 2019): minimise CE(f(x), y) + beta * KL(f(x) || f(x_adv)) with x_adv =
PGD maximising that KL from a 0.001 * N(0, 1) start.
`attack.method="apgd"` crafts x_adv with APGD instead (`apgd_attack.perturb`: AutoAttack's
step-size schedule and momentum, the highest-loss iterate over `attack.restarts` runs of
`attack.num_steps` iterations from a random point on the eps-sphere), on the same loss (CE,
or "dlr" by `attack.loss`, for PGD-AT; KL for TRADES), inside the same jitted step.

Heads: each model trains its own output, the mode its head declares as judging it
(`hpm_jax.models.judge_mode`): an FC model its logits (mode "fc"), an l2 model its l2
logits against the prototype EMA (mode "ema_l2", weighted by `hpm_weight`). An HPM model
returns the logits of several modes from one backbone pass; the objective is applied to
each and weighted: `hpm_weight * objective(hpm logits) + fc_weight * objective(fc logits)`
(the auxiliary FC term keeps the FC head, which HPM's batch prototypes are assigned by,
discriminative).
The prototype EMA (collection `prototypes`) is updated once per step, from the clean or
the adversarial features (`prototype_features`; "auto": clean for TRADES, adversarial for
PGD-AT, the passes each makes anyway; clean features under PGD-AT cost one more forward
pass without gradient); batch-norm statistics (`batch_stats`)
follow every train-mode forward pass in order, as in the PyTorch references.

Batch norm during the attack (`attack.bn_mode`): "auto" follows each reference, "train"
for PGD-AT (Madry et al.'s and Rice et al.'s code craft the attack with the model in train
mode; the statistics it would update are discarded) and "eval" for TRADES (its code calls
model.eval() to craft the attack). The attack differentiates the model in `attack.mode`:
for HPM the true forward with the straight-through gradient ("hpm") by default. The model's
logits functions and its training forward come from `hpm_jax.models` (`logits_fn`, `forward`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from hpm_jax import models
from hpm_jax.attacks import apgd_attack, losses, pgd
from hpm_jax.attacks.losses import cross_entropy

OBJECTIVES = ("pgd_at", "trades")
METHODS = ("pgd", "apgd")
HEADS = tuple(models.HEADS)  # config.model.head names: "fc", "l2", "hpm"
PROTOTYPE_FEATURES = ("auto", "clean", "adversarial")
BN_MODES = ("auto", "train", "eval")


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """The training attack: what `pgd.perturb` or `apgd_attack.perturb` needs, plus how the
    model runs under attack."""

    norm: str = "Linf"
    eps: float = 8 / 255
    step_size: float = 2 / 255
    num_steps: int = 10
    random_start: str = "uniform"
    bn_train: bool = False  # batch norm with batch statistics (train mode) while attacking
    mode: str = "fc"  # the head mode whose logits the attack differentiates
    method: str = "pgd"
    loss: str = "ce"  # "ce", "dlr" (APGD) or "kl" (TRADES)
    restarts: int = 1

    @classmethod
    def from_config(cls, attack: ml_collections.ConfigDict, *, head: str, objective: str):
        bn_mode = attack.get("bn_mode", "auto")
        if bn_mode not in BN_MODES:
            raise ValueError(f"attack.bn_mode must be one of {BN_MODES}, got {bn_mode!r}.")
        if bn_mode == "auto":
            bn_mode = "train" if objective == "pgd_at" else "eval"
        random_start = attack.get("random_start", "auto")
        if random_start == "auto":
            random_start = "uniform" if objective == "pgd_at" else "normal"
        if random_start not in pgd.RANDOM_STARTS:
            raise ValueError(
                f"attack.random_start must be 'auto' or one of {pgd.RANDOM_STARTS}, "
                f"got {random_start!r}."
            )
        if attack.norm not in pgd.NORMS:
            raise ValueError(f"attack.norm must be one of {pgd.NORMS}, got {attack.norm!r}.")
        method = attack.get("method", "pgd")
        if method not in METHODS:
            raise ValueError(
                f"attack.method must be one of {METHODS}, got {method!r}; e.g. "
                "--config.attack.method=apgd."
            )
        loss = attack.get("loss", "auto")
        natural = "ce" if objective == "pgd_at" else "kl"
        allowed = ("auto", natural, "dlr") if (method, objective) == ("apgd", "pgd_at") else (
            "auto", natural)  # fmt: skip
        if loss not in allowed:
            raise ValueError(
                f"attack.loss must be one of {allowed} for {method} with {objective}, got {loss!r}."
            )
        restarts = attack.get("restarts", 1)
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
            raise ValueError(f"attack.restarts must be an integer >= 1, got {restarts!r}.")
        if method == "pgd" and restarts != 1:
            raise ValueError("attack.restarts is APGD's; PGD makes one run (set method=apgd).")
        if not attack.eps > 0 or not attack.step_size > 0 or attack.num_steps < 1:
            raise ValueError(
                "attack.eps and attack.step_size must be > 0 and attack.num_steps >= 1, got "
                f"eps={attack.eps}, step_size={attack.step_size}, num_steps={attack.num_steps}."
            )
        if head not in models.HEADS:
            raise ValueError(f"model.head must be one of {HEADS}, got {head!r}.")
        head_cls = models.HEADS[head]
        if len(head_cls.logits_modes) == 1:  # nothing to choose: the head's one output
            mode = head_cls.judge_mode
        else:
            mode = attack.get("mode", head_cls.judge_mode)
            models.check_mode(head_cls, mode)  # a ValueError naming the head's modes
        return cls(
            norm=attack.norm,
            eps=float(attack.eps),
            step_size=float(attack.step_size),
            num_steps=int(attack.num_steps),
            random_start=random_start,
            bn_train=bn_mode == "train",
            mode=mode,
            method=method,
            loss=natural if loss == "auto" else loss,
            restarts=int(restarts),
        )


@dataclasses.dataclass(frozen=True)
class Objective:
    """Everything static about a training step's loss (bound with functools.partial)."""

    name: str
    weights: tuple[tuple[str, float], ...]  # (head mode, weight); the first is the main one
    attack: AttackSpec
    trades_beta: float = 6.0
    prototype_features: str | None = None  # None: the head keeps no prototypes (FC)

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(mode for mode, _ in self.weights)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Objective:
        head, name = config.model.head, config.objective.name
        if head not in HEADS:
            raise ValueError(f"model.head must be one of {HEADS}, got {head!r}.")
        if name not in OBJECTIVES:
            raise ValueError(
                f"objective.name must be one of {OBJECTIVES}, got {name!r}; e.g. "
                "--config.objective.name=trades."
            )
        attack = AttackSpec.from_config(config.attack, head=head, objective=name)
        head_cls = models.HEADS[head]
        judge = head_cls.judge_mode
        if judge == "fc":  # a plain classifier: no prototypes, no auxiliary term
            return cls(name, (("fc", 1.0),), attack, float(config.objective.trades_beta))
        weights = [(judge, float(config.objective.hpm_weight))]
        # The auxiliary FC term needs an FC layer (an l2 head has none).
        if "fc" in head_cls.logits_modes and config.objective.fc_weight:
            weights.append(("fc", float(config.objective.fc_weight)))
        features = config.objective.prototype_features
        if features not in PROTOTYPE_FEATURES:
            raise ValueError(
                f"objective.prototype_features must be one of {PROTOTYPE_FEATURES}, got "
                f"{features!r}."
            )
        if features == "auto":  # whichever features the objective computes anyway
            features = "clean" if name == "trades" else "adversarial"
        return cls(name, tuple(weights), attack, float(config.objective.trades_beta), features)


def adversarial_examples(
    model: nn.Module,
    variables: Mapping[str, Any],
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    objective: Objective,
) -> jax.Array:
    """The objective's inner maximisation: PGD or APGD (`attack.method`) on CE (PGD-AT) or on
    KL to the clean output (TRADES), against the model with its current weights."""
    attack = objective.attack
    # The model as the attack sees it: its mode and batch-norm mode, the batch statistics a
    # train-mode pass would update dropped; no gradient reaches the weights through x_adv.
    logits_fn = models.logits_fn(
        model, jax.lax.stop_gradient(variables), mode=attack.mode, train=attack.bn_train
    )
    reference = logits_fn(x) if objective.name == "trades" else None
    if attack.method == "apgd":
        return apgd_attack.perturb(
            logits_fn, x, y, key=key, eps=attack.eps, norm=attack.norm, loss=attack.loss,
            n_iter=attack.num_steps, n_restarts=attack.restarts, reference_logits=reference,
        )  # fmt: skip
    return pgd.perturb(
        logits_fn, x, y, key=key, eps=attack.eps, step_size=attack.step_size,
        num_steps=attack.num_steps, norm=attack.norm, loss="kl" if reference is not None else "ce",
        reference_logits=reference, random_start=attack.random_start,
    )  # fmt: skip


def _accuracy(logits: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits, axis=-1) == y)


def objective_loss(
    params: Any,
    model: nn.Module,
    collections: Mapping[str, Any],
    x: jax.Array,
    x_adv: jax.Array,
    y: jax.Array,
    objective: Objective,
) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, Any]]]:
    """The scalar training loss, its terms as metrics, and the updated collections.

    Differentiable in `params`. Collections (batch_stats, prototypes) are threaded through
    the train-mode passes in order: the clean pass (TRADES, or the prototype update of PGD-AT
    with clean prototype features) before the adversarial one.
    """
    modes = objective.modes
    collections = dict(collections)
    proto = objective.prototype_features
    clean = None

    def variables():
        return {"params": params, **collections}

    if objective.name == "trades":
        clean, updates = models.forward(
            model, variables(), x, y if proto == "clean" else None, train=True, modes=modes,
            mutable=("batch_stats", "prototypes") if proto == "clean" else ("batch_stats",),
        )  # fmt: skip
        collections.update(updates)
    elif proto == "clean":
        # PGD-AT trains on adversarial inputs only; the prototypes still want clean class
        # means, so a gradient-free clean pass updates them (its batch statistics are dropped).
        # The EMA update reads the features, whatever the logits: the cheapest mode will do,
        # "fc" where the head has it (HPM), else its only one (l2).
        cheapest = "fc" if "fc" in models.head_modes(model) else models.judge_mode(model)
        _, updates = models.forward(
            model, jax.lax.stop_gradient(variables()), x, y, train=True, modes=(cheapest,),
            mutable=("batch_stats", "prototypes"),
        )  # fmt: skip
        collections["prototypes"] = updates["prototypes"]

    adv, updates = models.forward(
        model, variables(), x_adv, y if proto == "adversarial" else None, train=True,
        modes=modes,
        mutable=("batch_stats", "prototypes") if proto == "adversarial" else ("batch_stats",),
    )  # fmt: skip
    collections.update(updates)

    loss = jnp.zeros((), jnp.float32)
    metrics = {}
    for mode, weight in objective.weights:
        if objective.name == "pgd_at":
            term = jnp.mean(cross_entropy(adv[mode], y))
        else:
            natural = jnp.mean(cross_entropy(clean[mode], y))
            robust = jnp.mean(losses.kl_divergence(adv[mode], clean[mode]))
            term = natural + objective.trades_beta * robust
            metrics[f"natural_loss_{mode}"] = natural
            metrics[f"robust_kl_{mode}"] = robust
            metrics[f"train_clean_accuracy_{mode}"] = _accuracy(clean[mode], y)
        metrics[f"loss_{mode}"] = term
        metrics[f"train_adv_accuracy_{mode}"] = _accuracy(adv[mode], y)
        loss = loss + weight * term
    metrics["loss"] = loss
    return loss, (metrics, collections)
