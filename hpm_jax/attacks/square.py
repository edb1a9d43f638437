"""Square Attack (Andriushchenko, Croce et al., 2020): score-based random search, as AutoAttack.

    from hpm_jax.attacks.square import square, square_run
    res = square(logits_fn, x, y, key=jax.random.key(0), norm="Linf", eps=8 / 255)
    res.x_adv, res.robust                   # (B, H, W, C) within eps of x, (B,) bool
    res = square(logits_fn, x, y, key=key, norm="L2", eps=0.5, n_queries=1000)
    res = square(logits_fn, x, y, key=key, norm="L1", eps=12.0)
    run = square_run(logits_fn, x, y, key=key, eps=8 / 255)   # one run, no judge:
    run.x_best, run.margin, run.n_queries   # best point, its margin, queries used per sample

Square needs only scores. Linf starts from vertical stripes (each column of each channel
at +eps or -eps), then each iteration proposes one square window per sample, of side
s = f(p, image size), in which each channel is set to a fresh +eps or -eps; the proposal is
kept where it lowers the loss (the margin z_y - max_{c != y} z_c by default) or
misclassifies. L2 starts from a grid of squares carrying the reference's meta-pattern
(concentric rectangles, positive in one half and negative in the other) and each proposal
moves the perturbation mass of a second window into the first, keeping ||delta||_2 = eps.
L1 does the same with the L1 meta-pattern and L1 norms, and projects each start and proposal
onto the L1 ball (radius eps (1 - 1e-6)) intersected with the box, as the reference's L1
version (starts and proposals: `square_proposals`).
The fraction p of the image a square covers starts at p_init and halves after 10, 50, 200,
500, 1000, 2000, 4000, 6000 and 8000 iterations (`p_selection`; with resc_schedule=True
those counts are read per 10000 of the budget).

Defaults are those of AutoAttack's `standard` version: 5000 queries, p_init 0.8, one
restart, margin loss, no rescaled schedule. A point is queried at the start and once per
iteration until its margin under `logits_fn` is <= 0; then it is frozen (its best point is
kept and no more queries are counted). At most n_queries + 1 queries per sample and run.

`logits_fn` supplies the scores that drive the search; `judge_fn` (default `logits_fn`)
decides success after each restart, called at once on the rows that restart attacked (with
compact=False, at every query instead: see below).
Restarts attack only the points the judge still finds robust. As in the reference, points
that stay robust come back as x, broken ones as the point that broke them, and points the
judge gets wrong on x come back as x with robust False.

Shrinking (compact=True, the default, as the reference's shrinking batch): the unbroken
points are re-bucketed into the smallest of `bucket_sizes` (default
`buckets.bucket_sizes(B, devices)`; the chain passes its own) that holds them as soon as they
fit (`shrink`), so a broken point is fed to the model only as padding of a bucket. Every draw
is keyed by the iteration and the point's row in the batch, so the search of a point does
not depend on its bucket: a per-sample model gives the same result with compact=False, which
feeds the whole batch at every query (batch-coupled judges: the Mixed Surrogate Attack) and
judges every query as APGD judges every iterate: a point the judge misclassifies in the
queried batch (every image within eps) is broken, with that image, even if later queries of
the other points change its verdict (a judge that is logits_fn reads the query's own logits;
another judge costs one more call per query).

Shape: per bucket, one jitted `lax.while_loop` over iterations that exits when every point
is broken, the budget is spent, or the unbroken points fit a smaller bucket (one host sync
per bucket and restart). The window side changes with the iteration, so windows are masks
built from iota comparisons, never shape-changing slices. The array leaves of `logits_fn` and
`judge_fn` are traced (pytree logits functions, see `contract`; plain closures are static,
hashed by identity), the settings are one static `SquareConfig`; eps is traced, a number or
one value per image (B,), so eps sweeps do not recompile.
A fixed key gives the same result on any number of devices.

loss="ce" (the reference's other option) accepts proposals that raise the cross-entropy
instead; a misclassifying proposal is kept either way.

Differences from the reference (pyautoattack's SquareAttack): window positions, the Linf
per-channel signs and the L2 pattern's random transpositions are drawn per sample, where the
reference draws them once per iteration (or start tile) for the whole batch. The random
streams differ (JAX vs torch), so parity is statistical.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from hpm_jax.attacks import common, contract, losses, shrink
from hpm_jax.attacks.square_proposals import (  # noqa: F401  (l2_init etc.: public here too)
    _l1_proposal,
    _l2_proposal,
    _linf_proposal,
    _radius,
    l1_init,
    l1_pattern,
    l2_init,
    l2_pattern,
    linf_init,
)
from hpm_jax.runtime.xla_options import jit

NORMS = ("Linf", "L2", "L1")
LOSSES = ("margin", "ce")
# The iteration counts after which p halves (the reference's p_selection), in increasing order.
P_THRESHOLDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


class SquareRun(NamedTuple):
    """One run of the search on every point of a batch (no judge, no restart).

    x_best: (B, H, W, C) the lowest-loss point found, or the first misclassified one.
    margin: (B,) its margin z_y - max_{c != y} z_c under logits_fn (<= 0: broken).
    n_queries: (B,) int32, queries spent on each point (1 for the start + 1 per iteration
    while the point was unbroken).
    """

    x_best: jax.Array
    margin: jax.Array
    n_queries: jax.Array


# ---- the schedule (host side, static) --------------------------------------------------------


def _halvings(it: int, n_queries: int, resc_schedule: bool) -> int:
    """How many times p has halved by iteration `it` (0-based)."""
    if resc_schedule:
        it = int(it / n_queries * 10000)  # the reference's float arithmetic, kept exactly
    return sum(it > t for t in P_THRESHOLDS)


def p_selection(
    it: int, *, n_queries: int = 5000, p_init: float = 0.8, resc_schedule: bool = False
) -> float:
    """p at iteration `it` (0-based): p_init halved once per threshold of P_THRESHOLDS that
    `it` exceeds. With resc_schedule the iteration is first mapped onto a 10000 budget."""
    return p_init / 2 ** _halvings(it, n_queries, resc_schedule)


def square_side(p: float, height: int, width: int, channels: int, norm: str) -> int:
    """The side of the square window for fraction p of an image, as the reference computes it:
    round(sqrt(p * H * W)), at least 1 (Linf) or at least 3 and odd (L2), at most min(H, W)."""
    contract.check_norm(norm, NORMS)
    n_features = channels * height * width
    side = round(math.sqrt(p * n_features / channels))  # round half to even, as Python's
    if norm == "Linf":
        side = max(side, 1)
    else:
        side = max(side, 3)
        side += side % 2 == 0
    return min(side, height, width)


def _schedule(n_queries, p_init, resc_schedule, shape, norm):
    """Per iteration, the number of halvings of p so far; per halving count, the side."""
    _, h, w, c = shape
    # One entry at least, so that indexing stays valid in the (never run) body when n_queries=0.
    levels = [_halvings(i, n_queries, resc_schedule) for i in range(n_queries)] or [0]
    sides = [square_side(p_init / 2**k, h, w, c, norm) for k in range(len(P_THRESHOLDS) + 1)]
    return np.asarray(levels, np.int32), sides


def _scores(logits_fn, judge_fn, x_in, y, config):
    """(margin, loss to minimise, judge misclassifies), all (B,), from one query of the whole
    batch. The judge is asked only with config.exact (a shared judge reads the same logits);
    otherwise the last is None and the judge decides after the run."""
    logits = logits_fn(x_in)
    chex.assert_rank(logits, 2)
    chex.assert_axis_dimension(logits, 0, x_in.shape[0])
    margin = losses.margin(logits, y)
    score = margin if config.loss == "margin" else -losses.cross_entropy(logits, y)
    if not config.exact:
        return margin, score, None
    judged = logits if config.shared_judge else judge_fn(x_in)
    return margin, score, ~common.correct(judged, y)


@dataclasses.dataclass(frozen=True)
class SquareConfig:
    """The static settings of Square (one compiled program per distinct value)."""

    norm: str
    n_queries: int
    p_init: float
    loss: str
    resc_schedule: bool
    n_restarts: int = 1
    exact: bool = False  # compact=False: every query judged in its batch (`_scores`)
    shared_judge: bool = True


def _table(sides, norm, dtype):
    """Each level's L2 / L1 pattern, zero-padded to the largest side (None for Linf)."""
    if norm == "Linf":
        return None
    table = np.zeros((len(sides), max(sides), max(sides)))
    for k, side in enumerate(sides):
        table[k, :side, :side] = l2_pattern(side, norm)
    return jnp.asarray(table, dtype)


