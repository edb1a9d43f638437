"""Square shrinks its batch as points break, and the chain passes `compact` on: the model sees
only the still-unbroken points (bucketed), or, with compact=False (MSA), the whole batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback
from platform_support import take_devices
from toys import (
    APGD_MODEL,
    SQUARE_Q,
    SQUARE_X_BOX,
    SQUARE_X_LINF,
    SQUARE_Y_BOX,
    SQUARE_Y_LINF,
    apgd_batch,
    square_linear,
)

from hpm_jax.attacks import AutoAttack, apgd_targeted, batching
from hpm_jax.attacks.msa import mixed_surrogate_attack
from hpm_jax.attacks.square_attack import square, square_run
from hpm_jax.runtime.sharding import data_sharding, make_mesh

SIZES = (16, 8, 4)


def _recording(model):
    """model, and the list of the batch sizes of its calls, in call order (run time)."""
    sizes = []

    def record(v):
        sizes.append(v.shape[0])

    def recorded(v):
        io_callback(record, None, v, ordered=True)
        return model(v)

    return recorded, sizes


def test_square_feeds_only_unbroken_points_in_the_smallest_bucket():
    recorded, sizes = _recording(square_linear)
    # eps 0.2: every point breaks within Q queries, at different iterations.
    run = square_run(
        recorded,
        SQUARE_X_LINF,
        SQUARE_Y_LINF,
        key=jax.random.key(9),
        eps=0.2,
        n_queries=SQUARE_Q,
        bucket_sizes=SIZES,
    )
    jax.effects_barrier()
    queries = np.asarray(run.n_queries)
    assert np.all(np.asarray(run.margin) <= 0) and queries.max() > 4
    # Call t (0: the start) queries the points with more than t queries; the model sees them
    # in the smallest bucket that holds them, from the first call after they fit.
    unbroken = [int(np.sum(queries > t)) for t in range(queries.max())]
    assert sizes == [batching.pick_size(n, SIZES) for n in unbroken]
    assert sizes[-1] < 16
    recorded, whole = _recording(square_linear)
    full = square_run(
        recorded,
        SQUARE_X_LINF,
        SQUARE_Y_LINF,
        key=jax.random.key(9),
        eps=0.2,
        n_queries=SQUARE_Q,
        compact=False,
    )
    jax.effects_barrier()
    assert whole == [16] * queries.max()  # every row at every query
    # Per-point draws and a per-sample model: the same search either way.
    np.testing.assert_array_equal(full.n_queries, run.n_queries)
    np.testing.assert_array_equal(full.x_best, run.x_best)


@pytest.mark.parametrize("norm, x, y, eps", [("Linf", SQUARE_X_LINF, SQUARE_Y_LINF, 0.02),
                                             ("L2", SQUARE_X_BOX, SQUARE_Y_BOX, 0.5)])  # fmt: skip
@pytest.mark.slow
def test_square_compacted_equals_whole_batch_and_agrees_on_1_2_and_4_devices(norm, x, y, eps):
    key = jax.random.key(4)
    kw = dict(key=key, norm=norm, eps=eps, n_queries=SQUARE_Q, n_restarts=2)
    whole = square(square_linear, x, y, compact=False, **kw)
    robust = np.asarray(whole.robust)
    assert robust.any() and not robust.all()
    for n in (1, 2, 4):
        sharding = data_sharding(make_mesh(take_devices(n)))
        xs, ys = jax.device_put(x, sharding), jax.device_put(y, sharding)
        res = square(square_linear, xs, ys, bucket_sizes=SIZES, **kw)
        np.testing.assert_array_equal(res.robust, robust)
        np.testing.assert_array_equal(res.x_adv, whole.x_adv)


def test_the_bucket_ladder_follows_the_backend_of_the_batch():
    """7/8 steps where every device is a CPU (23 sizes for batch 500), halving on GPU/TPU (5),
    and on a mix; the chain and the attacks take it from their batch's devices."""

    class Device:  # what ladder_step reads of a jax Device
        def __init__(self, platform):
            self.platform = platform

    assert batching.ladder_step([Device("cpu")] * 4) == 7 / 8
    for devices in ([Device("gpu")], [Device("tpu")] * 8, [Device("cpu"), Device("gpu")]):
        assert batching.ladder_step(devices) == 1 / 2
    assert batching.bucket_sizes(500, 1, step=1 / 2) == (500, 252, 128, 64, 32)
    assert len(batching.bucket_sizes(500, 1, step=7 / 8)) == 23
    x = jnp.zeros((64, 1, 1, 1))  # on the CPU here: the CPU ladder
    assert batching.attack_sizes(x) == batching.bucket_sizes(64, 1, step=7 / 8)[1:]
    assert batching.attack_sizes(np.zeros((64, 1, 1, 1))) == batching.attack_sizes(x)


