"""Training gives the same model on 1 device, 4 devices, and 2 processes x 2 devices.

The run is HPM + TRADES: batch norm, the HPM head's batch prototypes and the prototype EMA
all reduce over the global batch, so any per-device or per-process shortcut would show.
Two processes join with jax.distributed on localhost (CPU gloo collectives), each reading
its half of every global batch, writing one shared Orbax checkpoint directory.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import pytest
from test_train_support import REPO, assert_close, final_params, run, tiny_overrides

SUPPORT = os.path.join(os.path.dirname(__file__), "test_train_support.py")


def overrides(root):
    return tiny_overrides(root, **{"model.head": "hpm", "objective.name": "trades"})


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    root = tmp_path_factory.mktemp("four")
    summary = run(root / "work", root, overrides(root))
    assert summary["devices"] == 4
    return root, final_params(root / "work"), summary


def test_one_device_trains_the_same_model_as_four(four_devices, tmp_path):
    root, expected, summary = four_devices
    one = run(tmp_path / "work", root, overrides(root), devices=jax.devices()[:1])
    assert one["devices"] == 1
    # Float32 sums in another order: equal to rounding, after 3 steps of SGD.
    assert_close(final_params(tmp_path / "work"), expected, rtol=2e-4, atol=2e-5)
    assert one["eval_clean_accuracy"] == summary["eval_clean_accuracy"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_the_same_model_as_one(four_devices, tmp_path):
    root, expected, summary = four_devices
    port, workdir = _free_port(), tmp_path / "work"
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    args = [str(port), str(workdir), str(root), json.dumps(overrides(root))]
    workers = [
        subprocess.Popen(
            [sys.executable, SUPPORT, "worker", str(pid), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for pid in range(2)
    ]
    try:
        logs = [w.communicate(timeout=300)[0] for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    assert all(w.returncode == 0 for w in workers), "\n".join(log[-3000:] for log in logs)
    summaries = [
        json.loads(line.removeprefix("SUMMARY "))
        for log in logs
        for line in log.splitlines()
        if line.startswith("SUMMARY ")
    ]
    assert [s["processes"] for s in summaries] == [2, 2]
    assert all(s["devices"] == 4 for s in summaries)
    # Evaluation counts are global: both processes report the one-process numbers.
    for s in summaries:
        assert s["eval_clean_accuracy"] == summary["eval_clean_accuracy"]
        assert s["eval_pgd_accuracy"] == summary["eval_pgd_accuracy"]
    assert_close(final_params(workdir), expected, rtol=2e-4, atol=2e-5)
    # Only process 0 logs; its log has every step once.
    with open(workdir / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f if '"loss"' in line]
    assert steps == [1, 2, 3]