def _row_keys(key: jax.Array, ids: jax.Array) -> jax.Array:
    """(B,) keys: row i's is fold_in(key, ids[i]), ids the rows' places in the attack's batch."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)


@functools.partial(jit, static_argnames="config")
def _begin(logits_fn, judge_fn, x, y, x_start, active, ids, key, eps, *, config: SquareConfig):
    """The start of a run (the reference's attack_single_run) on the rows where `active`; the
    others are frozen at x_start (margin -inf, never updated or counted). One query. The state
    is (x_best, margin, loss, queries, broken, adv): the last two the judge's breaks and the
    images that broke them, counted at the query (config.exact only; else None, so the
    per-sample search carries nothing more)."""
    chex.assert_rank(x, 4)
    chex.assert_equal_shape([x, x_start])
    chex.assert_shape([y, active, eps, ids], x.shape[:1])
    init = {"Linf": linf_init, "L2": l2_init, "L1": l1_init}[config.norm]
    start = init(_row_keys(jax.random.split(key)[0], ids), x, eps)
    x_best = jnp.where(common.expand(active, x), start, x_start)
    margin, score, wrong = _scores(logits_fn, judge_fn, x_best, y, config)
    judged = (active & wrong, x_best) if config.exact else (None, None)
    return (x_best, jnp.where(active, margin, -jnp.inf), jnp.where(active, score, -jnp.inf),
            active.astype(jnp.int32), *judged)  # fmt: skip


@functools.partial(jit, static_argnames="config")
def _search(logits_fn, judge_fn, x, y, ids, key, eps, i, stop_at, state, *,
            config: SquareConfig):  # fmt: skip
    """Iterations i, i + 1, ... until n_queries, or until at most `stop_at` (>= 0) rows are
    still unbroken (then the caller re-buckets them). Returns (i, state, rows unbroken)."""
    levels, sides = _schedule(config.n_queries, config.p_init, config.resc_schedule, x.shape,
                              config.norm)  # fmt: skip
    table = _table(sides, config.norm, x.dtype)
    levels, sides = jnp.asarray(levels), jnp.asarray(sides, jnp.int32)
    k_loop = jax.random.split(key)[1]
    eps = _radius(eps, x)  # (B, 1, 1, 1) for the proposals

    def cond(carry):
        i, (_, margin_min, *_) = carry
        return (i < config.n_queries) & (jnp.sum(margin_min > 0) > stop_at)

    def body(carry):
        i, (x_best, margin_min, loss_min, queries, broken, adv) = carry
        todo = margin_min > 0
        level = levels[i]
        keys = _row_keys(jax.random.fold_in(k_loop, i), ids)
        if config.norm == "Linf":
            x_new = _linf_proposal(keys, x, x_best, eps, sides[level])
        else:
            propose = _l2_proposal if config.norm == "L2" else _l1_proposal
            x_new = propose(keys, x, x_best, eps, sides[level], table[level])
        x_new = jnp.where(common.expand(todo, x), x_new, x_best)
        margin, score, wrong = _scores(logits_fn, judge_fn, x_new, y, config)
        lower = todo & (score < loss_min)
        accept = lower | (todo & (margin <= 0))  # a misclassifying proposal is always kept
        if config.exact:  # the judge's breaks, when they happen (frozen-out rows excepted)
            first = wrong & ~broken & (margin_min > -jnp.inf)
            broken, adv = broken | first, jnp.where(common.expand(first, x), x_new, adv)
        return i + 1, (
            jnp.where(common.expand(accept, x), x_new, x_best),
            jnp.where(accept, margin, margin_min),
            jnp.where(lower, score, loss_min),
            queries + todo.astype(jnp.int32),
            broken,
            adv,
        )

    i, state = jax.lax.while_loop(cond, body, (i, state))
    return i, state, jnp.sum(state[1] > 0)


def _single_run(logits_fn, judge_fn, x, y, x_start, active, ids, key, eps, *, config,
                sizes) -> tuple[jax.Array, ...]:  # fmt: skip
    """One run on the rows where `active` (host (B,) bool), the others frozen at x_start; the
    final state of `_begin`. With `sizes` (compact), the unbroken rows are re-bucketed into
    the smallest size that holds them whenever that is smaller, so broken points are fed only
    as padding."""
    rows = shrink.select(active, sizes) if sizes else shrink.Rows.full(len(active))
    active_dev = shrink.place_like(np.asarray(active, bool), y)
    judged = (jnp.zeros(y.shape, bool), x_start) if config.exact else (None, None)
    full = (x_start, jnp.full(y.shape, -jnp.inf, x.dtype), jnp.full(y.shape, -jnp.inf, x.dtype),
            jnp.zeros(y.shape, jnp.int32), *judged)  # fmt: skip
    if rows is None:
        return full
    i = 0
    while True:
        xb, yb, idb, eb = rows.take(x), rows.take(y), rows.take(ids), rows.take(eps)
        if i == 0:  # padding rows (repeats) start frozen
            real = shrink.place_like(np.arange(rows.size) < rows.n, yb) & rows.take(active_dev)
            state = _begin(logits_fn, judge_fn, xb, yb, rows.take(x_start), real, idb, key, eb,
                           config=config)  # fmt: skip
        else:
            real = shrink.place_like(np.arange(rows.size) < rows.n, yb)
            state = tuple(None if a is None else rows.take(a) for a in full)
            state = (state[0], jnp.where(real, state[1], -jnp.inf), *state[2:])
        smaller = [s for s in sizes if s < rows.size]
        stop_at = np.int32(max(smaller) if smaller else 0)
        i, state, n_left = _search(logits_fn, judge_fn, xb, yb, idb, key, eb, np.int32(i),
                                   stop_at, state, config=config)  # fmt: skip
        pairs = zip(full, state, strict=True)
        full = tuple(None if f is None else rows.put(f, b) for f, b in pairs)
        i, n_left = int(i), int(n_left)  # one host sync per bucket
        if i >= config.n_queries or n_left == 0:
            return full
        rows = shrink.select(shrink.to_host(full[1] > 0), sizes)


@functools.partial(jit, static_argnames="n")
def _judge(judge_fn, x_in, y, *, n):
    """(rows,) bool: the judge's verdict on the rows it is given, all at once."""
    logits = judge_fn(x_in)
    chex.assert_rank(logits, 2)
    chex.assert_axis_dimension(logits, 0, n)
    return common.correct(logits, y)


_merge = jit(
    lambda x_adv, robust, x_best, judged: (
        jnp.where(common.expand(robust & ~judged, x_adv), x_best, x_adv),
        robust & judged,
    )
)


def _restarts(loss_fn, judge_fn, x, y, key, eps, *, config, sizes):
    """Restart r (key fold_in(key, r)) on the points the judge still finds robust; a break is
    kept. With config.exact, a point is broken at the query where the judge misclassified it
    in its batch; otherwise the judge decides after the run, on the rows the run attacked."""
    ids = shrink.place_like(np.arange(x.shape[0], dtype=np.int32), y)
    robust, x_adv = _judge(judge_fn, x, y, n=x.shape[0]), x
    for r in range(config.n_restarts):
        active = shrink.to_host(robust)  # one host sync per restart
        if not active.any():
            break
        x_best, _, _, _, broken, adv = _single_run(
            loss_fn, judge_fn, x, y, x_adv, active, ids, jax.random.fold_in(key, r), eps,
            config=config, sizes=sizes,
        )  # fmt: skip
        if config.exact:
            x_adv, robust = _merge(x_adv, robust, adv, ~broken)
            continue
        # x_best is x_adv wherever the point was frozen, so the judge sees the batch as is.
        rows = shrink.select(active, sizes) if sizes else shrink.Rows.full(len(active))
        judged_b = _judge(judge_fn, rows.take(x_best), rows.take(y), n=rows.size)
        judged = rows.put(jnp.ones_like(robust), judged_b)
        x_adv, robust = _merge(x_adv, robust, x_best, judged)
    return x_adv, robust


def _prepare(logits_fn, judge_fn, x, y, *, norm, eps, n_queries, p_init, n_restarts, loss,
             resc_schedule, compact) -> tuple[contract.Checked, SquareConfig]:  # fmt: skip
    """The contract's checks and Square's own; (checked inputs, the static config)."""
    # The image size first: a model built for larger images could not even be traced on these.
    if norm in ("L2", "L1") and np.ndim(x) == 4 and min(x.shape[1:3]) < 5:
        raise ValueError(
            f"{norm} Square needs images of at least 5 x 5 pixels (its start tiles the image in "
            f"squares of side H // 5), got {x.shape[1]} x {x.shape[2]}."
        )
    checked = contract.validate(logits_fn, judge_fn, x, y, norm=norm, eps=eps,
                                allowed_norms=NORMS)  # fmt: skip
    contract.check_int("n_queries", n_queries, 0)
    if not isinstance(p_init, float | int) or not 0 < p_init <= 1:
        raise ValueError(f"p_init must be a fraction of the image in (0, 1], got {p_init!r}.")
    contract.check_int("n_restarts", n_restarts, 1)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
    config = SquareConfig(
        norm=norm, n_queries=int(n_queries), p_init=float(p_init), loss=loss,
        resc_schedule=bool(resc_schedule), n_restarts=int(n_restarts), exact=not compact,
        shared_judge=checked.judge_fn is logits_fn,
    )  # fmt: skip
    return checked, config


def _sizes(x, compact: bool, bucket_sizes) -> tuple[int, ...]:
    return shrink.attack_sizes(x, bucket_sizes) if compact else ()


def square_run(
    logits_fn: contract.LogitsFn,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    norm: str = "Linf",
    eps: float | jax.Array,
    n_queries: int = 5000,
    p_init: float = 0.8,
    loss: str = "margin",
    resc_schedule: bool = False,
    compact: bool = True,
    bucket_sizes: Sequence[int] | None = None,
) -> SquareRun:
    """One run of the search on every point of the batch, judged by logits_fn alone (the
    reference's `attack_single_run`): the best point, its margin and the queries per sample.
    With resc_schedule=False, the run with n_queries=k is the first k iterations of any longer
    run with the same key. compact, bucket_sizes: as `square`."""
    checked, config = _prepare(logits_fn, None, x, y, norm=norm, eps=eps, n_queries=n_queries,
                               p_init=p_init, n_restarts=1, loss=loss,
                               resc_schedule=resc_schedule, compact=True)  # fmt: skip
    x, y = jnp.asarray(x), jnp.asarray(y)
    ids = shrink.place_like(np.arange(x.shape[0], dtype=np.int32), y)
    active = np.ones(x.shape[0], bool)
    fn = contract.traced(logits_fn, x)
    x_best, margin, _, n_queries, _, _ = _single_run(
        fn, fn, x, y, x, active, ids, key, checked.eps, config=config,
        sizes=_sizes(x, compact, bucket_sizes),
    )  # fmt: skip
    return SquareRun(x_best, margin, n_queries)


def square(
    logits_fn: contract.LogitsFn,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    norm: str = "Linf",
    eps: float | jax.Array,
    n_queries: int = 5000,
    p_init: float = 0.8,
    n_restarts: int = 1,
    judge_fn: contract.LogitsFn | None = None,
    loss: str = "margin",
    resc_schedule: bool = False,
    compact: bool = True,
    bucket_sizes: Sequence[int] | None = None,
) -> contract.AttackResult:
    """Square Attack under the shared contract (defaults: AutoAttack's standard version).

    Restart r runs with `jax.random.fold_in(key, r)` on the points `judge_fn` still finds
    robust; a point broken once stays broken, with the point that broke it as x_adv.
    compact (default): the unbroken points are re-bucketed into the smallest of
    `bucket_sizes` (default `buckets.bucket_sizes(B, devices)`) that holds them as they
    break, so broken points are fed to the model only as padding; False feeds the whole batch
    to every query and counts a break at the query where the judge sees it (batch-coupled
    judges: the Mixed Surrogate Attack).
    """
    checked, config = _prepare(logits_fn, judge_fn, x, y, norm=norm, eps=eps,
                               n_queries=n_queries, p_init=p_init, n_restarts=n_restarts,
                               loss=loss, resc_schedule=resc_schedule,
                               compact=compact)  # fmt: skip
    x, y = jnp.asarray(x), jnp.asarray(y)
    loss_fn, judge = contract.traced_pair(logits_fn, checked.judge_fn, x)
    x_adv, robust = _restarts(loss_fn, judge, x, y, key, checked.eps, config=config,
                              sizes=_sizes(x, compact, bucket_sizes))  # fmt: skip
    return contract.AttackResult(x_adv, robust)
