"""Adversarial training and HPM fine-tuning: PGD-AT or TRADES, sharded, resumable.

    summary = run(load_config("configs/fashion_mnist.py:local"), "/tmp/run")
    python -m hpm_jax.train --config=configs/fashion_mnist.py --workdir=/tmp/fmnist_at

The command line (`hpm-train`, its flags, multi-host setup) is `hpm_jax.cli.train`.

The model trains data-parallel over every device of every host (`jax.jit` with the batch
sharded over the mesh's `data` axis, global-batch semantics). WORKDIR receives:
`checkpoints/` (Orbax, every `checkpoint.every_steps`, the last `checkpoint.keep`; a run
started again in the same WORKDIR resumes from the newest complete one and ends where an
uninterrupted run would), `metrics.jsonl` and `tensorboard/` (loss terms, training and
held-out clean / PGD accuracy, images/s), `model/` (the final weights, averaged when
`train.ema_decay` > 0, loadable with `hpm_jax.models.export.load_model`) and `summary.json`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import ml_collections
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from hpm_jax import config_sections, data
from hpm_jax.config_lib import ConfigError
from hpm_jax.models import abstract_variables, judge_mode
from hpm_jax.models.export import CheckpointMismatchError, save_model
from hpm_jax.runtime import identity as identity_lib
from hpm_jax.runtime import integrity, progress
from hpm_jax.runtime.identity import WorkdirMismatchError
from hpm_jax.runtime.sharding import (
    check_batch_divisible,
    data_sharding,
    global_replicated,
    host_values,
    make_mesh,
    replicated,
)
from hpm_jax.training import metrics as metrics_lib
from hpm_jax.training import model_init, objectives, steps
from hpm_jax.training import train_checkpoints as checkpoints_lib
from hpm_jax.training import train_state as state_lib

MODEL_DIR = "model"
SUMMARY = "summary.json"
# Streams of randomness drawn from the seed: fold_in(fold_in(key(seed), stream), step).
_TRAIN_STREAM, _EVAL_STREAM = 1, 2
_CONSOLE_KEYS = ("loss", "train_adv_accuracy_hpm", "train_adv_accuracy_fc", "learning_rate")


# Errors about the setup (config, data, workdir, init checkpoint): printed as one message.
SETUP_ERRORS = (
    ConfigError,
    data.DatasetNotFoundError,
    WorkdirMismatchError,
    model_init.InitCheckpointError,
    CheckpointMismatchError,
)


def identity(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What makes two configs the same run: a checkpoint resumes only under the same one."""
    model = config.model.to_dict()
    model.get("kwargs", {}).pop("dtype", None)  # compute precision may change on resume
    return json.loads(
        json.dumps(
            {
                "model": model,
                "dataset": config.dataset.name,
                "train_split": config.dataset.train_split,
                "objective": config.objective.name,
                "seed": config.seed,
                "init_checkpoint": config.init.checkpoint,
            }
        )
    )


def _global_key(seed: int, stream: int, sharding: NamedSharding) -> jax.Array:
    """The key of one random stream of the run, replicated over the mesh (any process count)."""
    make = jax.jit(lambda: jax.random.fold_in(jax.random.key(seed), stream), out_shardings=sharding)
    return make()


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _print(*args: Any) -> None:
    if jax.process_index() == 0:
        progress.echo(" ".join(str(a) for a in args))  # above a live progress bar


def evaluate(
    eval_fn,
    variables: Any,
    source: data.Source,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    key: jax.Array,
) -> dict[str, float]:
    """Clean and PGD accuracy of `variables` on `source` (the configured eval attack); batch
    i is attacked with fold_in(key, i), so every evaluation draws the same starts."""
    totals = {"clean_correct": 0, "adv_correct": 0, "count": 0}
    batches = data.eval_iterator(source, batch_size=config.eval.batch_size, mesh=mesh)
    for i, batch in enumerate(batches):
        counts = host_values(eval_fn(variables, batch, key, i))
        for name in totals:
            totals[name] += int(counts[name])
    n = max(totals["count"], 1)
    return {
        "eval_clean_accuracy": totals["clean_correct"] / n,
        "eval_pgd_accuracy": totals["adv_correct"] / n,
        "eval_examples": totals["count"],
    }


def _eval_attack(config: ml_collections.ConfigDict) -> objectives.AttackSpec:
    """The held-out attack: PGD with the training eps in eval mode, on `eval.attack`."""
    attack = config.attack.copy_and_resolve_references()
    with attack.unlocked():
        for key, value in config.eval.attack.items():
            attack[key] = value
    spec = objectives.AttackSpec.from_config(attack, head=config.model.head, objective="pgd_at")
    return dataclasses.replace(spec, bn_train=False)