def test_attack_sizes_are_the_buckets_below_the_batch():
    x = jnp.zeros((16, 2, 2, 1))
    assert batching.attack_sizes(x) == (12, 8, 4)  # 16 -> 12 -> 9 -> 7 -> 6 -> 5 -> 4, to 4s
    assert batching.attack_sizes(x, (32, 16, 8, 4)) == (8, 4)
    four = jax.device_put(x, data_sharding(make_mesh(take_devices(4))))
    with pytest.raises(ValueError, match="do not split evenly over the 4 devices"):
        batching.attack_sizes(four, (16, 6))
    assert batching.select(np.zeros(16, bool), (8, 4)) is None
    rows = batching.select(np.arange(16) % 5 == 0, (8, 4))  # 4 rows: 0, 5, 10, 15
    np.testing.assert_array_equal(rows.index, [0, 5, 10, 15])
    full = jnp.arange(16.0)
    np.testing.assert_array_equal(rows.take(full), [0, 5, 10, 15])
    np.testing.assert_array_equal(
        rows.put(jnp.zeros(16), rows.take(full)),
        full * (rows.real[:, None] == np.arange(16)).any(0),
    )


TINY = {"fab-t": {"n_iter": 4, "n_target_classes": 2}, "square": {"n_queries": 30}}


def _counting(model):
    """model, and the list of the batch sizes of its calls (jax.debug.callback: FAB
    differentiates through it; one device, so each call is seen whole)."""
    sizes = []

    def counted(v):
        jax.debug.callback(lambda a: sizes.append(a.shape[0]), v)
        return model(v)

    return counted, sizes


ONE = make_mesh(take_devices(1))


def _chain_sizes(compact):
    recorded, sizes = _counting(square_linear)
    # eps 0.03: FAB-T's first target breaks 10 of the 16 points, the rest stay robust.
    aa = AutoAttack(recorded, eps=0.03, version=["fab-t", "square"], attack_options=TINY,
                    compact=compact, run_checks=False, log=None, mesh=ONE,
                    bucket_sizes=SIZES if compact else None)  # fmt: skip
    aa.run(np.asarray(SQUARE_X_LINF), np.asarray(SQUARE_Y_LINF), batch_size=16)
    jax.effects_barrier()
    return sizes


def test_the_chain_passes_compact_to_fab_and_square_and_msa_keeps_the_whole_batch():
    assert min(_chain_sizes(True)) < 16  # buckets shrink inside the attacks
    assert set(_chain_sizes(False)) == {16}  # every call sees the whole batch
    target, seen = _counting(square_linear)
    surrogate, seen_surrogate = _counting(square_linear)
    mixed_surrogate_attack(
        target,
        {"s": surrogate},
        np.asarray(SQUARE_X_LINF),
        np.asarray(SQUARE_Y_LINF),
        eps=0.03,
        batch_size=16,
        version=["fab-t", "square"],
        attack_options=TINY,
        run_checks=False,
        log=None,
        mesh=ONE,
    )
    jax.effects_barrier()
    assert seen and seen_surrogate and set(seen) == set(seen_surrogate) == {16}


@pytest.mark.slow
def test_apgd_t_attacks_only_the_points_still_robust_and_agrees_on_1_2_and_4_devices():
    x = apgd_batch(7)
    y = APGD_MODEL.labels(x)
    eps = float(np.quantile(APGD_MODEL.min_perturbation(x, y, "Linf"), 0.6))
    kw = dict(key=jax.random.key(3), eps=eps, n_iter=10, n_target_classes=3)
    counted, sizes = _counting(APGD_MODEL)
    res = apgd_targeted(counted, x, y, bucket_sizes=(32, 16, 8), **kw)
    jax.effects_barrier()
    robust = np.asarray(res.robust)
    assert 0 < robust.sum() <= 16  # after the first target: a bucket of 16 or fewer
    assert 32 in sizes and min(sizes) < 32
    counted, whole = _counting(APGD_MODEL)
    full = apgd_targeted(counted, x, y, compact=False, **kw)
    jax.effects_barrier()
    assert set(whole) == {32}
    assert np.sum(np.asarray(full.robust)) == robust.sum()  # a linear model: no luck involved
    for n in (2, 4):
        sharding = data_sharding(make_mesh(take_devices(n)))
        xs, ys = jax.device_put(x, sharding), jax.device_put(y, sharding)
        other = apgd_targeted(APGD_MODEL, xs, ys, bucket_sizes=(32, 16, 8), **kw)
        np.testing.assert_array_equal(other.robust, robust)
        np.testing.assert_allclose(other.x_adv, res.x_adv, atol=1e-6)
