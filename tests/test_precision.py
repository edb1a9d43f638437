"""Precision and tolerances: `evaluation.precision` reaches every program of an AutoAttack run,
and the checks and a resume forgive a changed verdict at a near tie (a decision margin within
the precision's logit tolerance), never a real change.

The noise injected is the size TF32 gives: TF32 rounds each operand to 11 significant bits
(unit roundoff u = 2**-11), so a product, hence a logit, is off by up to ~2u = 9.8e-4 of the
logits' scale. A near tie (margin 1e-4 of the scale) flips under it; a margin of 0.1 cannot.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toys import CHAIN_EPS, CHAIN_SIZES, chain_data, shift_chain

from hpm_jax.attacks import AutoAttack, checks, mixed_surrogate_attack, precision
from hpm_jax.evaluation import evaluate
from hpm_jax.models import get_model
from hpm_jax.runtime.identity import WorkdirMismatchError

TF32_NOISE = 2 * precision.TF32_UNIT  # one logit's error, relative to the logits' scale
TF32_TOL = precision.logit_tolerance("default", "gpu")


def test_tolerances_follow_the_rounding_of_each_precision():
    assert precision.logit_tolerance("highest", "gpu") == precision.FLOAT32_FLOOR
    assert precision.logit_tolerance("default", "cpu") == precision.FLOAT32_FLOOR  # XLA:CPU: f32
    assert TF32_TOL == 8 * 2.0**-11 and TF32_TOL >= 2 * TF32_NOISE  # a margin moves by 2 errors
    assert precision.logit_tolerance("default", "tpu") == 8 * 2.0**-8
    # The default, "high": TF32 on a GPU, 3 bfloat16 passes (~16 bits) on a TPU.
    assert precision.DEFAULT == "high" and precision.logit_tolerance("high", "gpu") == TF32_TOL
    assert precision.logit_tolerance("high", "tpu") == 8 * 2.0**-16
    # A bfloat16 model rounds to bfloat16 whatever the level; an unknown platform: the coarsest.
    assert precision.logit_tolerance("highest", "gpu", "bfloat16") == 8 * 2.0**-8
    assert precision.logit_tolerance("high", "metal") == 8 * 2.0**-11  # the GPU's TF32
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.check_precision("tf32")


def test_decision_margin_with_and_without_labels():
    z = np.array([[4.0, 3.0, -8.0], [1.0, 1.0, 0.5]], np.float32)
    np.testing.assert_allclose(precision.decision_margin(z), [1 / 8, 0.0])
    np.testing.assert_allclose(precision.decision_margin(z, np.array([2, 2])), [12 / 8, 0.5])
    jz = precision.decision_margin(jnp.asarray(z), jnp.array([0, 1]))
    np.testing.assert_allclose(np.asarray(jz), [1 / 8, 0.0])


# ---- check_batch_dependence under TF32-size noise --------------------------------------------
C = 4
# Each row's logits are its first C pixels (x 10): row 0 a near tie between classes 0 and 1
# (margin 1e-4 of the scale), the others clear (margin >= 0.1).
BASE = np.array(
    [[1.0, 1.0 - 1e-4, 0.2, 0.1], [1.0, 0.9, 0.0, 0.3], [0.1, 0.8, 0.5, 1.0],
     [0.6, 0.0, 1.0, 0.2], [1.0, 0.2, 0.5, 0.8], [0.3, 1.0, 0.1, 0.0]],
    np.float32,
)  # fmt: skip
XT = jnp.asarray(np.pad(BASE, ((0, 0), (0, 12 - C))).reshape(6, 2, 2, 3) / 10)
FULL = XT.shape[0]


def _logits(x):
    return 10 * x.reshape(x.shape[0], -1)[:, :C]


def tf32_noisy(x):
    """The logits with TF32-size rounding noise that depends on the batch shape, as cuDNN's
    algorithm choice does: in the full batch towards class 0, in any other shape towards 1,
    by TF32_NOISE of the row's scale on each of the two logits."""
    z = _logits(x)
    sign = 1.0 if x.shape[0] == FULL else -1.0
    push = jnp.zeros(C).at[0].set(1.0).at[1].set(-1.0)
    return z + sign * TF32_NOISE * jnp.max(jnp.abs(z), axis=1, keepdims=True) * push