def _sources(config: ml_collections.ConfigDict) -> tuple[data.Source, data.Source]:
    """(training source, held-out source): DatasetNotFoundError when not prepared."""
    ds = config.dataset
    train = data.get_source(ds.name, ds.train_split, data_dir=ds.data_dir or None)
    held_out = data.get_source(ds.name, ds.eval_split, data_dir=ds.data_dir or None)
    if config.eval.num_examples:
        held_out = data.FirstRecords(held_out, int(config.eval.num_examples))
    return train, held_out


def _save_final_model(
    workdir: str, variables: Any, kwargs: dict[str, Any], arch: str, step: int
) -> str:
    """save_model into a temporary directory, then swap it in for WORKDIR/model."""
    final = os.path.join(workdir, MODEL_DIR)
    tmp = os.path.join(workdir, f".{MODEL_DIR}-tmp-step{step}")
    if jax.process_index() == 0 and os.path.exists(tmp):
        shutil.rmtree(tmp)  # left by a run killed while writing it
    _sync("hpm_train_model_tmp_clean")
    save_model(tmp, variables, arch=arch, **kwargs)
    _sync("hpm_train_model_saved")
    if jax.process_index() == 0:
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
    _sync("hpm_train_model_renamed")
    return final


class _Throughput:
    """Images per second over the training steps since the last report (evaluation and the
    first, compiling step excluded), and the total training time."""

    def __init__(self, batch_size: int):
        self.batch_size, self.total_seconds = batch_size, 0.0
        self._seconds, self._steps, self._since = 0.0, 0, None

    def start(self) -> None:
        self._since = time.perf_counter()

    def stop(self) -> None:
        if self._since is not None:
            elapsed = time.perf_counter() - self._since
            self._seconds += elapsed
            self.total_seconds += elapsed
            self._since = None

    def tick(self) -> None:
        self._steps += 1

    def rate(self) -> float | None:
        """Images per second since the last call (None when no step was timed)."""
        rate = self._steps * self.batch_size / self._seconds if self._steps else None
        self._seconds, self._steps = 0.0, 0
        return rate


def _rate_and_eta(bar: progress.Bar) -> str:
    """'  3.10 steps/s  ETA 0:05:12' over this run's steps (compiling and evaluation included,
    as the remaining steps will include them)."""
    rate, eta = bar.rate(), bar.eta()
    if rate is None:
        return ""
    return f"  {rate:.2f} steps/s" + (f"  ETA {progress.format_seconds(eta)}" if eta else "")


SECTIONS = config_sections.TRAINING_SECTIONS


def _check_config(config: ml_collections.ConfigDict, mesh: Mesh | None) -> None:
    """The sections and values; with a mesh, also that its devices split the batches."""
    missing = [name for name in SECTIONS if name not in config]
    if missing:
        raise ValueError(
            f"the config has no section(s) {missing}; a training config has {list(SECTIONS)} "
            "(hpm_jax.config_sections builds them; see configs/fashion_mnist.py)."
        )
    if mesh is not None:
        check_batch_divisible(config.train.batch_size, mesh)
        check_batch_divisible(config.eval.batch_size, mesh)
    if config.train.num_steps < 1:
        raise ValueError(f"train.num_steps must be >= 1, got {config.train.num_steps}.")
    if not 0 <= config.train.ema_decay < 1:
        raise ValueError(
            f"train.ema_decay must be in [0, 1) (0: off), got {config.train.ema_decay}."
        )


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError or InitCheckpointError for what `run` would refuse in the config
    itself (sections, values, the model, objective and optimizer it builds, init.checkpoint
    named), reading no data or checkpoint and using no device: the check `hpm-train
    --check_config` makes, which `launch/tpu.sh` runs locally before it creates a TPU (whose
    devices and files this machine does not have)."""
    try:
        _check_config(config, None)
        _Setup(config)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ConfigError(f"Bad config: {error}") from error
    model_init.check_init_named(config)


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    devices: list[jax.Device] | None = None,
) -> dict[str, Any]:
    """Train as `config` says in `workdir` (resuming what is there); returns the summary."""
    mesh = make_mesh(devices)
    try:  # every config problem surfaces here, before anything is read or written
        _check_config(config, mesh)
        setup = _Setup(config)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ConfigError(f"Bad config: {error}") from error
    # The init checkpoint and the data next, so that a run that cannot start leaves no
    # empty WORKDIR/checkpoints/ behind.
    model_init.check_init_checkpoint(config)
    sources = _sources(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    try:
        checkpoints = checkpoints_lib.TrainCheckpoints(
            workdir,
            every_steps=config.checkpoint.every_steps,
            keep=config.checkpoint.keep,
            async_save=config.checkpoint.get("async_save", True),
        )
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ConfigError(f"Bad config: {error}") from error
    try:
        return _train(config, setup, workdir, mesh, checkpoints, sources)
    finally:  # also on errors: Orbax's background threads must end before the interpreter
        checkpoints.close()


class _Setup:
    """What the config describes, built (and so validated) before any work starts."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.model, self.model_kwargs = model_init.build_model(config)
        self.objective = objectives.Objective.from_config(config)
        self.optimizer = state_lib.make_optimizer(config.train)
        self.schedule = state_lib.make_schedule(config.train)
        self.eval_attack = _eval_attack(config)
        self.judge_mode = judge_mode(self.model)


