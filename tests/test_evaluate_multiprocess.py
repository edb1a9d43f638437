"""An evaluation split over processes by whole batches gives one process's report.

* The batches of a section attacked apart (each with `first_batch`, shared out over two
  simulated processes) and merged equal one AutoAttack run over all the data: flags, images,
  accuracies, checks. A toy chain whose steps draw from the key and depend on the layout.
* `hpm-evaluate` as two processes joined by jax.distributed on localhost (4 CPU devices
  each, as this suite's process has) writes one report whose figures and per-point flags
  and images equal an in-process run's: AutoAttack on the FC and l2-EMA heads and MSA on HPM.
* Two processes killed inside MSA, resumed as one process; one process killed, resumed as
  two: the same report.
* `evaluation.batch_sharding=global`: two processes of 2 fake CPU devices each attack every
  batch together on one mesh of 4 devices (the reference's count), killed inside MSA, then
  resumed in process mode here and in global mode again: the reference's report, flags and
  images, to the bit. The knob's errors, its absence from the workdir identity, and a state
  store that only reads are checked without processes.
"""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from evaluation_support import ARCH, EVAL_CONFIG, comparable, train_tiny
from platform_support import cpu_only
from toys import CHAIN_EPS, chain_data, mean_model, shift_chain
from train_support import finish_processes, start_processes

from hpm_jax.attacks import AutoAttack
from hpm_jax.attacks.resume import ChainState, StateStore
from hpm_jax.data import offline
from hpm_jax.evaluation import batches, evaluate
from hpm_jax.evaluation.processes import ALL, Processes
from hpm_jax.models.export import save_model
from hpm_jax.runtime import integrity

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- batches merged, in-process


def _toy_chain(log=None, run_checks=False):
    return AutoAttack(mean_model, eps=CHAIN_EPS, version=shift_chain(noise=True), seed=7,
                      bucket_sizes=(8, 4), log=log, run_checks=run_checks)  # fmt: skip


