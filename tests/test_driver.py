"""The one attack driver: its rules (runs, shrinking, loops) on a toy attack whose answer is
known, and every attack's lax loop against its host loop."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from platform_support import take_devices

from hpm_jax.attacks import apgd, apgd_targeted, driver, fab, fab_targeted, square, types
from hpm_jax.runtime.sharding import data_sharding, make_mesh

SEEN: list[int] = []  # the row counts each traced step saw


@dataclasses.dataclass(frozen=True)
class Countdown:
    """Row i needs need[i] iterations of run r to finish, then it is broken by that run (if
    need[i] <= n_iter). Carry: robust, the run that broke each row (-1: none)."""

    gradients: bool = True
    finishes: bool = True  # rows finish on their own (live), as Square's
    tag: str = ""  # a fresh tag is a new static attack: the driver's pieces trace it anew

    def begin(self, fns, params, batch, key):
        return dict(robust=jnp.ones(batch.y.shape, bool), by=jnp.full(batch.y.shape, -1))

    def todo(self, carry):
        return carry["robust"]

    def init(self, fns, params, batch, carry, ctx, prev, real):
        # Each run halves what is left to do, so later runs break rows earlier runs did not.
        need = (params["need"][batch.ids] >> ctx.run).astype(jnp.int32)
        return dict(left=jnp.where(real, need, 0), real=real, run=jnp.full_like(need, ctx.run))

    def step(self, fns, params, batch, ctx, state, i, schedule):
        SEEN.append(batch.x.shape[0])
        active = state["left"] > 0
        return dict(state, left=jnp.where(active, state["left"] - 1, 0))

    def live(self, state):
        return state["left"] > 0 if self.finishes else None

    def freeze(self, state, real):
        return dict(state, left=jnp.where(real, state["left"], 0))

    def end(self, fns, params, batch, carry, state):
        newly = carry["robust"] & state["real"] & (state["left"] == 0)
        return dict(robust=carry["robust"] & ~newly, by=jnp.where(newly, state["run"], carry["by"]))

    def finish(self, fns, params, batch, carry):
        return carry["robust"], carry["by"]


def _countdown(need, *, runs, n_iter, loop, compact, finishes=True, sizes=None, tag=""):
    batch = len(need)
    x = jnp.zeros((batch, 1, 1, 1))
    y = jnp.zeros(batch, jnp.int32)
    params = dict(need=jnp.asarray(need, jnp.int32))
    return driver.run(Countdown(finishes=finishes, tag=tag), (None, None), params, x, y,
                      jnp.ones(batch), jax.random.key(0), runs=runs,
                      phases=[driver.Phase(n_iter)], loop=loop, compact=compact,
                      bucket_sizes=sizes)  # fmt: skip


def _expected(need, runs, n_iter):
    """(robust, the run that broke each row): row i is broken by the first run r with
    need[i] >> r <= n_iter."""
    robust, by = np.ones(len(need), bool), np.full(len(need), -1)
    for r in range(runs):
        newly = robust & (np.asarray(need) >> r <= n_iter)
        robust, by = robust & ~newly, np.where(newly, r, by)
    return robust, by


@pytest.mark.parametrize("loop", ["host", "lax"])
@pytest.mark.parametrize("compact", [True, False])
def test_runs_stop_and_shrink_as_the_rule_says(loop, compact):
    need = np.array([0, 3, 40, 9, 200, 5, 17, 1, 33, 70, 2, 6, 12, 90, 4, 8])
    robust, by = _countdown(need, runs=3, n_iter=10, loop=loop, compact=compact)
    expected_robust, expected_by = _expected(need, 3, 10)
    assert 0 < expected_robust.sum() and set(expected_by) == {-1, 0, 1, 2}
    np.testing.assert_array_equal(np.asarray(robust), expected_robust)
    np.testing.assert_array_equal(np.asarray(by), expected_by)


def test_rows_that_finish_are_rebucketed_inside_a_run():
    """With compact, each step sees the smallest bucket holding the unfinished rows."""
    need = np.arange(32)  # row i needs i steps: after k steps, 31 - k rows are live
    sizes = (32, 24, 16, 8, 4)
    SEEN.clear()
    _countdown(need, runs=1, n_iter=40, loop="host", compact=True, sizes=sizes, tag="compact")
    # Traced once per bucket size: the step saw 32, then 24, 16, 8 and 4 rows.
    assert SEEN == [32, 24, 16, 8, 4]
    SEEN.clear()
    _countdown(need, runs=1, n_iter=40, loop="host", compact=False, tag="exact")
    assert SEEN == [32]  # exact batches: every row, every step


def test_a_run_without_live_rows_iterates_to_the_end():
    need = np.array([1, 2, 50, 3])
    robust, _ = _countdown(need, runs=1, n_iter=5, loop="lax", compact=True, finishes=False)
    np.testing.assert_array_equal(np.asarray(robust), [False, False, True, False])


def test_unknown_loop_is_a_clear_error():
    with pytest.raises(ValueError, match="loop must be one of"):
        _countdown(np.array([1, 2]), runs=1, n_iter=2, loop="python", compact=True)


# ------------------------------------------------------------------ lax == host per attack
W = jnp.asarray(np.random.default_rng(0).normal(size=(48, 10)), jnp.float32)


def _model(x):
    return 3 * jnp.tanh(x.reshape(x.shape[0], -1) @ W)


def _other(x):  # a judge that ranks classes differently from the model
    return _model(x)[:, ::-1]


ATTACKS = [
    ("apgd-ce", apgd, dict(n_iter=12, n_restarts=2)),
    ("apgd-dlr", apgd, dict(n_iter=12, loss="dlr")),
    ("apgd-t", apgd_targeted, dict(n_iter=12, n_target_classes=3)),
    ("fab-t", fab_targeted, dict(n_iter=8, n_target_classes=3, n_restarts=2)),
    ("fab", fab, dict(n_iter=8, n_restarts=2)),
    ("square", square, dict(n_queries=40, n_restarts=2)),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,attack,settings", ATTACKS, ids=[a[0] for a in ATTACKS])
@pytest.mark.parametrize("compact", [True, False])
def test_every_attack_gives_the_same_result_with_either_loop(name, attack, settings, compact):
    """The lax loop (the GPU/TPU default) and the host loop (the CPU default) run the same
    iterates: the programs differ only in where the loop is, and each elementwise operation
    rounds the same way in both (a linear-tanh model has no convolution whose algorithm
    could differ), so the results are identical, on a batch split over two devices, with a
    judge that ranks the classes unlike the model (the model as its own judge, on a conv
    net: tests/test_lax_host.py)."""
    x = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (20, 4, 4, 3)), jnp.float32)
    y = jnp.argmax(_model(x), 1)
    sharding = data_sharding(make_mesh(take_devices(2)))
    x, y = jax.device_put(x, sharding), jax.device_put(y, sharding)
    kw = dict(key=jax.random.key(3), eps=0.05, compact=compact, judge_fn=_other, **settings)
    results = [attack(_model, x, y, loop=loop, **kw) for loop in ("lax", "host")]
    robust = [np.asarray(r.robust) for r in results]
    np.testing.assert_array_equal(robust[0], robust[1])
    np.testing.assert_array_equal(np.asarray(results[0].x_adv), np.asarray(results[1].x_adv))


def test_attacks_declare_what_the_chain_needs():
    assert apgd.can_shrink and apgd.randomized and set(apgd.norms) == set(types.NORMS)
    assert square.can_shrink and not square.randomized
    assert "n_target_classes" in fab_targeted.options and "loss" not in fab_targeted.options
    plain = types.declared(lambda logits_fn, x, y, **kw: None)
    assert not plain.can_shrink and plain.options is None