class _Steps(NamedTuple):
    """The jitted steps of a run and its random keys, placed on the mesh."""

    train: Callable
    eval: Callable
    train_key: jax.Array
    eval_key: jax.Array


def _train(
    config: ml_collections.ConfigDict,
    setup: _Setup,
    workdir: str,
    mesh: Mesh,
    checkpoints: checkpoints_lib.TrainCheckpoints,
    sources: tuple[data.Source, data.Source],
) -> dict[str, Any]:
    # ---- setup: the state restored from the newest checkpoint or initialised ---------------
    run_info = {"identity": identity(config), "config": json.loads(config.to_json())}
    train_source, eval_source = sources
    start, state = _initial_state(config, setup, mesh, checkpoints, run_info, train_source)

    # ---- compile: the train and eval steps, jitted over the mesh ----------------------------
    compiled = _compile_steps(config, setup, mesh)

    # ---- the loop: train, log, checkpoint and evaluate up to train.num_steps ----------------
    writer = metrics_lib.MetricWriter(workdir, start_step=start)
    batches = data.train_iterator(
        train_source,
        batch_size=config.train.batch_size,
        mesh=mesh,
        seed=config.seed,
        augment=config.dataset.augment,
        start_step=start,
    )
    _print(
        f"{config.model.name} ({config.model.head} head) on {config.dataset.name}: "
        f"{setup.objective.name}, {int(config.train.num_steps)} steps of "
        f"{config.train.batch_size}, {mesh.devices.size} devices, {jax.process_count()} process(es)"
    )
    evaluate_and_log = functools.partial(
        _evaluate_and_log, compiled, eval_source, config, mesh, writer
    )
    with contextlib.closing(writer):  # flushed and closed on errors too
        state, step, last_eval, meter = _loop(
            config, setup, state, start, compiled, batches, writer, evaluate_and_log,
            lambda step, state, last: checkpoints.save(step, state, run_info, force=last),
        )  # fmt: skip

    # ---- finish: the last checkpoint complete, then the final model and summary.json ----
    checkpoints.close()
    model_dir = _save_final_model(
        workdir, state_lib.eval_variables(state), setup.model_kwargs, config.model.name, step
    )
    summary = {
        "dataset": config.dataset.name,
        "model": config.model.name,
        "head": config.model.head,
        "objective": setup.objective.name,
        "devices": int(mesh.devices.size),
        "processes": jax.process_count(),
        "steps": int(config.train.num_steps),
        "resumed_from": start,
        "train_seconds": round(meter.total_seconds, 1),  # this invocation's training steps
        **last_eval,
        "model_dir": model_dir,
    }
    if jax.process_index() == 0:  # atomic, checksummed: the demo and study's "done" marker
        integrity.write_json(os.path.join(workdir, SUMMARY), summary, indent=2)
    return summary


def _initial_state(
    config: ml_collections.ConfigDict,
    setup: _Setup,
    mesh: Mesh,
    checkpoints: checkpoints_lib.TrainCheckpoints,
    run_info: dict[str, Any],
    train_source: data.Source,
) -> tuple[int, Any]:
    """(step, state): the newest checkpoint's (its config changes printed), else step 0 and a
    state from `model_init.initial_variables`, replicated over the mesh."""
    use_ema = config.train.ema_decay > 0
    rep = replicated(mesh)
    start = stored = None
    if checkpoints.latest_step() is not None:
        abstract = jax.eval_shape(
            lambda v: state_lib.create_state(v, setup.optimizer, ema=use_ema),
            abstract_variables(setup.model),
        )
        abstract = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), abstract
        )
        start, state, stored = checkpoints.restore_latest(abstract, run_info, log=_print)
    if start is None:
        variables = model_init.initial_variables(
            setup.model, config, train_source=train_source, mesh=mesh
        )
        state = jax.jit(
            functools.partial(state_lib.create_state, optimizer=setup.optimizer, ema=use_ema),
            out_shardings=rep,
        )(global_replicated(variables, rep))
        return 0, state
    changed = identity_lib.differences(stored["config"], run_info["config"])
    _print(f"Resuming from {checkpoints.directory} at step {start}.")
    if changed:
        _print("  config changes since that checkpoint:\n    " + "\n    ".join(changed))
    return start, state


