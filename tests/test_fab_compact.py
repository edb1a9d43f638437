"""FAB-T and FAB shrink their batch between runs (compact=True, the default), as the reference:
the model is fed only the points not yet broken within eps, bucketed; compact=False feeds the
whole batch to every run. Helpers: tests/toys.py."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from platform_support import take_devices
from toys import closed_form, fab_linear_ratio, linear_problem

from hpm_jax.attacks.fab_attack import fab, fab_targeted
from hpm_jax.runtime.sharding import data_sharding, make_mesh

N_ITER = 10


def _case():
    """16 points of a linear model with 5 classes, eps between FAB's per-target answers so
    that the first target breaks some points, later targets others, some none."""
    w, b, model = linear_problem(10, d=12, c=5)
    x = jnp.asarray(0.3 + 0.4 * np.random.default_rng(3).random((16, 1, 3, 4)), jnp.float32)
    y = jnp.argmax(model(x), 1)
    closed, z = closed_form(w, b, x, y, "L2")
    found = closed * fab_linear_ratio(n_iter=N_ITER)
    ranked = [found[np.arange(16), np.argsort(z, 1)[:, -k]] for k in (2, 3, 4)]
    first = ranked[0]  # FAB's answer for target 1
    eps = float(np.quantile(first, 0.55))
    return model, x, y, eps, first, np.min(ranked, axis=0)  # ... and for targets 1-3


def _counting(model):
    """model, and a Counter of the batch sizes of every call made to it (run time, not trace)."""
    sizes = collections.Counter()

    def record(v):
        sizes[v.shape[0]] += 1

    def counted(v):
        jax.debug.callback(record, v)
        return model(v)

    return counted, sizes


def test_only_points_not_yet_broken_are_fed_to_later_targets():
    model, x, y, eps, first, best = _case()
    n_left = int(np.sum(first > eps))  # still robust after target 1
    assert 4 < n_left <= 8 and np.sum(best <= eps) > np.sum(first <= eps)
    kw = dict(key=jax.random.key(0), norm="L2", eps=eps, n_iter=N_ITER, n_target_classes=3)
    counted, sizes = _counting(model)
    res = fab_targeted(counted, x, y, bucket_sizes=(16, 8, 4), **kw)
    jax.effects_barrier()
    # 16 rows: the clean logits and verdict, target 1 (a vjp and a verdict per iteration) and
    # the final verdict; the later targets see at most the 8 rows of the next bucket.
    assert sizes[16] == 2 + 2 * N_ITER + 1
    assert set(sizes) <= {16, 8, 4} and sizes[8] + sizes[4] == 2 * 2 * N_ITER
    assert sizes[8] >= 2 * N_ITER  # target 2 ran on the 5 to 8 points target 1 left
    counted, whole = _counting(model)
    full = fab_targeted(counted, x, y, compact=False, **kw)
    jax.effects_barrier()
    # Every row, every call: the clean pass, then per iteration a vjp, the verdict on the
    # iterates and the verdict on the batch an adversary could submit (breaks are counted
    # there, when they happen, so no final verdict).
    assert dict(whole) == {16: 2 + 3 * 3 * N_ITER}
    # A per-sample model: the same points break either way (the first success within eps, or
    # the smallest over all targets), each within eps of x.
    np.testing.assert_array_equal(res.robust, full.robust)
    np.testing.assert_array_equal(res.robust, best > eps * (1 + 1e-4))
    moved = np.linalg.norm(np.asarray(res.x_adv - x).reshape(16, -1), axis=1)
    assert np.all(moved[~np.asarray(res.robust)] <= eps)


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["fab-t", "fab"])
def test_compacted_restarts_agree_with_whole_batches_and_on_1_2_and_4_devices(attack):
    """Random restarts draw per point (keyed by its row), so a point's runs do not depend on
    the bucket it sits in: compacted and whole-batch runs break the same points, and the
    compacted run gives the same result on 1, 2 and 4 devices."""
    model, x, y, _, _, _ = _case()
    fn = fab_targeted if attack == "fab-t" else fab
    kw = dict(key=jax.random.key(5), norm="Linf", n_iter=N_ITER, n_restarts=3)
    if attack == "fab-t":
        kw["n_target_classes"] = 2
    found = fn(model, x, y, compact=False, eps=10.0, **kw).x_adv - x
    kw["eps"] = float(np.median(np.abs(np.asarray(found)).reshape(16, -1).max(1)))
    full = fn(model, x, y, compact=False, **kw)
    robust = np.asarray(full.robust)
    assert robust.any() and not robust.all()
    out = []
    for n in (1, 2, 4):
        sharding = data_sharding(make_mesh(take_devices(n)))
        xs, ys = jax.device_put(x, sharding), jax.device_put(y, sharding)
        out.append(fn(model, xs, ys, bucket_sizes=(16, 8, 4), **kw))
        np.testing.assert_array_equal(out[-1].robust, robust)
    for other in out[1:]:
        np.testing.assert_array_equal(other.x_adv, out[0].x_adv)