def test_batches_attacked_apart_merge_to_one_run(tmp_path):
    x, y, _ = chain_data(45, seed=1)  # 6 batches of 8, the last of 5
    whole = _toy_chain(run_checks=True).run(x, y, batch_size=8)

    def attack(xb, yb, *, first_batch, state_path, run_checks):
        report = _toy_chain(run_checks=run_checks).run(
            xb, yb, batch_size=8, state_path=state_path, first_batch=first_batch
        )
        return report.to_dict(), report.x_adv

    results = batches.BatchResults(str(tmp_path / "toy"))
    out = {}

    def process(index):  # each waits for the other's batches, as on two hosts
        out[index] = batches.run_by_batches(attack, x, y, 8, results, Processes(index, 2),
                                            batches.merge_autoattack)  # fmt: skip

    threads = [threading.Thread(target=process, args=(i,), daemon=True) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:  # an error in one would leave the other waiting: fail, do not hang
        t.join(timeout=300)
    assert sorted(out) == [0, 1], "a simulated process failed (its traceback is above)"
    merged, x_adv, owners = out[0]
    assert owners == [0, 1, 0, 1, 0, 1] and out[1][2] == owners
    np.testing.assert_array_equal(x_adv, whole.x_adv)
    assert comparable(merged) == comparable(whole.to_dict()) == comparable(out[1][0])
    assert whole.robust.any() and not whole.robust.all()  # the chain did break points
    # Keys by batch index: without first_batch every batch would draw batch 0's noise.
    alone = _toy_chain().run(x[8:16], y[8:16], batch_size=8)
    assert not np.array_equal(alone.x_adv, whole.x_adv[8:16])
    # One process finds every batch done and merges the same report.
    again = batches.run_by_batches(attack, x, y, 8, results, Processes(0, 1),
                                   batches.merge_autoattack)  # fmt: skip
    assert comparable(again[0]) == comparable(merged)


# ---------------------------------------------------------------- hpm-evaluate on 2 processes

needs_data = pytest.mark.skipif(
    not offline.fashion_mnist_files_present(), reason="needs apt-get install dataset-fashion-mnist"
)
OVERRIDES = [
    "evaluation.num_examples=21",
    # 3 batches, the last of 5 (MSA runs it replicated, exactly 5 rows): process 0 attacks 0
    # and 2, process 1 batch 1
    "evaluation.batch_size=8",
    "evaluation.eps=0.02",  # the tiny model keeps some points robust
    "evaluation.version='apgd-ce'",
    "evaluation.attack_options.apgd-ce.n_iter=3",
    "evaluation.surrogates=('fc', 'ste')",
    "evaluation.naive_autoattack=False",
]
SECTIONS = ("autoattack_fc", "autoattack_ema_l2", "msa_hpm")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    _, variables = train_tiny(n_steps=20)
    root = tmp_path_factory.mktemp("model")
    return save_model(str(root / "hpm"), variables, arch="small_cnn", num_classes=10,
                      head="hpm", **ARCH)  # fmt: skip


@pytest.fixture(scope="module")
def reference(model_dir, tmp_path_factory):
    """One process, in this one."""
    workdir = tmp_path_factory.mktemp("one_process")
    config = evaluate.load_evaluation_config(EVAL_CONFIG, OVERRIDES)
    return evaluate.run(config, model_dir, str(workdir), log=None), workdir


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """One JAX compilation cache for every child: process 0 (or a lone process) loads what an
    earlier child compiled (measured: the kill test 155 s -> 79 s); process 1 compiles anyway
    (the entries name the devices)."""
    return str(tmp_path_factory.mktemp("jax_cache"))


def _start(model_dir, workdir, processes: int, cache: str, *, devices: int | None = None,
           overrides=()) -> list[subprocess.Popen]:  # fmt: skip
    """hpm-evaluate as `processes` processes, each with `devices` fake CPU devices (default:
    this process's XLA_FLAGS), `overrides` after OVERRIDES."""
    args = [f"--config={EVAL_CONFIG}", f"--checkpoint={model_dir}", f"--workdir={workdir}",
            *[f"--config.{o}" for o in [*OVERRIDES, *overrides]]]  # fmt: skip
    return start_processes("hpm_jax.cli.evaluate", args, processes, cache=cache, devices=devices)


def _kill_inside_msa(children, workdir, pattern: str = "*") -> None:
    """SIGKILL every child once MSA has started (its first batch's state file is there), or
    once a file matching `pattern` is in its state directory."""
    msa = workdir / "state" / "msa_hpm"
    try:
        while not (msa.is_dir() and any(msa.glob(pattern))):
            assert all(c.poll() is None for c in children), [c.communicate()[0] for c in children]
            time.sleep(0.05)
    finally:
        for c in children:
            c.send_signal(signal.SIGKILL)
            c.wait(timeout=60)
    assert all(c.returncode == -signal.SIGKILL for c in children)
    assert not (workdir / "report.json").exists()


def _same_results(report, workdir, reference) -> None:
    expected, ref_dir = reference

    def figures(r):
        return {k: v for k, v in comparable(r).items()
                if k not in ("devices", "processes", "batch_sharding", "provenance")}  # fmt: skip

    assert figures(report) == figures(expected)
    for name in SECTIONS:
        got, want = (np.load(d / "adversarial" / f"{name}.npz") for d in (workdir, ref_dir))
        np.testing.assert_array_equal(got["robust"], want["robust"], err_msg=name)
        np.testing.assert_array_equal(got["x_adv"], want["x_adv"], err_msg=name)


@needs_data
@pytest.mark.slow
@cpu_only("2 processes on localhost, each with 4 fake CPU devices (XLA_FLAGS)")
def test_two_processes_write_the_report_of_one(model_dir, reference, compile_cache, tmp_path):
    finish_processes(_start(model_dir, tmp_path, processes=2, cache=compile_cache))
    report = integrity.read_json(tmp_path / "report.json")
    _same_results(report, tmp_path, reference)
    assert report["processes"] == 2 and report["devices"] == 8
    hpm = reference[0]["heads"]["hpm"]
    assert 0 < hpm["msa"]["robust_accuracy"] < hpm["clean_accuracy"]  # broken and robust points
    for name in SECTIONS:  # the batches were split: process 1 attacked batch 1
        results = batches.BatchResults(str(tmp_path / "state" / name))
        assert [results.load(b)[2] for b in range(3)] == [0, 1, 0], name
    # One writer: process 1 wrote no log.txt lines (its batch's lines are not there).
    log = (tmp_path / "log.txt").read_text()
    assert "[msa_hpm batch 1/3]" in log and "[msa_hpm batch 2/3]" not in log


@needs_data
@pytest.mark.slow
@cpu_only("2 processes on localhost, each with 4 fake CPU devices (XLA_FLAGS)")
def test_killed_evaluations_resume_with_another_process_count(
    model_dir, reference, compile_cache, tmp_path
):
    config = evaluate.load_evaluation_config(EVAL_CONFIG, OVERRIDES)
    two_then_one, one_then_two = tmp_path / "two_then_one", tmp_path / "one_then_two"
    _kill_inside_msa(_start(model_dir, two_then_one, 2, compile_cache), two_then_one)
    resumed = evaluate.run(config, model_dir, str(two_then_one), log=None)
    assert resumed["heads"]["hpm"]["msa"]["chain"]["resumed"] is True
    _same_results(resumed, two_then_one, reference)

    _kill_inside_msa(_start(model_dir, one_then_two, 1, compile_cache), one_then_two)
    finish_processes(_start(model_dir, one_then_two, 2, compile_cache))
    _same_results(integrity.read_json(one_then_two / "report.json"), one_then_two, reference)


# ---------------------------------------------------------------- launch/tpu.sh --program=evaluate


def _tpu_sh(tmp_path, *args):
    """launch/tpu.sh with a gcloud stub on PATH that records any call it gets."""
    stub = tmp_path / "bin" / "gcloud"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "gcloud_calls"}\n')
    stub.chmod(0o755)
    where = ["--tpu=hpm", "--zone=us-central2-b", "--accelerator=v4-32", "--bucket=my-bucket"]
    return subprocess.run(
        ["bash", str(REPO / "launch" / "tpu.sh"), *where, *args],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}",
             "HPM_PYTHON": sys.executable, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip


def test_tpu_launch_runs_an_evaluation_on_every_worker(tmp_path):
    """--program=evaluate --dry-run: the config checked here (hpm-evaluate --check_config),
    then the commands printed, none run; on every worker hpm_jax.evaluate --multihost with
    the checkpoint and workdir in the mounted bucket."""
    result = _tpu_sh(tmp_path, "--program=evaluate", "--config=configs/cifar10.py",
                     "--workdir=runs/c10_eval", "--checkpoint=runs/c10/model", "--dry-run",
                     "--", "--config.evaluation.num_examples=1000")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hpm-evaluate: config OK: configs/cifar10.py: cifar10, Linf" in result.stdout
    run = [line for line in result.stdout.splitlines() if "hpm_jax.evaluate" in line]
    assert len(run) == 1 and "--worker=all" in run[0], result.stdout
    for part in ("-m\\ hpm_jax.evaluate\\ --multihost", "--workdir=/mnt/my-bucket/runs/c10_eval",
                 "--checkpoint=/mnt/my-bucket/runs/c10/model",
                 "--config.evaluation.num_examples=1000"):  # fmt: skip
        assert part in run[0], (part, run[0])
    assert not (tmp_path / "gcloud_calls").exists()
    # Without a model, or with a bad evaluation setting: one line, before any gcloud command.
    result = _tpu_sh(tmp_path, "--program=evaluate", "--config=configs/cifar10.py",
                     "--workdir=runs/c10_eval")  # fmt: skip
    assert result.returncode == 2 and "needs --checkpoint=DIR" in result.stderr
    result = _tpu_sh(tmp_path, "--program=evaluate", "--config=configs/cifar10.py",
                     "--workdir=runs/c10_eval", "--checkpoint=runs/c10/model",
                     "--", "--config.evaluation.norm=Linf2")  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith("hpm-evaluate: error: evaluation.norm")
    assert not (tmp_path / "gcloud_calls").exists()