def _compile_steps(config: ml_collections.ConfigDict, setup: _Setup, mesh: Mesh) -> _Steps:
    """`steps.train_step` (the state donated) and `steps.eval_step`, jitted with the batch
    sharded over the mesh's data axis and everything else replicated."""
    rep, batch_sharding = replicated(mesh), data_sharding(mesh)
    train_step = jax.jit(
        functools.partial(
            steps.train_step,
            setup.model,
            setup.optimizer,
            setup.objective,
            float(config.train.ema_decay),
        ),
        in_shardings=(rep, batch_sharding, rep),
        out_shardings=(rep, rep),
        donate_argnums=0,
    )
    eval_step = jax.jit(
        functools.partial(steps.eval_step, setup.model, setup.eval_attack, setup.judge_mode),
        in_shardings=(rep, batch_sharding, rep, rep),
        out_shardings=rep,
    )
    return _Steps(
        train_step,
        eval_step,
        _global_key(config.seed, _TRAIN_STREAM, rep),
        _global_key(config.seed, _EVAL_STREAM, rep),
    )


def _loop(
    config: ml_collections.ConfigDict,
    setup: _Setup,
    state: Any,
    start: int,
    compiled: _Steps,
    batches: Iterator[Any],
    writer: metrics_lib.MetricWriter,
    evaluate_and_log: Callable[[Any, int], dict[str, float]],
    save: Callable[[int, Any, bool], None],
) -> tuple[Any, int, dict[str, float], _Throughput]:
    """Steps start+1 .. train.num_steps: every `log_every_steps` the scalars (console, bar,
    writer), every step `save` (the checkpoints keep what they are told to), every
    `eval.every_steps` and at the end `evaluate_and_log`. Returns (state, last step, last
    evaluation, the throughput meter)."""
    num_steps = int(config.train.num_steps)
    # A bar (steps/s, ETA) on a terminal; elsewhere the step lines carry the rate and ETA.
    bar_mode = "bars" if jax.process_index() == 0 and progress.resolve_mode() == "bars" else "off"
    bar = progress.Bar("train", num_steps, unit="step", initial=start, mode=bar_mode)
    log_every, eval_every = config.train.log_every_steps, config.eval.every_steps
    meter = _Throughput(config.train.batch_size)
    last_eval: dict[str, float] = {}
    step = start
    with bar:
        for step in range(start + 1, num_steps + 1):
            state, step_metrics = compiled.train(state, next(batches), compiled.train_key)
            if step == start + 1:  # the first step compiles: time from its end
                jax.block_until_ready(step_metrics)
                meter.start()
            else:
                meter.tick()
            is_last = step == num_steps
            if step % log_every == 0 or is_last:
                _log_step(step, num_steps, step_metrics, meter, setup.schedule, writer, bar)
            save(step, state, is_last)
            if (eval_every and step % eval_every == 0) or is_last:
                jax.block_until_ready(state)
                meter.stop()
                last_eval = evaluate_and_log(state, step)
                meter.start()
        if start == num_steps:  # nothing left to train: evaluate what the checkpoint holds
            last_eval = evaluate_and_log(state, step)
    return state, step, last_eval, meter


def _evaluate_and_log(
    compiled: _Steps,
    source: data.Source,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    writer: metrics_lib.MetricWriter,
    state: Any,
    step: int,
) -> dict[str, float]:
    """`evaluate` of the state's evaluation variables (the EMA when kept), written and printed."""
    variables = state_lib.eval_variables(state)
    result = evaluate(compiled.eval, variables, source, config, mesh, compiled.eval_key)
    writer.write(step, result)
    _print(
        f"  eval at step {step}: clean {result['eval_clean_accuracy']:.4f}  "
        f"PGD {result['eval_pgd_accuracy']:.4f}  ({result['eval_examples']} examples)"
    )
    return result


def _log_step(step, num_steps, step_metrics, meter, schedule, writer, bar) -> None:
    """The step's scalars, images/s and learning rate: to the writer, the bar and the console."""
    scalars = host_values(step_metrics)  # waits for the step
    meter.stop()
    rate = meter.rate()
    if rate is not None:
        scalars["images_per_second"] = rate
    scalars["learning_rate"] = float(schedule(step - 1))
    writer.write(step, scalars)
    bar.set(step, postfix=f"loss {float(scalars.get('loss', float('nan'))):.4f}")
    _print(
        metrics_lib.format_progress(step, num_steps, scalars, _CONSOLE_KEYS)
        + (f"  {rate:.0f} images/s" if rate is not None else "")
        + _rate_and_eta(bar)
    )
    meter.start()
