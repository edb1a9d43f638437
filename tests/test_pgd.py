"""Training-time PGD: known answers on linear models, it raises the loss, stays feasible."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpm_jax.attacks import geometry, losses, pgd
from hpm_jax.attacks.losses import cross_entropy
from hpm_jax.models import get_model

SHAPE = (6, 4, 4, 1)


def linear_model(seed=0, num_classes=2):
    w = jax.random.normal(jax.random.key(seed), (int(np.prod(SHAPE[1:])), num_classes))
    b = jnp.arange(num_classes, dtype=jnp.float32) * 0.1

    def logits_fn(x):
        return x.reshape(x.shape[0], -1) @ w + b

    return logits_fn, w


def mid_images(key, shape=SHAPE):
    return jax.random.uniform(key, shape, minval=0.3, maxval=0.7)  # far from the box's faces


@pytest.mark.parametrize("random_start", ["uniform", "sphere", "none"])
def test_linf_on_a_two_class_linear_model_ends_at_the_known_corner(random_start):
    # For two classes the CE gradient is (p_y - 1)(w_y - w_o): its sign is that of w_o - w_y
    # wherever x is. Steps of eps/2 from anywhere in the ball reach x + eps * sign(w_o - w_y).
    logits_fn, w = linear_model()
    x = mid_images(jax.random.key(1))
    y = jnp.array([0, 1, 0, 1, 1, 0])
    eps = 0.1
    x_adv = pgd.perturb(
        logits_fn, x, y, key=jax.random.key(2), eps=eps, step_size=eps / 2, num_steps=5,
        random_start=random_start,
    )  # fmt: skip
    other = 1 - y
    direction = np.sign(np.asarray(w[:, other] - w[:, y]).T).reshape(x.shape)
    np.testing.assert_allclose(x_adv, x + eps * direction, atol=1e-6)


def test_linf_known_answer_clips_to_the_box():
    logits_fn, w = linear_model()
    x = jnp.concatenate([jnp.zeros((3, 4, 4, 1)), jnp.ones((3, 4, 4, 1))])
    y = jnp.zeros(6, jnp.int32)
    x_adv = pgd.perturb(
        logits_fn, x, y, key=jax.random.key(0), eps=0.2, step_size=0.2, num_steps=2,
        random_start="none",
    )  # fmt: skip
    direction = np.sign(np.asarray(w[:, 1] - w[:, 0])).reshape(1, 4, 4, 1)
    np.testing.assert_allclose(x_adv, np.clip(np.asarray(x) + 0.2 * direction, 0, 1), atol=1e-6)


def test_l2_on_a_two_class_linear_model_moves_eps_along_the_weight_difference():
    logits_fn, w = linear_model(3)
    x = mid_images(jax.random.key(4))
    y = jnp.array([1, 0, 0, 1, 0, 1])
    eps = 0.25  # small enough to stay inside [0.05, 0.95]: no clipping
    x_adv = pgd.perturb(
        logits_fn, x, y, key=jax.random.key(0), norm="L2", eps=eps, step_size=eps, num_steps=3,
        random_start="none",
    )  # fmt: skip
    d = np.asarray(w[:, 1 - y] - w[:, y]).T  # (B, D)
    expected = np.asarray(x).reshape(6, -1) + eps * d / np.linalg.norm(d, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(x_adv).reshape(6, -1), expected, atol=1e-5)


def test_kl_loss_is_trades_divergence():
    ref = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    logits = jnp.array([[0.0, 1.0, 0.0], [0.5, 0.5, 0.5]])
    p = np.exp(ref) / np.exp(ref).sum(1, keepdims=True)
    q = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(
        losses.kl_divergence(logits, ref), (p * np.log(p / q)).sum(1), rtol=1e-5, atol=1e-7
    )


@pytest.fixture(scope="module")
def cnn():
    model = get_model("small_cnn", num_classes=10, channels=(4, 8), num_features=16)
    x = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))

    @jax.jit
    def init(x):
        variables = model.init(jax.random.key(1), x)
        # Eval mode with fresh running statistics makes a badly scaled net; one train-mode
        # pass of statistics gives it realistic logits.
        _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return {**variables, **updates}

    variables = init(x)
    # x10: the fresh net's logits are nearly uniform, which leaves little loss to raise.
    return jax.jit(lambda x: 10.0 * model.apply(variables, x)), x


def random_noise(x, eps, norm):
    """A random point of the ball: what an attack must beat."""
    return geometry.random_start(jax.random.key(9), x, eps, norm, "uniform")


@pytest.mark.parametrize(
    "norm,eps,step,random_start", [("Linf", 0.1, 0.03, "uniform"), ("L2", 1.0, 0.3, "normal")]
)
def test_pgd_raises_the_loss_and_stays_in_the_ball_and_the_box(cnn, norm, eps, step, random_start):
    logits_fn, x = cnn
    y = jnp.argmax(logits_fn(x), axis=-1)  # start from correct predictions
    x_adv = pgd.perturb(
        logits_fn, x, y, key=jax.random.key(5), norm=norm, eps=eps, step_size=step,
        num_steps=5, random_start=random_start,
    )  # fmt: skip
    before, after = cross_entropy(logits_fn(x), y), cross_entropy(logits_fn(x_adv), y)
    noisy = cross_entropy(logits_fn(random_noise(x, eps, norm)), y)
    assert np.all(np.asarray(after) > np.asarray(before))
    # The gain over the clean loss is several times what a random point of the ball gets.
    assert float((after - before).mean()) > 3 * abs(float((noisy - before).mean()))
    assert np.all(np.asarray(geometry.per_sample_norm(x_adv - x, norm)) <= eps * (1 + 1e-5))
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def test_kl_attack_moves_the_output_away_from_the_clean_one(cnn):
    logits_fn, x = cnn
    clean = logits_fn(x)
    x_adv = pgd.perturb(
        logits_fn, x, jnp.zeros(8, jnp.int32), key=jax.random.key(0), eps=0.1, step_size=0.03,
        num_steps=5, loss="kl", reference_logits=clean, random_start="normal",
    )  # fmt: skip
    attacked = losses.kl_divergence(logits_fn(x_adv), clean)
    noisy = losses.kl_divergence(logits_fn(random_noise(x, 0.1, "Linf")), clean)
    assert float(attacked.min()) > 0 and float(attacked.mean()) > 3 * float(noisy.mean())
    assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.1 + 1e-6


def test_pgd_contract_judges_the_final_iterate():
    logits_fn, _ = linear_model()
    x = mid_images(jax.random.key(1))
    y = jnp.argmax(logits_fn(x), axis=-1)
    weak = pgd.pgd(logits_fn, x, y, key=jax.random.key(0), eps=1e-4, step_size=1e-4, num_steps=1)
    assert bool(weak.robust.all())  # a tiny ball changes no prediction of this model
    strong = pgd.pgd(logits_fn, x, y, key=jax.random.key(0), eps=0.5, step_size=0.1, num_steps=10)
    robust = np.asarray(strong.robust)
    np.testing.assert_array_equal(robust, np.asarray(logits_fn(strong.x_adv).argmax(-1) == y))
    assert not robust.all()


def test_bad_arguments_are_named():
    logits_fn, _ = linear_model()
    x, y = mid_images(jax.random.key(0)), jnp.zeros(6, jnp.int32)
    kwargs = dict(key=jax.random.key(0), eps=0.1, step_size=0.1, num_steps=1)
    with pytest.raises(ValueError, match="reference_logits"):
        pgd.perturb(logits_fn, x, y, loss="kl", **kwargs)
    with pytest.raises(ValueError, match="norm"):
        pgd.perturb(logits_fn, x, y, norm="L1", **kwargs)
    with pytest.raises(ValueError, match="random_start"):
        pgd.perturb(logits_fn, x, y, random_start="gaussian", **kwargs)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pgd.pgd(logits_fn, x * 3, y, **kwargs)