# ---------------------------------------------------------------- batch_sharding=global


def test_tpu_launch_runs_a_study_on_every_worker(tmp_path):
    """--program=study --dry-run: every point's config checked here (hpm-study
    --check_config), then hpm_jax.study --multihost on every worker; a --checkpoint (the
    study fine-tunes init.checkpoint) or a bad point override is one line, before gcloud."""
    study = ["--program=study", "--config=configs/fashion_mnist_study.py", "--workdir=runs/st"]
    init = "--config.init.checkpoint=/mnt/my-bucket/runs/at/model"
    result = _tpu_sh(tmp_path, *study, "--dry-run", "--", init)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hpm-study: config OK: configs/fashion_mnist_study.py:" in result.stdout
    run = [line for line in result.stdout.splitlines() if "hpm_jax.study" in line]
    assert len(run) == 1 and "--worker=all" in run[0], result.stdout
    for part in ("-m\\ hpm_jax.study\\ --multihost", "--workdir=/mnt/my-bucket/runs/st",
                 "--config.init.checkpoint=/mnt/my-bucket/runs/at/model"):  # fmt: skip
        assert part in run[0], (part, run[0])
    result = _tpu_sh(tmp_path, *study, "--checkpoint=runs/at/model", "--", init)
    assert result.returncode == 2 and "not --checkpoint" in result.stderr
    result = _tpu_sh(tmp_path, *study, "--", init, "--config.study.run=('bad',)",
                     "--config.study.points={'bad': ('train.lrr=0.1',)}")  # fmt: skip
    assert result.returncode == 2 and "lrr" in result.stderr.splitlines()[-1], result.stderr
    assert not (tmp_path / "gcloud_calls").exists()


GLOBAL = ["evaluation.batch_sharding='global'"]


@needs_data
@pytest.mark.slow
@cpu_only("2 processes on localhost, each with 2 fake CPU devices (XLA_FLAGS)")
def test_global_batches_span_both_processes_and_resume_in_either_mode(
    model_dir, reference, compile_cache, tmp_path
):
    """Every batch on one mesh of both processes' 4 devices, attacked by both together. The
    mesh has the reference's 4 devices, each holding the same rows (2 per device, or the whole
    replicated last batch) as there; only the cross-device reductions (HPM's batch statistics)
    now also cross processes (gloo). They give the same bits here (measured), so the
    comparison is exact, flags and images; were a reduction's order to differ, only points
    at a near tie (decision margin within `report["precision"]["logit_tolerance"]`) could
    change verdict."""
    workdir, elsewhere = tmp_path / "global", tmp_path / "process"
    # Killed in MSA's last batch (the partial one), so that each batch is attacked globally
    # once and every program compiled once (the second run loads them from the cache).
    _kill_inside_msa(_start(model_dir, workdir, 2, compile_cache, devices=2, overrides=GLOBAL),
                     workdir, "batch_00002.json")  # fmt: skip
    for name in SECTIONS:  # done before the kill, by both processes together
        results = batches.BatchResults(str(workdir / "state" / name))
        done = 2 if name == "msa_hpm" else 3
        assert [results.load(b)[2] for b in range(done)] == [ALL] * done, name
    shutil.copytree(workdir, elsewhere)

    # Resumed in the default mode, by this one process: the knob is not the workdir's identity.
    config = evaluate.load_evaluation_config(EVAL_CONFIG, OVERRIDES)
    resumed = evaluate.run(config, model_dir, str(elsewhere), log=None)
    assert resumed["heads"]["hpm"]["msa"]["chain"]["resumed"] is True
    assert resumed["batch_sharding"] == "process"
    _same_results(resumed, elsewhere, reference)

    # Resumed in global mode: both processes read the state of the batch MSA was in, and
    # attack the partial batch (5 rows replicated on the 4 devices) together.
    finish_processes(_start(model_dir, workdir, 2, compile_cache, devices=2, overrides=GLOBAL))
    report = integrity.read_json(workdir / "report.json")
    _same_results(report, workdir, reference)
    assert (report["batch_sharding"], report["processes"], report["devices"]) == ("global", 2, 4)
    assert report["heads"]["hpm"]["msa"]["chain"]["resumed"] is True
    assert report["heads"]["hpm"]["msa"]["chain"]["num_devices"] == 4  # the global mesh
    assert "batch_sharding" not in report["settings"]


