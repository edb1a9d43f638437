"""The one driver of every iterative attack: runs x shrinking x iterations, host or lax loop.

    from hpm_jax.attacks import driver
    result = driver.run(steps, fns, params, x, y, eps, key, runs=n_restarts,
                        phases=[driver.Phase(n_iter, schedule)], loop="auto", compact=True)

An attack is an init / step / finish triple (`Iterative`), written for one batch of rows as
traceable functions, plus a thin public function that validates its settings and calls `run`.
The driver owns every rule around them, once:

- **Runs.** An attack makes `runs` runs (restarts, targets x restarts), each made of
  `phases` (APGD-L1's eps stages; one phase otherwise) of `Phase.n_iter` iterations. The
  state carried between runs (`carry`: the best points, the flags) is per row of the batch.
- **Shrinking.** Before each run the driver asks which rows are still to attack (`todo`). With
  compact (the reference's shrinking batch) the run takes only those rows, re-bucketed into the
  smallest of the bucket sizes that holds them (`batching.select`); without, every row, and
  the attack stops once no row is left. An attack whose rows finish on their own inside a run
  (`live`: Square's broken points) is also re-bucketed inside the run whenever its unfinished
  rows fit a smaller bucket, its padding frozen (`freeze`).
- **Loops.** The iterations of a phase are, with `loop="lax"`, one jitted `lax` loop; with
  `loop="host"`, one jitted call per iteration; "auto" takes the host loop on CPU for gradient
  attacks (XLA:CPU runs the backward convolutions of a model inside a while loop without its
  fast kernels, 2-3x slower, see benchmarks/RESULTS.md) and the lax loop otherwise. Both give
  the same iterates up to float rounding (inside a loop XLA:CPU sums a convolution's input
  gradient in another order, 1 ulp apart; tests/test_lax_host.py). Per-iteration values
  (`Phase.schedule`: APGD's step-size checkpoints, Square's window sizes) enter as traced
  values, so the host loop's step compiles once whatever the number of iterations. On
  several devices the host loop waits for each step:
  queued programs whose collectives (the sharded batch's all-gathers) wait for each other can
  occupy every thread of XLA:CPU's pool, which then starves and aborts after 40 s.
- **Compilation.** The `Iterative` object is hashable and static (its settings); the logits
  functions (`fns`, pytrees: their weights traced), the scalar settings (`params`), the batch
  and the state are traced arguments, so each piece compiles once per attack configuration
  and batch shape.

Everything an attack gets is per row (`Batch`: x, y, eps, ids, the rows' places in the
attack's batch, so draws keyed by them do not depend on the bucket), and `Context` (the key,
the run and the phase, traced).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from hpm_jax.attacks import batching
from hpm_jax.runtime.xla_options import jit

LOOPS = ("auto", "lax", "host")
Carry = Any  # a pytree of (B, ...) arrays (None leaves allowed)
State = Any


class Batch(NamedTuple):
    """The rows an attack works on: x (B, H, W, C), y (B,), eps (B,), ids (B,) int32 (each
    row's place in the attack's batch)."""

    x: jax.Array
    y: jax.Array
    eps: jax.Array
    ids: jax.Array


class Context(NamedTuple):
    """Where a call stands: the attack's key, the run and the phase (int32 scalars)."""

    key: jax.Array
    run: jax.Array
    phase: jax.Array


class Phase(NamedTuple):
    """n_iter iterations; schedule: a pytree of host arrays of leading size n_iter, whose
    i-th entries the i-th iteration reads (traced)."""

    n_iter: int
    schedule: Any = ()


class Iterative(Protocol):
    """An attack as the driver runs it; hashable (its static settings). `fns` is the pair
    (loss_fn, judge_fn) of traced logits functions, `params` the traced scalar settings."""

    gradients: bool  # loop="auto" takes the host loop on CPU

    def begin(self, fns, params, batch: Batch, key: jax.Array) -> Carry:
        """The carry before the first run (the clean pass), on the whole batch."""

    def todo(self, carry: Carry) -> jax.Array:
        """(B,) bool: the rows the next run attacks."""

    def init(self, fns, params, batch: Batch, carry: Carry, ctx: Context, prev: State | None,
             real: jax.Array) -> State:  # fmt: skip
        """The state of a phase on the run's rows (prev: the previous phase's, else None);
        real: (rows,) the rows to attack (False on padding and rows not todo)."""

    def step(self, fns, params, batch: Batch, ctx: Context, state: State, i: jax.Array,
             schedule: Any) -> State:  # fmt: skip
        """Iteration i (traced) with this iteration's schedule entries."""

    def live(self, state: State) -> jax.Array | None:
        """(rows,) bool, the rows still iterating, for shrinking inside a run; None: no such
        shrinking (every row iterates to the end)."""

    def freeze(self, state: State, real: jax.Array) -> State:
        """The state with the rows where ~real (padding after re-bucketing) frozen."""

    def end(self, fns, params, batch: Batch, carry: Carry, state: State) -> Carry:
        """The run's rows of the carry, updated with the run's final state."""

    def finish(self, fns, params, batch: Batch, carry: Carry) -> Any:
        """The attack's result from the final carry, on the whole batch."""


