"""The demo and the study run as two processes joined by jax.distributed on localhost (two
fake CPU devices each), on one workdir, as on two hosts of a pod.

* `hpm-demo` as 2 processes: every stage runs on both (training on all 4 devices, the
  evaluation's batches shared out), process 0 alone writes the analysis, the summary and the
  report, whose table is the summary's. Run again: both skip every stage together. With the
  analysis's "done" file damaged: process 0 names it and both run the analysis again.
* `hpm-study` as 2 processes from the demo's PGD-AT model: its point is trained and
  evaluated by both, process 0 writes point.json and the table; run again, both skip the
  point (the FC baseline's evaluation is skipped or run by the same rule, not repeated here).

A decision that only one process takes (a stage run by one, skipped by the other) leaves the
other waiting in a collective: these tests would then fail on their timeout, not pass.
"""

import pytest
from evaluation_support import TINY_STUDY
from platform_support import cpu_only
from train_support import finish_processes, start_processes

from hpm_jax.data import offline
from hpm_jax.evaluation import batches, reports
from hpm_jax.runtime import integrity

pytestmark = [
    pytest.mark.slow,  # two end-to-end programs, each as two processes
    pytest.mark.skipif(
        not offline.fashion_mnist_files_present(),
        reason="needs apt-get install dataset-fashion-mnist",
    ),
    cpu_only("2 processes on localhost, each with 2 fake CPU devices (XLA_FLAGS)"),
]

# The study's tiny model and budgets; the demo has no study section. Training batches of 16
# split over the 4 devices of both processes, evaluation batches of 8 over one's 2.
TINY = [o for o in TINY_STUDY if not o.startswith("study.")] + ["evaluation.run_checks=False"]
TIMEOUT = 900  # seconds for one 2-process program: far above its ~1-2 min


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One compilation cache: process 0 of a later program loads what an earlier compiled."""
    return str(tmp_path_factory.mktemp("jax_cache"))


def _run_two(module: str, args: list[str], cache: str) -> list[str]:
    """`python -m MODULE ARGS` as processes 0 and 1; their outputs, once both exit 0."""
    return finish_processes(start_processes(module, args, 2, cache=cache, devices=2), TIMEOUT)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, cache):
    workdir = tmp_path_factory.mktemp("demo")
    args = [f"--workdir={workdir}", *[f"--config.{o}" for o in TINY]]
    return workdir, args, _run_two("hpm_jax.cli.demo", args, cache)


def test_the_demo_as_two_processes_writes_one_summary_and_skips_or_reruns_stages_together(
    demo, cache
):
    workdir, args, logs = demo
    summary = integrity.read_json(workdir / "summary.json")
    report = integrity.read_json(workdir / "eval" / "report.json")
    assert report["processes"] == 2 and report["devices"] == 4
    assert summary["table"]["hpm"]["msa"] == report["heads"]["hpm"]["msa"]["robust_accuracy"]
    trained = integrity.read_json(workdir / "hpm" / "summary.json")
    assert trained["processes"] == 2  # the fine-tuning ran on both processes' devices
    # The evaluation's 2 batches were shared out: process 1 attacked batch 1.
    results = batches.BatchResults(str(workdir / "eval" / "state" / "msa_hpm"))
    assert [results.load(b)[2] for b in range(2)] == [0, 1]
    for log in logs:  # both ran every stage and printed the table
        assert "stage 4/4" in log and "skipped" not in log
        assert reports.table(report) in log

    logs = _run_two("hpm_jax.cli.demo", args, cache)  # every stage done: both skip all
    assert all(log.count("is complete; skipped") == 4 for log in logs), logs[0][-3000:]
    assert integrity.read_json(workdir / "summary.json")["table"] == summary["table"]

    analysis = workdir / "analysis" / "summary.json"
    before = integrity.read_json(analysis)
    analysis.write_text("{")  # damaged: process 0 names it, and both analyse again
    logs = _run_two("hpm_jax.cli.demo", args, cache)
    assert "analysis/summary.json is damaged" in logs[0]
    assert all(log.count("is complete; skipped") == 3 for log in logs), logs[1][-3000:]
    assert integrity.read_json(analysis) == before


def test_the_study_as_two_processes_writes_one_table_and_skips_done_points(demo, cache, tmp_path):
    at_model = demo[0] / "at" / "model"
    args = ["--config=configs/fashion_mnist_study.py", f"--workdir={tmp_path}",
            *[f"--config.{o}" for o in TINY], f"--config.init.checkpoint={at_model}",
            "--config.study.run=('default',)", "--config.study.seeds=(0,)",
            "--config.study.baseline=False"]  # fmt: skip
    logs = _run_two("hpm_jax.cli.study", args, cache)
    table = integrity.read_json(tmp_path / "study.json")
    point = tmp_path / "points" / "default" / "seed_0"
    report = integrity.read_json(point / "eval" / "report.json")
    assert report["processes"] == 2
    assert table["rows"][0]["msa"]["mean"] == report["heads"]["hpm"]["msa"]["robust_accuracy"]
    assert integrity.read_json(point / "point.json")["seed"] == 0
    for log in logs:
        assert "[study] point 1/1 'default', seed 0" in log

    logs = _run_two("hpm_jax.cli.study", args, cache)
    assert all("is complete; skipped" in log for log in logs), logs[1][-3000:]
    assert integrity.read_json(tmp_path / "study.json")["rows"] == table["rows"]
