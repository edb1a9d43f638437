"""straight_through_onehot: argmax one-hot forward, softmax(z / T) Jacobian backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpm_jax.ops import straight_through_onehot


def softmax_jacobian(z: np.ndarray, temperature: float) -> np.ndarray:
    """(diag(p) - p p^T) / T for one row of logits, in float64 NumPy."""
    z = np.asarray(z, np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    return (np.diag(p) - np.outer(p, p)) / temperature


@pytest.mark.parametrize("jit", [False, True])
def test_forward_is_the_onehot_of_argmax_with_ties_to_the_lowest_index(jit):
    f = jax.jit(straight_through_onehot, static_argnums=1) if jit else straight_through_onehot
    z = jnp.array([[0.1, 2.0, -1.0, 0.5], [3.0, 3.0, 1.0, 3.0], [-2.0, -2.0, -2.0, -2.0]])
    out = f(z, 1.0)
    np.testing.assert_array_equal(out, [[0, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]])
    assert out.dtype == z.dtype
    assert f(z.astype(jnp.bfloat16), 1.0).dtype == jnp.bfloat16
    # Leading axes are free: the class axis is the last one.
    z3 = jax.random.normal(jax.random.key(0), (2, 3, 5))
    np.testing.assert_array_equal(f(z3, 1.0), np.eye(5)[np.argmax(np.asarray(z3), -1)])


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_jacobian_is_the_softmax_jacobian_divided_by_the_temperature(jit, temperature):
    with jax.enable_x64(True):
        z = jax.random.normal(jax.random.key(1), (3, 6), jnp.float64) * 2
        jac = jax.jacrev(lambda z: straight_through_onehot(z, temperature))
        jac = jax.jit(jac) if jit else jac
        got = np.asarray(jac(z))  # (3, 6, 3, 6): rows are independent
        for i in range(3):
            for j in range(3):
                want = softmax_jacobian(z[i], temperature) if i == j else np.zeros((6, 6))
                np.testing.assert_allclose(got[i, :, j, :], want, rtol=1e-12, atol=1e-15)


def test_vjp_of_a_weighted_sum_matches_the_closed_form():
    z = jax.random.normal(jax.random.key(2), (4, 5))
    w = jax.random.normal(jax.random.key(3), (4, 5))
    grad = jax.grad(lambda z: jnp.sum(w * straight_through_onehot(z, 2.0)))(z)
    want = np.stack([w[i] @ softmax_jacobian(z[i], 2.0) for i in range(4)])
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_non_positive_temperatures_are_rejected(temperature):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        straight_through_onehot(jnp.zeros((2, 3)), temperature)


def test_traced_temperature_and_integer_logits_are_rejected():
    with pytest.raises(TypeError, match="static Python float"):
        jax.jit(straight_through_onehot)(jnp.zeros((2, 3)), 1.0)
    with pytest.raises(TypeError, match="floating-point"):
        straight_through_onehot(jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="class axis"):
        straight_through_onehot(jnp.float32(1.0))