# ------------------------------------------------------------------ the jitted pieces
@functools.partial(jit, static_argnames="attack")
def _begin(attack, fns, params, batch, key):
    return attack.begin(fns, params, batch, key)


@functools.partial(jit, static_argnames="attack")
def _todo(attack, carry):
    return attack.todo(carry)


@functools.partial(jit, static_argnames="attack")
def _init(attack, fns, params, batch, carry, ctx, prev, real):
    return attack.init(fns, params, batch, carry, ctx, prev, real)


@functools.partial(jit, static_argnames="attack")
def _step(attack, fns, params, batch, ctx, state, i, schedule):
    return attack.step(fns, params, batch, ctx, state, i, schedule)


@functools.partial(jit, static_argnames="attack")
def _live(attack, state):
    return attack.live(state)


@functools.partial(jit, static_argnames="attack")
def _count_live(attack, state):
    return jnp.sum(attack.live(state))


def _lax_iterations(attack, fns, params, batch, ctx, state, schedule, start, stop_at, n_iter):
    """Iterations start, start + 1, ... < n_iter as one lax loop; for an attack with `live`,
    also stopping once at most stop_at rows are live. Returns (next i, state, live rows)."""

    def body(i, s):
        entries = jax.tree_util.tree_map(lambda a: a[i], schedule)
        return attack.step(fns, params, batch, ctx, s, i, entries)

    if attack.live(state) is None:
        state = jax.lax.fori_loop(start, n_iter, body, state)
        return jnp.int32(n_iter), state, jnp.int32(0)

    def cond(carry):
        i, s = carry
        return (i < n_iter) & (jnp.sum(attack.live(s)) > stop_at)

    i, state = jax.lax.while_loop(cond, lambda c: (c[0] + 1, body(*c)), (start, state))
    return i, state, jnp.sum(attack.live(state))


@functools.partial(jit, static_argnames=("attack", "n_iter"))
def _loop(attack, fns, params, batch, ctx, state, schedule, start, stop_at, *, n_iter):
    return _lax_iterations(attack, fns, params, batch, ctx, state, schedule, start, stop_at,
                           n_iter)  # fmt: skip


@functools.partial(jit, static_argnames="attack")
def _freeze(attack, state, real):
    return attack.freeze(state, real)


@functools.partial(jit, static_argnames="attack")
def _end(attack, fns, params, batch, carry, state):
    return attack.end(fns, params, batch, carry, state)


@functools.partial(jit, static_argnames="attack")
def _finish(attack, fns, params, batch, carry):
    return attack.finish(fns, params, batch, carry)


def compiled_programs() -> dict[str, int]:
    """How many programs each jitted piece has compiled so far (tests of recompilation)."""
    pieces = dict(begin=_begin, todo=_todo, init=_init, step=_step, loop=_loop, end=_end,
                  finish=_finish, freeze=_freeze, live=_live, count_live=_count_live)  # fmt: skip
    return {name: fn._cache_size() for name, fn in pieces.items()}


def lower(
    attack: Iterative,
    fns,
    params,
    x: jax.Array,
    y: jax.Array,
    eps: jax.Array,
    key: jax.Array,
    *,
    phase: Phase,
    loop: str = "lax",
) -> jax.stages.Lowered:
    """The program of one phase's iterations on the batch, lowered (not run): the whole lax
    loop, or one host-loop step. For inspecting a program (its size, its memory)."""
    ids = jnp.arange(x.shape[0], dtype=jnp.int32)
    batch = Batch(x, y, eps, ids)
    ctx = Context(key, np.int32(0), np.int32(0))
    carry = _begin.eval_shape(attack, fns, params, batch, key)
    real = jnp.ones(y.shape, bool)
    state = _init.eval_shape(attack, fns, params, batch, carry, ctx, None, real)
    schedule = jax.tree_util.tree_map(jnp.asarray, phase.schedule)
    if loop == "lax":
        return _loop.lower(attack, fns, params, batch, ctx, state, schedule, np.int32(0),
                           np.int32(0), n_iter=int(phase.n_iter))  # fmt: skip
    entries = jax.tree_util.tree_map(lambda a: a[0], schedule)
    return _step.lower(attack, fns, params, batch, ctx, state, np.int32(0), entries)


# ---------------------------------------------------------------------------- the loops
def check_loop(loop: str) -> None:
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}.")


def use_host_loop(loop: str, x: Any, gradients: bool = True) -> bool:
    """Whether `loop` runs as one call per iteration for the batch x ("auto": on CPU, for a
    gradient attack)."""
    if loop != "auto":
        return loop == "host"
    devices = x.devices() if isinstance(x, jax.Array) else jax.devices()
    return gradients and any(d.platform == "cpu" for d in devices)


def _spans_devices(x: Any) -> bool:
    return isinstance(x, jax.Array) and len(x.devices()) > 1


def _has_live(attack, state) -> bool:
    """Whether the attack's rows finish on their own inside a run (Square's broken points)."""
    return jax.eval_shape(attack.live, state) is not None


