"""Square Attack: the p schedule and window sides against the reference's published numbers, the
L2 and L1 patterns against pyautoattack's, the Linf vertices, the L2 norm budget and the L1
projection, known answers on a linear model (Linf, L2, L1), accept-if-better, the judge's role,
frozen points, 1 vs 4 devices, bad inputs. The linear model and its data: tests/toys.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback
from toys import (
    SQUARE_B,
    SQUARE_K,
    SQUARE_Q,
    SQUARE_X_BOX,
    SQUARE_X_L1,
    SQUARE_X_L2,
    SQUARE_X_LINF,
    SQUARE_Y_BOX,
    SQUARE_Y_L1,
    SQUARE_Y_L2,
    SQUARE_Y_LINF,
    square_linear,
    square_margins,
)

from hpm_jax.attacks import geometry, square_proposals
from hpm_jax.attacks.square_attack import p_selection, square, square_run, square_side
from hpm_jax.attacks.square_proposals import l1_init, l1_pattern, l2_init, l2_pattern
from hpm_jax.runtime.sharding import data_sharding, make_mesh

# ---- the schedule ----------------------------------------------------------------------------

# The reference's p_selection: p_init for it <= 10, then halved after 10, 50, 200, 500, 1000,
# 2000, 4000, 6000 and 8000 iterations (the boundaries themselves belong to the lower range).
DIVISORS = [
    (0, 1), (10, 1), (11, 2), (50, 2), (51, 4), (200, 4), (201, 8), (500, 8), (501, 16),
    (1000, 16), (1001, 32), (2000, 32), (2001, 64), (4000, 64), (4001, 128), (4999, 128),
    (6000, 128), (6001, 256), (8000, 256), (8001, 512), (20000, 512),
]  # fmt: skip


@pytest.mark.parametrize(("it", "divisor"), DIVISORS)
def test_p_schedule_matches_the_reference_thresholds(it, divisor):
    assert p_selection(it) == pytest.approx(0.8 / divisor, rel=1e-12)
    assert p_selection(it, p_init=0.3) == pytest.approx(0.3 / divisor, rel=1e-12)


def test_rescaled_schedule_reads_thresholds_per_10000_of_the_budget():
    # n_queries = 1000: iteration i stands for int(i / 1000 * 10000) = 10 i.
    assert [p_selection(i, n_queries=1000, resc_schedule=True) for i in (1, 2, 5, 6, 20, 21)] == [
        0.8, 0.4, 0.4, 0.2, 0.2, 0.1
    ]  # fmt: skip
    # Without rescaling the budget does not matter.
    assert p_selection(21, n_queries=1000) == 0.8 / 2


def test_square_sides_as_the_reference_rounds_them():
    # 32x32x3 (CIFAR): sqrt(0.8 * 1024) = 28.6 -> 29; sqrt(0.4 * 1024) = 20.2 -> 20, made odd
    # for L2; the smallest p gives side 1 (Linf) and the floor 3 (L2); never above the image.
    assert square_side(0.8, 32, 32, 3, "Linf") == 29
    assert square_side(0.4, 32, 32, 3, "Linf") == 20
    assert square_side(0.4, 32, 32, 3, "L2") == 21
    assert square_side(0.8 / 512, 32, 32, 3, "Linf") == 1
    assert square_side(0.8 / 512, 32, 32, 3, "L2") == 3
    assert square_side(1.0, 8, 8, 1, "Linf") == 8
    assert square_side(0.8, 224, 224, 3, "Linf") == 200  # sqrt(40140.8) = 200.35


def test_p_schedule_and_l2_pattern_equal_pyautoattack():
    torch = pytest.importorskip("torch")
    reference = pytest.importorskip("pyautoattack.square").SquareAttack
    ref = reference(None, norm="L2", n_queries=700, device="cpu", resc_schedule=False)
    assert all(ref.p_selection(i) == p_selection(i) for i in range(0, 10000, 7))
    ref.rescale_schedule = True
    assert all(
        ref.p_selection(i) == p_selection(i, n_queries=700, resc_schedule=True) for i in range(700)
    )
    torch.manual_seed(0)
    for side in (1, 2, 3, 4, 5, 7, 9, 12, 29):
        theirs = ref.eta(side).numpy()  # randomly transposed
        ours = l2_pattern(side)
        assert np.allclose(theirs, ours, atol=1e-6) or np.allclose(theirs, ours.T, atol=1e-6)


# ---- starts ----------------------------------------------------------------------------------


def _on_vertices(x_adv, x, eps):
    """Every pixel at x +- eps, or at a face of the box that cut it short. eps: number or (B,)."""
    delta = np.abs(np.asarray(x_adv) - np.asarray(x))
    eps = np.reshape(eps, (-1, 1, 1, 1))
    clipped = (np.asarray(x_adv) == 0.0) | (np.asarray(x_adv) == 1.0)
    return np.all(np.isclose(delta, eps, rtol=0, atol=1e-6) | (clipped & (delta <= eps + 1e-6)))


def test_linf_start_is_vertical_stripes_on_the_vertices():
    eps = 0.1
    run = square_run(
        square_linear, SQUARE_X_BOX, SQUARE_Y_BOX, key=jax.random.key(1), eps=eps, n_queries=0
    )
    np.testing.assert_array_equal(run.n_queries, 1)  # the start is one query
    assert _on_vertices(run.x_best, SQUARE_X_BOX, eps)
    # One sign per column and channel: down a column the perturbation has one sign, or is 0
    # where the box face is already at x (x = 1 going up, x = 0 going down).
    sign = np.sign(np.asarray(run.x_best - SQUARE_X_BOX))  # (B, H, W, C)
    up, down = np.any(sign > 0, axis=1), np.any(sign < 0, axis=1)
    assert not np.any(up & down)
    assert 0.35 < up.mean() < 0.65  # both signs, about equally often


def test_l2_start_is_the_meta_pattern_grid_at_norm_eps():
    # 15x15: tiles of side 3 in a 5x5 grid; x = 0.5 and a small eps, so nothing is clipped.
    x = jnp.full((8, 15, 15, 2), 0.5, jnp.float32)
    eps = 0.3
    x0 = jax.jit(l2_init)(jax.random.key(2), x, eps)
    delta = np.asarray(x0 - x, np.float64)
    np.testing.assert_allclose(np.sqrt((delta**2).sum(axis=(1, 2, 3))), eps, rtol=1e-5)
    # 25 tiles x 2 channels, each of unit norm before the image is scaled to eps.
    unit = delta * np.sqrt(25 * 2) / eps
    pattern = l2_pattern(3)
    n_transposed = 0
    for b in range(8):
        for i in range(5):
            for j in range(5):
                tile = unit[b, 3 * i : 3 * i + 3, 3 * j : 3 * j + 3]
                # the same transposition for both channels, a sign per channel
                matches = [
                    all(np.allclose(tile[..., c], s * p, atol=1e-5) for c, s in enumerate(signs))
                    for p in (pattern, pattern.T)
                    for signs in ((1, 1), (1, -1), (-1, 1), (-1, -1))
                ]
                assert any(matches)
                n_transposed += any(matches[4:]) and not any(matches[:4])
    assert 0 < n_transposed < 200


# ---- Linf ------------------------------------------------------------------------------------


def test_linf_search_stays_on_vertices_within_eps_and_the_box():
    eps = np.linspace(0.02, 0.3, SQUARE_B).astype(np.float32)  # one eps per image
    run = square_run(
        square_linear,
        SQUARE_X_BOX,
        SQUARE_Y_BOX,
        key=jax.random.key(3),
        eps=eps,
        n_queries=SQUARE_Q,
    )
    x_best = np.asarray(run.x_best)
    assert x_best.min() >= 0.0 and x_best.max() <= 1.0
    assert np.all(
        np.asarray(geometry.per_sample_norm(run.x_best - SQUARE_X_BOX, "Linf")) <= eps + 1e-6
    )
    assert _on_vertices(x_best, SQUARE_X_BOX, eps)
    np.testing.assert_allclose(run.margin, square_margins(run.x_best, SQUARE_Y_BOX), atol=1e-4)


def test_linf_known_answers_on_a_linear_model():
    key = jax.random.key(4)
    # eps = 0.05: the first 8 points need less than half of it, so Square breaks them.
    res = square(square_linear, SQUARE_X_LINF, SQUARE_Y_LINF, key=key, eps=0.05, n_queries=SQUARE_Q)
    robust = np.asarray(res.robust)
    assert not robust[:8].any()
    broken = ~robust
    assert np.all(square_margins(res.x_adv, SQUARE_Y_LINF)[broken] <= 0)
    delta = np.asarray(geometry.per_sample_norm(res.x_adv - SQUARE_X_LINF, "Linf"))
    assert np.all(delta <= 0.05 + 1e-6) and np.all(delta[broken] > 0)
    np.testing.assert_array_equal(res.x_adv[robust], SQUARE_X_LINF[robust])  # as the reference: x
    # eps = 0.015: the last 8 need more than 1.8 eps; no Linf perturbation within eps breaks
    # them (the best vertex lowers each margin by exactly eps * ||w_y - w_c||_1).
    res = square(
        square_linear, SQUARE_X_LINF, SQUARE_Y_LINF, key=key, eps=0.015, n_queries=SQUARE_Q
    )
    assert np.asarray(res.robust)[8:].all()


def test_accepts_only_improvements_so_the_margin_never_rises():
    # The run with n_queries = k is the first k iterations of a longer run with the same key.
    eps = 0.1
    key = jax.random.key(5)
    history = []
    for n in (0, 20, SQUARE_Q):
        run = square_run(square_linear, SQUARE_X_BOX, SQUARE_Y_BOX, key=key, eps=eps, n_queries=n)
        np.testing.assert_allclose(run.margin, square_margins(run.x_best, SQUARE_Y_BOX), atol=1e-4)
        history.append(np.asarray(run.margin))
        if n == 0:
            np.testing.assert_array_equal(run.n_queries, 1)
    history = np.stack(history)
    assert np.all(np.diff(history, axis=0) <= 0)
    assert np.any(np.diff(history, axis=0) < 0)  # and it does improve


# ---- L2 --------------------------------------------------------------------------------------


def test_l2_search_stays_within_eps_and_the_box():
    eps = np.linspace(0.2, 2.0, SQUARE_B).astype(np.float32)  # one eps per image
    run = square_run(
        square_linear,
        SQUARE_X_BOX,
        SQUARE_Y_BOX,
        key=jax.random.key(6),
        norm="L2",
        eps=eps,
        n_queries=SQUARE_Q,
    )
    x_best = np.asarray(run.x_best)
    assert x_best.min() >= 0.0 and x_best.max() <= 1.0
    assert np.all(
        np.asarray(geometry.per_sample_norm(run.x_best - SQUARE_X_BOX, "L2")) <= eps + 1e-5
    )
    np.testing.assert_allclose(run.margin, square_margins(run.x_best, SQUARE_Y_BOX), atol=1e-4)


def test_l2_proposal_moves_mass_between_two_windows_at_norm_eps():
    # Unclipped, the proposal's delta has norm eps before the final rescaling, so only the two
    # windows change: window 2 is emptied, window 1 rewritten. A wrong norm budget would make
    # the rescaling touch every pixel.
    x = jnp.full((8, 15, 15, 2), 0.5, jnp.float32)
    eps, side = 0.3, 3
    x_best = jax.jit(l2_init)(jax.random.key(10), x, eps)
    pattern = jnp.zeros((5, 5)).at[:side, :side].set(jnp.asarray(l2_pattern(side)))
    propose = jax.jit(square_proposals.l2_proposal)
    x_new = propose(jax.random.key(11), x, x_best, eps, jnp.int32(side), pattern)
    np.testing.assert_allclose(geometry.per_sample_norm(x_new - x, "L2"), eps, rtol=1e-5)
    before, after = np.asarray(x_best - x), np.asarray(x_new - x)

    def in_one_window(rows, cols):
        return len(rows) == 0 or (np.ptp(rows) < side and np.ptp(cols) < side)

    for b in range(8):
        changed = np.any(np.abs(after[b] - before[b]) > 1e-6, axis=-1)
        assert np.any(after[b] == 0.0)  # window 2 emptied (the start has no zero pixel)
        rows, cols = np.nonzero(changed)
        # Some placement of window 1 leaves the other changed pixels inside one window.
        fits = False
        for top in range(15 - side + 1):
            for left in range(15 - side + 1):
                inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
                outside = ~inside
                fits |= in_one_window(rows[outside], cols[outside])
        assert fits


def test_l2_known_answers_on_a_linear_model():
    key = jax.random.key(7)
    res = square(
        square_linear, SQUARE_X_L2, SQUARE_Y_L2, key=key, norm="L2", eps=0.5, n_queries=SQUARE_Q
    )
    robust = np.asarray(res.robust)
    assert not robust[:8].any()  # they need less than 0.1 eps
    assert np.all(square_margins(res.x_adv, SQUARE_Y_L2)[~robust] <= 0)
    assert np.all(np.asarray(geometry.per_sample_norm(res.x_adv - SQUARE_X_L2, "L2")) <= 0.5 + 1e-5)
    # they need more than 1.1 eps: no L2 perturbation of norm eps can break them
    res = square(
        square_linear, SQUARE_X_L2, SQUARE_Y_L2, key=key, norm="L2", eps=0.3, n_queries=SQUARE_Q
    )
    assert np.asarray(res.robust)[8:].all()


# ---- L1 --------------------------------------------------------------------------------------

# float32 rounding of x_adv = x + delta, ~6e-8 per moved coordinate, summed by the L1 norm.
L1_ATOL = 2e-5


def test_l1_pattern_equals_pyautoattack():
    torch = pytest.importorskip("torch")
    reference = pytest.importorskip("pyautoattack.square").SquareAttack
    ref = reference(None, norm="L1", n_queries=700, device="cpu", resc_schedule=False)
    torch.manual_seed(0)
    for side in (3, 4, 5, 7, 9, 12, 29):
        theirs = ref.eta(side).numpy()  # randomly transposed
        ours = l1_pattern(side)
        assert np.abs(ours).sum() == pytest.approx(1.0)
        assert np.allclose(theirs, ours, atol=1e-7) or np.allclose(theirs, ours.T, atol=1e-7)
    assert not np.allclose(l1_pattern(5), l2_pattern(5) / np.abs(l2_pattern(5)).sum())


@pytest.mark.parametrize("scale, eps", [(0.1, 20.0), (0.5, 20.0), (0.02, 20.0), (0.3, 5.0)])
def test_l1_projection_without_a_sort_is_the_exact_projection(scale, eps):
    # Images with exact 0 and 1 pixels, so the box binds; 0.02: already inside the ball.
    rng = np.random.default_rng(1)
    x = jnp.asarray(np.clip(rng.uniform(-0.3, 1.3, (16, 28, 28, 1)), 0, 1), jnp.float32)
    x_adv = x + scale * jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    fast = jax.jit(geometry.project_l1_bisect)(x_adv, x, eps)
    np.testing.assert_allclose(fast, jax.jit(geometry.project_l1)(x_adv, x, eps), rtol=0, atol=3e-6)
    assert np.asarray(fast).min() >= 0 and np.asarray(fast).max() <= 1
    norms = np.asarray(geometry.per_sample_norm(fast - x, "L1"))
    assert np.all(norms <= eps + L1_ATOL)
    if scale >= 0.1:
        np.testing.assert_allclose(norms, eps, rtol=0, atol=L1_ATOL)


def test_l1_start_is_the_tiled_pattern_projected_onto_the_ball():
    # 15x15: tiles of side 3 in a 5x5 grid, each of unit L1 norm per channel before the
    # projection: 25 x 2 = 50 in all, and x = 0.5 keeps every pixel inside the box.
    x = jnp.full((8, 15, 15, 2), 0.5, jnp.float32)
    init = jax.jit(l1_init)
    whole = np.asarray(init(jax.random.key(2), x, 60.0) - x, np.float64)  # eps above the mass
    np.testing.assert_allclose(np.abs(whole).sum(axis=(1, 2, 3)), 50.0, rtol=1e-5)
    pattern = l1_pattern(3)
    for b, i, j in [(0, 0, 0), (3, 2, 4), (7, 4, 1)]:
        tile = whole[b, 3 * i : 3 * i + 3, 3 * j : 3 * j + 3]
        assert any(
            all(np.allclose(tile[..., c], s * p, atol=1e-6) for c, s in enumerate(signs))
            for p in (pattern, pattern.T)
            for signs in ((1, 1), (1, -1), (-1, 1), (-1, -1))
        )
    # A smaller eps: the same draw, projected onto the ball of radius eps (1 - 1e-6).
    x0 = init(jax.random.key(2), x, 4.0)
    norms = geometry.per_sample_norm(x0 - x, "L1")
    np.testing.assert_allclose(norms, 4.0 * (1 - 1e-6), rtol=0, atol=L1_ATOL)
    np.testing.assert_allclose(x0, geometry.project_l1(x + whole, x, 4.0 * (1 - 1e-6)), atol=1e-6)


def test_l1_proposal_moves_mass_into_window_1_then_projects():
    x = jnp.full((8, 15, 15, 2), 0.5, jnp.float32)
    eps, side = 4.0, 3
    x_best = jax.jit(l1_init)(jax.random.key(10), x, eps)
    pattern = jnp.zeros((5, 5)).at[:side, :side].set(jnp.asarray(l1_pattern(side)))
    propose = jax.jit(square_proposals.l1_proposal)
    eps_b = jnp.full((8, 1, 1, 1), eps)
    x_new = propose(jax.random.key(11), x, x_best, eps_b, jnp.int32(side), pattern)
    # The new window's mass (2 channels x the windows' mass) overshoots eps: projected back.
    norms = geometry.per_sample_norm(x_new - x, "L1")
    np.testing.assert_allclose(norms, eps * (1 - 1e-6), rtol=0, atol=L1_ATOL)
    before, after = np.asarray(x_best - x), np.asarray(x_new - x)
    # Outside window 1 the projection only shrinks (soft threshold): same sign, no larger.
    shrunk = (np.abs(after) <= np.abs(before) + 1e-6) & (after * before >= 0)
    shrunk = shrunk.all(-1)  # (8, 15, 15)
    for k in range(8):
        rows, cols = np.nonzero(~shrunk[k])
        assert len(rows) and np.ptp(rows) < side and np.ptp(cols) < side  # window 1 only
        # The mass moved into window 1 exceeds what it held before.
        window = (slice(rows.min(), rows.min() + side), slice(cols.min(), cols.min() + side))
        assert np.abs(after[k][window]).sum() > np.abs(before[k][window]).sum()


def test_l1_search_stays_within_eps_and_the_box():
    eps = np.linspace(0.5, 6.0, SQUARE_B).astype(np.float32)  # one eps per image
    run = square_run(
        square_linear,
        SQUARE_X_BOX,
        SQUARE_Y_BOX,
        key=jax.random.key(6),
        norm="L1",
        eps=eps,
        n_queries=SQUARE_Q,
    )
    x_best = np.asarray(run.x_best)
    assert x_best.min() >= 0.0 and x_best.max() <= 1.0
    assert np.all(
        np.asarray(geometry.per_sample_norm(run.x_best - SQUARE_X_BOX, "L1")) <= eps + L1_ATOL
    )
    np.testing.assert_allclose(run.margin, square_margins(run.x_best, SQUARE_Y_BOX), atol=1e-4)
    assert np.all(np.diff(np.asarray(run.margin)) != 0)  # every point searched on its own


def test_l1_known_answers_on_a_linear_model():
    key = jax.random.key(7)
    res = square(
        square_linear, SQUARE_X_L1, SQUARE_Y_L1, key=key, norm="L1", eps=2.0, n_queries=SQUARE_Q
    )
    robust = np.asarray(res.robust)
    assert not robust[:8].any()  # they need less than 0.1 eps
    assert np.all(square_margins(res.x_adv, SQUARE_Y_L1)[~robust] <= 0)
    assert np.all(
        np.asarray(geometry.per_sample_norm(res.x_adv - SQUARE_X_L1, "L1")) <= 2.0 + L1_ATOL
    )
    np.testing.assert_array_equal(res.x_adv[robust], SQUARE_X_L1[robust])
    # they need more than 1.1 eps: no L1 perturbation of norm eps can break them
    res = square(
        square_linear, SQUARE_X_L1, SQUARE_Y_L1, key=key, norm="L1", eps=1.2, n_queries=SQUARE_Q
    )
    assert np.asarray(res.robust)[8:].all()


# ---- judge, freezing, devices ----------------------------------------------------------------


def test_the_judge_decides_success_and_sees_the_whole_batch():
    key = jax.random.key(8)
    # logits_fn alone breaks the first 8 points at this eps.
    assert not np.asarray(
        square(
            square_linear, SQUARE_X_LINF, SQUARE_Y_LINF, key=key, eps=0.05, n_queries=SQUARE_Q
        ).robust
    )[:8].any()
    # The judge gets point 0 wrong on x.
    y_judge = SQUARE_Y_LINF.at[0].set((SQUARE_Y_LINF[0] + 1) % SQUARE_K)
    first_half = (jnp.arange(SQUARE_B) < 8)[:, None]

    def judge(x):
        # Points 0-7: always the judge's classes, wherever x is. Points 8-15: wrong on
        # anything but the clean image. Called on the whole batch at once.
        assert x.shape[0] == SQUARE_B
        moved = jnp.any(x != SQUARE_X_LINF, axis=(1, 2, 3))
        strict = jax.nn.one_hot(
            jnp.where(moved, (SQUARE_Y_LINF + 1) % SQUARE_K, SQUARE_Y_LINF), SQUARE_K
        )
        return jnp.where(first_half, jax.nn.one_hot(y_judge, SQUARE_K), strict)

    # The judge couples rows by position: compact=False keeps every row in its batch.
    res = square(
        square_linear,
        SQUARE_X_LINF,
        SQUARE_Y_LINF,
        key=key,
        eps=0.05,
        n_queries=SQUARE_Q,
        judge_fn=judge,
        compact=False,
    )
    robust = np.asarray(res.robust)
    np.testing.assert_array_equal(robust[:8], np.arange(8) > 0)  # 0: wrong on x already
    np.testing.assert_array_equal(res.x_adv[:8], SQUARE_X_LINF[:8])  # robust, or never attacked
    assert not robust[8:].any()  # any point the search reached breaks them
    assert _on_vertices(res.x_adv[8:], SQUARE_X_LINF[8:], 0.05)


def test_broken_points_are_frozen_and_the_loop_stops_when_all_are_broken():
    calls = []

    def record(x):
        calls.append(np.array(x))

    def recorded_linear(x):
        io_callback(record, None, x, ordered=True)
        return square_linear(x)

    # At eps = 0.2 every point of the batch needs less than a third of eps (r < 1.31 at 0.05).
    run = square_run(
        recorded_linear,
        SQUARE_X_LINF,
        SQUARE_Y_LINF,
        key=jax.random.key(9),
        eps=0.2,
        n_queries=SQUARE_Q,
        compact=False,
    )
    queries = np.asarray(run.n_queries)
    assert np.all(np.asarray(run.margin) <= 0)
    assert queries.min() == 1  # some points are broken by the start already
    assert queries.max() < SQUARE_Q + 1
    # One call per iteration until the last point broke, not Q + 1.
    assert len(calls) == queries.max()
    for i, q in enumerate(queries):
        # Point i was queried q times; the q-th query broke it and was kept; after that it is
        # fed its frozen best point and never queried with a new proposal again.
        for later in calls[q - 1 :]:
            np.testing.assert_array_equal(later[i], run.x_best[i])
        if q > 1:
            assert any(np.any(calls[t][i] != calls[0][i]) for t in range(1, q))


@pytest.mark.slow
def test_one_and_four_devices_give_the_same_result():
    sharded = jax.device_put(SQUARE_X_LINF, data_sharding(make_mesh()))
    assert len(sharded.sharding.device_set) == 4
    key = jax.random.key(4)
    one = square(square_linear, SQUARE_X_LINF, SQUARE_Y_LINF, key=key, eps=0.05, n_queries=SQUARE_Q)
    four = square(square_linear, sharded, SQUARE_Y_LINF, key=key, eps=0.05, n_queries=SQUARE_Q)
    np.testing.assert_array_equal(one.robust, four.robust)
    np.testing.assert_array_equal(one.x_adv, four.x_adv)

    sharded = jax.device_put(SQUARE_X_BOX, data_sharding(make_mesh()))
    key = jax.random.key(6)
    one = square_run(
        square_linear, SQUARE_X_BOX, SQUARE_Y_BOX, key=key, norm="L2", eps=0.5, n_queries=SQUARE_Q
    )
    four = square_run(
        square_linear, sharded, SQUARE_Y_BOX, key=key, norm="L2", eps=0.5, n_queries=SQUARE_Q
    )
    np.testing.assert_array_equal(one.n_queries, four.n_queries)
    np.testing.assert_allclose(one.x_best, four.x_best, atol=1e-6)
    np.testing.assert_allclose(one.margin, four.margin, atol=1e-5)


# ---- bad inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"norm": "L0"}, ValueError, "norm must be one of"),
        ({"eps": 0.0}, ValueError, "eps must be"),
        ({"eps": float("nan")}, ValueError, "eps must be"),
        ({"eps": np.full(3, 0.1)}, ValueError, "one finite value > 0 per image"),
        (
            {"eps": np.r_[np.full(SQUARE_B - 1, 0.1), -0.1]},
            ValueError,
            "one finite value > 0 per image",
        ),
        ({"x": SQUARE_X_LINF[0]}, ValueError, "NHWC"),
        ({"x": (SQUARE_X_LINF * 255).astype(jnp.uint8)}, TypeError, "floating point"),
        ({"x": SQUARE_X_LINF * 2}, ValueError, r"\[0, 1\]"),
        ({"y": SQUARE_Y_LINF[:3]}, ValueError, "one label per image"),
        ({"n_queries": -1}, ValueError, "n_queries"),
        ({"n_queries": 2.5}, ValueError, "n_queries"),
        ({"p_init": 0.0}, ValueError, "p_init"),
        ({"p_init": 1.5}, ValueError, "p_init"),
        ({"n_restarts": 0}, ValueError, "n_restarts"),
        ({"loss": "dlr"}, ValueError, "loss must be one of"),
        ({"x": SQUARE_X_LINF[:, :4, :4], "norm": "L2"}, ValueError, "at least 5 x 5"),
        ({"x": SQUARE_X_LINF[:, :4, :4], "norm": "L1"}, ValueError, "L1 Square needs images of at"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, error, match):
    kwargs = {
        "x": SQUARE_X_LINF,
        "y": SQUARE_Y_LINF,
        "key": jax.random.key(0),
        "eps": 0.05,
        **change,
    }
    x, y = kwargs.pop("x"), kwargs.pop("y")
    with pytest.raises(error, match=match):
        square(square_linear, x, y, **kwargs)