def test_batch_sharding_is_checked_and_is_not_the_workdir_identity():
    def ev(*overrides):
        return evaluate.evaluation_config(
            evaluate.load_evaluation_config(EVAL_CONFIG, [*OVERRIDES, *overrides])
        )

    with pytest.raises(evaluate.EvaluationSetupError,
                       match=r"batch_sharding='pod' is not one of \('process', 'global'\); "
                             r"e\.g\. --config\.evaluation\.batch_sharding=global"):  # fmt: skip
        ev("evaluation.batch_sharding='pod'")
    assert ev().batch_sharding == "process"
    settings = evaluate.result_settings(ev(*GLOBAL))
    assert "batch_sharding" not in settings and settings == evaluate.result_settings(ev())
    # A global batch splits over every device of every process (here: this one's 4).
    alone, everyone = Processes(0, 2), Processes(1, 2, "global")
    with pytest.raises(evaluate.EvaluationSetupError,
                       match=r"batch_size=6 must be a multiple of the 4 devices of all processes "
                             r"together \(batch_sharding=global\); e\.g\. "
                             r"--config\.evaluation\.batch_size=4"):  # fmt: skip
        evaluate._check_batch_size(6, everyone)
    with pytest.raises(evaluate.EvaluationSetupError, match="4 devices of each process"):
        evaluate._check_batch_size(6, alone)
    evaluate._check_batch_size(8, everyone)
    with pytest.raises(ValueError, match="sharding must be one of"):
        Processes(0, 1, "pod")
    # Who does what: all attack every batch, process 0 alone writes its files.
    assert [everyone.owns(b) for b in range(3)] == [True] * 3 and everyone.attacker == ALL
    assert not everyone.writes_batches and Processes(0, 2, "global").writes_batches
    assert [alone.owns(b) for b in range(3)] == [True, False, True] and alone.writes_batches
    assert everyone.mesh().devices.size == len(jax.devices())


def test_a_state_store_that_reads_keeps_the_writers_state_and_writes_nothing(tmp_path):
    """The processes that attack a batch together: the writer's files, the same state in
    memory everywhere; `loaded` once per load (a barrier in an evaluation)."""
    path, calls = tmp_path / "batch_00000.json", []
    writer = StateStore(path, loaded=lambda: calls.append("writer"))
    reader = StateStore(path, write=False, loaded=lambda: calls.append("reader"))
    clean = np.array([True, True, False, True])
    images = np.full((2, 3, 3, 1), 0.5, np.float32)
    assert writer.load({"run": 1}) is None and reader.load({"run": 1}) is None  # all read first
    states = []
    for store in (writer, reader):
        state = ChainState.new({"run": 1}, clean)
        store.save_images(state, attack=0, batch=0, indices=np.array([0, 3]), images=images)
        state.robust[[0, 3]] = False
        store.save(state)
        states.append(state)
        if store is writer:
            files = sorted(p.name for p in tmp_path.rglob("*"))
    assert sorted(p.name for p in tmp_path.rglob("*")) == files  # the reader added nothing
    assert states[0].to_json() == states[1].to_json()  # the same entries, sha256 included
    loaded = reader.load({"run": 1})
    assert loaded.to_json() == states[0].to_json() and loaded.resumed
    x_adv = reader.load_images(loaded, np.zeros((4, 3, 3, 1), np.float32))
    np.testing.assert_array_equal(x_adv[[0, 3]], images)
    assert calls == ["writer", "reader", "reader"]