def swapped_when_alone(x):
    """A real batch dependence: a point alone gets classes 0 and 1 swapped (margin 0.1)."""
    z = tf32_noisy(x)
    return z[:, [1, 0, 2, 3]] if x.shape[0] == 1 else z


def test_batch_dependence_forgives_a_near_tie_under_tf32_noise_but_not_a_real_change():
    strict = checks.check_batch_dependence(tf32_noisy, XT)  # float32's tolerance: flagged
    assert strict.flagged and strict.details["predictions_changed"]
    r = checks.check_batch_dependence(tf32_noisy, XT, tolerance=TF32_TOL)
    assert not r.flagged, r.message
    assert r.details["near_tie_changes"] >= 1 and "near ties" in r.message
    assert 2 * TF32_NOISE * 0.5 < r.details["max_relative_change"] <= TF32_TOL  # noise, not 0
    real = checks.check_batch_dependence(swapped_when_alone, XT, tolerance=TF32_TOL)
    assert real.flagged and "point 1 alone" in real.details["predictions_changed"]


def test_final_reevaluation_counts_near_ties_without_flagging():
    chain = np.array([True, True, False, False])
    final = np.array([False, True, True, False])
    r = checks.check_final_reevaluation(chain, final, near_tie=np.array([1, 0, 1, 0], bool))
    assert not r.flagged and r.details == {"lost": 0, "regained": 0, "near_ties": 2}
    r = checks.check_final_reevaluation(chain, final, near_tie=np.array([1, 0, 0, 0], bool))
    assert r.flagged and r.details == {"lost": 0, "regained": 1, "near_ties": 1}


# ---- resume under TF32-size noise ------------------------------------------------------------
OFFSET = 5.0  # the logits' scale: a margin of 2e-4 is 4e-5 of it, a near tie only for TF32


def tied_model(x):
    """mean_model's classes (0 where the mean intensity is above 0.5) on a logit scale of ~5."""
    t = x.reshape(x.shape[0], -1).mean(1)
    return OFFSET + 10.0 * jnp.stack([t - 0.5, 0.5 - t], axis=1)


def tied_model_tf32(x):
    """tied_model as another process with TF32 might compute it: each logit off by
    TF32_NOISE of the scale, towards class 1."""
    z = tied_model(x)
    return z + TF32_NOISE * jnp.max(jnp.abs(z), axis=1, keepdims=True) * jnp.array([-1.0, 1.0])


def _tied_data():
    x, y, _ = chain_data(16, seed=3)
    x[:2] += np.float32(0.5) - x[:2].mean(axis=(1, 2, 3), keepdims=True) + np.float32(1e-5)
    y[:2] = 0  # correct, by a margin of ~2e-4 (4e-5 of the scale)
    return x, y


def _chain(model, **kw):
    return AutoAttack(model, eps=CHAIN_EPS, version=shift_chain(), bucket_sizes=CHAIN_SIZES,
                      log=None, run_checks=False, **kw)  # fmt: skip


