"""Training objectives on the heads' declarations: which modes train and attack, the attack's
train-mode batch norm, and the clean prototype pass of PGD-AT for every prototype head."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from hpm_jax import models
from hpm_jax.attacks import pgd
from hpm_jax.models import get_model
from hpm_jax.models.heads import ema_update
from hpm_jax.training import objectives

C = 4


def config(head, name="pgd_at", **objective):
    return ml_collections.ConfigDict({
        "model": {"head": head},
        "objective": {"name": name, "trades_beta": 6.0, "hpm_weight": 1.0, "fc_weight": 0.5,
                      "prototype_features": "auto", **objective},
        "attack": {"norm": "Linf", "eps": 8 / 255, "step_size": 2 / 255, "num_steps": 2,
                   "bn_mode": "auto", "random_start": "auto", "mode": "hpm"},
    })  # fmt: skip


def test_each_head_trains_and_attacks_its_own_modes():
    got = {}
    for head in ("fc", "l2", "hpm"):
        objective = objectives.Objective.from_config(config(head))
        got[head] = (objective.weights, objective.attack.mode)
    # attack.mode ("hpm") only chooses among an HPM head's modes; the others have one.
    assert got == {
        "fc": ((("fc", 1.0),), "fc"),
        "l2": ((("ema_l2", 1.0),), "ema_l2"),  # no FC layer: no auxiliary FC term
        "hpm": ((("hpm", 1.0), ("fc", 0.5)), "hpm"),
    }
    bad = config("hpm")
    bad.attack.mode = "l2"
    with pytest.raises(ValueError, match="Unknown head mode"):
        objectives.Objective.from_config(bad)
    bad.model.head = "svm"
    with pytest.raises(ValueError, match=r"model\.head must be one of"):
        objectives.AttackSpec.from_config(bad.attack, head="svm", objective="pgd_at")


def _model(head):
    model = get_model("small_cnn", num_classes=C, head=head, channels=(4, 8), num_features=8)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(8, 28, 28, 1)), jnp.float32)
    y = jnp.arange(8, dtype=jnp.int32) % C
    variables = jax.tree.map(lambda a: a, model.init(jax.random.key(1), x[:1]))
    if "prototypes" in variables:
        variables["prototypes"]["head"]["ema"] = jnp.asarray(rng.normal(size=(C, 8)), jnp.float32)
        variables["prototypes"]["head"]["seen"] = jnp.full(C, 5, jnp.int32)
    return model, variables, x, y


def test_pgd_at_attacks_with_batch_statistics_and_changes_no_variable():
    model, variables, x, y = _model("hpm")
    objective = objectives.Objective.from_config(config("hpm"))
    assert objective.attack.bn_train  # PGD-AT's reference crafts in train mode
    before = jax.tree.map(np.array, variables)
    key = jax.random.key(3)
    got = objectives.adversarial_examples(model, variables, x, y, key, objective)

    def train_mode(v):  # by hand: train-mode batch norm, statistic updates dropped
        return model.apply(variables, v, train=True, mode="hpm", mutable=["batch_stats"])[0]

    def eval_mode(v):
        return model.apply(variables, v, mode="hpm")

    kwargs = dict(key=key, eps=8 / 255, step_size=2 / 255, num_steps=2, norm="Linf",
                  loss="ce", random_start="uniform")  # fmt: skip
    want = pgd.perturb(train_mode, x, y, **kwargs)
    # Steps of 2/255 along a sign: a different model moves some pixels the other way.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert np.abs(np.asarray(got) - np.asarray(pgd.perturb(eval_mode, x, y, **kwargs))).max() > 1e-3
    jax.tree.map(np.testing.assert_array_equal, variables, before)


@pytest.mark.parametrize("head", ["l2", "hpm"])
def test_clean_prototype_features_under_pgd_at_update_the_ema_from_clean_images(head):
    """PGD-AT's extra clean pass reads the features in a mode the head has (an l2 head has no
    "fc"); the EMA moves to the clean class means, once."""
    model, variables, x, y = _model(head)
    objective = objectives.Objective.from_config(config(head, prototype_features="clean"))
    x_adv = jnp.clip(x + 8 / 255, 0.0, 1.0)
    collections = {k: v for k, v in variables.items() if k != "params"}
    _, (metrics, updated) = objectives.objective_loss(
        variables["params"], model, collections, x, x_adv, y, objective
    )
    assert np.isfinite(float(metrics["loss"]))
    # The clean pass runs in train mode: its features use the clean batch's statistics.
    feats = model.apply(variables, x, train=True, method="features", mutable=["batch_stats"])[0]
    old = variables["prototypes"]["head"]
    ema, seen = ema_update(old["ema"], old["seen"], feats, y, model.head.ema_decay)
    np.testing.assert_allclose(updated["prototypes"]["head"]["ema"], ema, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(updated["prototypes"]["head"]["seen"], seen)
    assert models.judge_mode(model) in objective.modes