def _iterate(attack, fns, params, batch, ctx, state, phase: Phase, sizes, host: bool):
    """The iterations of one phase on the run's rows. For an attack with `live`, the loop
    stops once no row is live, and with `sizes` (compact) the live rows are re-bucketed
    (among the run's rows) whenever they fit a smaller size, their padding frozen."""
    n_iter, has_live = int(phase.n_iter), _has_live(attack, state)
    sizes = tuple(sizes) if has_live else ()
    sync = host and _spans_devices(batch.x)
    rows, whole, i, n_live = batching.Rows.full(batch.x.shape[0]), state, 0, 0
    while True:
        smaller = [s for s in sizes if s < rows.size]
        stop_at = max(smaller) if smaller else 0
        b = rows.take(batch)
        if host:
            while i < n_iter:
                entries = jax.tree_util.tree_map(lambda a, i=i: a[i], phase.schedule)
                state = _step(attack, fns, params, b, ctx, state, np.int32(i), entries)
                i += 1
                if sync:
                    jax.block_until_ready(state)
                if has_live:
                    n_live = int(_count_live(attack, state))  # one sync per iteration
                    if n_live <= stop_at:
                        break
        else:
            schedule = jax.tree_util.tree_map(jnp.asarray, phase.schedule)
            i, state, n_live = _loop(attack, fns, params, b, ctx, state, schedule, np.int32(i),
                                     np.int32(stop_at), n_iter=n_iter)  # fmt: skip
            i, n_live = int(i), int(n_live)  # one host sync per bucket
        whole = rows.put(whole, state)
        if i >= n_iter or n_live == 0 or not sizes:
            return whole
        rows = batching.select(batching.to_host(_live(attack, whole)), sizes)
        state = _freeze(attack, rows.take(whole), rows.real_mask(batch.y))


def run_traced(
    attack: Iterative,
    fns,
    params,
    x: jax.Array,
    y: jax.Array,
    eps: jax.Array,
    key: jax.Array,
    *,
    runs: int,
    phases: Sequence[Phase],
) -> Any:
    """`run` as one traceable computation, for use inside a jitted program (a training step):
    every run on the whole batch (compact=False), its iterations one lax loop per phase, no
    host sync and no early stop (a run whose rows are all done still runs; `todo` masks
    `real` only). The same iterates as `run(..., compact=False)` wherever that runs every
    run (an attack whose `todo` stays True, as the training attacks')."""
    ids = jnp.arange(x.shape[0], dtype=jnp.int32)
    batch = Batch(x, y, eps, ids)
    carry = attack.begin(fns, params, batch, key)
    for r in range(int(runs)):
        real = attack.todo(carry)
        state = None
        for p, phase in enumerate(phases):
            ctx = Context(key, jnp.int32(r), jnp.int32(p))
            state = attack.init(fns, params, batch, carry, ctx, state, real)
            schedule = jax.tree_util.tree_map(jnp.asarray, phase.schedule)
            start, stop_at = jnp.int32(0), jnp.int32(0)
            _, state, _ = _lax_iterations(attack, fns, params, batch, ctx, state, schedule,
                                          start, stop_at, int(phase.n_iter))  # fmt: skip
        carry = attack.end(fns, params, batch, carry, state)
    return attack.finish(fns, params, batch, carry)


def run(attack: Iterative, fns, params, x: jax.Array, y: jax.Array, eps: jax.Array,
        key: jax.Array, *, runs: int, phases: Sequence[Phase], loop: str = "auto",
        compact: bool = True, bucket_sizes: Sequence[int] | None = None) -> Any:  # fmt: skip
    """Run `attack` on the batch (x, y, eps (B,)) with the logits functions `fns` (traced
    pytrees, see `contract.traced_pair`) and the traced settings `params`; returns its
    `finish`. One host sync per run (and per re-bucketing inside a run)."""
    check_loop(loop)
    x, y = jnp.asarray(x), jnp.asarray(y)  # NumPy input: one transfer, not one per iteration
    sizes = batching.attack_sizes(x, bucket_sizes) if compact else ()
    ids = batching.place_like(np.arange(x.shape[0], dtype=np.int32), y)
    batch = Batch(x, y, eps, ids)
    host = use_host_loop(loop, x, attack.gradients)
    carry = _begin(attack, fns, params, batch, key)
    for r in range(int(runs)):
        todo = batching.to_host(_todo(attack, carry))  # one host sync per run
        if compact:
            rows = batching.select(todo, sizes)
            if rows is None:
                break
        elif not todo.any():
            break
        else:
            rows = batching.Rows.full(x.shape[0])
        b, c = rows.take(batch), rows.take(carry)
        real = rows.real_mask(y) & rows.take(batching.place_like(todo, y))
        state = None
        for p, phase in enumerate(phases):
            ctx = Context(key, np.int32(r), np.int32(p))
            state = _init(attack, fns, params, b, c, ctx, state, real)
            state = _iterate(attack, fns, params, b, ctx, state, phase, sizes, host)
        carry = rows.put(carry, _end(attack, fns, params, b, c, state))
    return _finish(attack, fns, params, batch, carry)