def test_a_resume_forgives_clean_verdicts_flipped_at_near_ties_not_real_changes(tmp_path):
    x, y = _tied_data()
    state = tmp_path / "s.json"
    first = _chain(tied_model).run(x, y, batch_size=8, state_path=state)
    assert first.clean[:2].all()
    flipped = np.asarray(jnp.argmax(tied_model_tf32(jnp.asarray(x)), 1)) != y
    assert flipped[:2].all() and not flipped[2:][first.clean[2:]].any()  # only the ties flip
    # float32's tolerance: the two flips look like another model.
    with pytest.raises(WorkdirMismatchError, match="classifies 2 clean points differently"):
        _chain(tied_model_tf32).run(x, y, batch_size=8, state_path=state)
    # TF32's: near ties, the saved verdicts stand and the report is the first run's.
    lines = []
    again = _chain(tied_model_tf32, logit_tolerance=TF32_TOL)
    again.log = lines.append
    resumed = again.run(x, y, batch_size=8, state_path=state)
    assert any("2 clean verdict(s) changed at near ties" in line for line in lines)
    np.testing.assert_array_equal(resumed.clean, first.clean)
    np.testing.assert_array_equal(resumed.robust, first.robust)
    # A real change (the classes swapped, margins far above the tolerance) is still refused.
    swapped = lambda v: tied_model(v)[:, ::-1]
    with pytest.raises(WorkdirMismatchError, match="clean points differently"):
        _chain(swapped, logit_tolerance=TF32_TOL).run(x, y, batch_size=8, state_path=state)


# ---- the precision reaches every program -----------------------------------------------------
W = jnp.asarray(np.random.default_rng(0).normal(size=(12, 3)), jnp.float32)
SEEN: list = []  # the matmul precision of every trace of `spy_model`


def spy_model(x):
    SEEN.append(jax.config.jax_default_matmul_precision)
    return x.reshape(x.shape[0], -1) @ W


def test_every_program_of_a_run_is_traced_at_the_requested_precision():
    rng = np.random.default_rng(1)
    x = rng.uniform(0.2, 0.8, (8, 2, 2, 3)).astype(np.float32)
    y = np.asarray(jnp.argmax(spy_model(jnp.asarray(x)), 1))
    SEEN.clear()
    aa = AutoAttack(spy_model, eps=0.05, version=["apgd-ce"], log=None, precision="highest",
                    attack_options={"apgd-ce": {"n_iter": 2}})  # fmt: skip
    report = aa.run(x, y, batch_size=8)
    # checks (eager), the clean and final passes and APGD's programs all traced the model.
    assert len(SEEN) >= 4 and set(SEEN) == {"highest"}, SEEN
    assert report.precision == "highest" and report.to_dict()["logit_tolerance"] == 1e-5
    # The level is in the program: the lowered dot asks for it.
    with precision.applied("highest"):
        text = jax.jit(spy_model).lower(jnp.asarray(x)).as_text()
    assert "precision = [HIGHEST, HIGHEST]" in text
    with pytest.raises(ValueError, match="precision must be one of"):
        AutoAttack(spy_model, eps=0.05, precision="tf32")


def test_msa_runs_every_surrogate_at_the_requested_precision():
    rng = np.random.default_rng(2)
    x = rng.uniform(0.2, 0.8, (8, 2, 2, 3)).astype(np.float32)
    y = np.asarray(jnp.argmax(spy_model(jnp.asarray(x)), 1))
    SEEN.clear()
    report = mixed_surrogate_attack(
        spy_model, {"a": lambda v: 2 * spy_model(v), "b": spy_model}, x, y, eps=0.05,
        batch_size=8, version=["apgd-ce"], attack_options={"apgd-ce": {"n_iter": 2}},
        run_checks=False, log=None, precision="highest",
    )  # fmt: skip
    assert len(SEEN) >= 3 and set(SEEN) == {"highest"}, SEEN
    assert report.chain.precision == "highest"


@pytest.mark.parametrize("dtype,tolerance", [(jnp.float32, 1e-5), (jnp.bfloat16, 8 * 2.0**-8)])
def test_an_evaluation_takes_the_coarser_of_the_level_and_the_models_dtype(dtype, tolerance):
    model = get_model("small_cnn", num_classes=10, head="fc", in_channels=1, image_size=8,
                      dtype=dtype)  # fmt: skip
    used = evaluate.arithmetic(evaluate.default_evaluation_config(), model)
    assert used == {"level": "high", "backend": "cpu", "compute_dtype": jnp.dtype(dtype).name,
                    "logit_tolerance": tolerance}  # fmt: skip
