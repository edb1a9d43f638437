"""An evaluation split over processes by whole batches gives one process's report.

* The batches of a section attacked apart (each with `first_batch`, shared out over two
  simulated processes) and merged equal one AutoAttack run over all the data: flags, images,
  accuracies, checks. A toy chain whose steps draw from the key and depend on the layout.
* `hpm-evaluate` as two processes joined by jax.distributed on localhost (4 CPU devices
  each, as this suite's process has) writes one report whose figures and per-point flags
  and images equal an in-process run's: AutoAttack on the FC and l2-EMA heads and MSA on HPM.
* Two processes killed inside MSA, resumed as one process; one process killed, resumed as
  two: the same report.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from evaluation_support import ARCH, EVAL_CONFIG, comparable, train_tiny
from platform_support import cpu_only
from toys import CHAIN_EPS, chain_data, mean_model, shift_chain
from train_support import child_env, free_port

from hpm_jax.attacks import AutoAttack
from hpm_jax.data import offline
from hpm_jax.evaluation import batches, evaluate
from hpm_jax.evaluation.processes import Processes
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
    "evaluation.num_examples=24",
    "evaluation.batch_size=8",  # 3 batches: process 0 attacks 0 and 2, process 1 batch 1
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


def _start(model_dir, workdir, processes: int, cache: str) -> list[subprocess.Popen]:
    command = [sys.executable, "-m", "hpm_jax.cli.evaluate", f"--config={EVAL_CONFIG}",
               f"--checkpoint={model_dir}", f"--workdir={workdir}",
               *[f"--config.{o}" for o in OVERRIDES]]  # fmt: skip
    port = free_port()
    joined = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}"]
    return [
        subprocess.Popen(
            command + ([*joined, f"--process_id={i}"] if processes > 1 else []),
            env=child_env(
                JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(processes)
    ]


def _finish(children) -> None:
    logs = [c.communicate(timeout=600)[0] for c in children]
    assert all(c.returncode == 0 for c in children), "\n".join(log[-3000:] for log in logs)


def _kill_inside_msa(children, workdir) -> None:
    """SIGKILL every child once MSA has started (its first batch's state file is there)."""
    msa = workdir / "state" / "msa_hpm"
    try:
        while not (msa.is_dir() and any(msa.iterdir())):
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
        return {k: v for k, v in comparable(r).items() if k not in ("devices", "processes",
                                                                     "provenance")}  # fmt: skip

    assert figures(report) == figures(expected)
    for name in SECTIONS:
        got, want = (np.load(d / "adversarial" / f"{name}.npz") for d in (workdir, ref_dir))
        np.testing.assert_array_equal(got["robust"], want["robust"], err_msg=name)
        np.testing.assert_array_equal(got["x_adv"], want["x_adv"], err_msg=name)


@needs_data
@pytest.mark.slow
@cpu_only("2 processes on localhost, each with 4 fake CPU devices (XLA_FLAGS)")
def test_two_processes_write_the_report_of_one(model_dir, reference, compile_cache, tmp_path):
    _finish(_start(model_dir, tmp_path, processes=2, cache=compile_cache))
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
    _finish(_start(model_dir, one_then_two, 2, compile_cache))
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
