"""Two JAX processes (2 CPU devices each) see the same global batches as one with 4 devices.

This is the multi-host path for real: each process reads only its slice of every global
batch and `make_array_from_process_local_data` assembles the global arrays.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from platform_support import cpu_only, cpu_xla_flags
from train_support import free_port

from hpm_jax import data
from hpm_jax.runtime.sharding import make_mesh

pytestmark = pytest.mark.slow  # two processes on localhost

REPO = Path(__file__).resolve().parents[1]
NUM_EXAMPLES, BATCH, SEED, TRAIN_STEPS = 37, 8, 5, 3


def _batches(data_dir):
    """Global batches as NumPy, gathered to every process: 3 training, then all evaluation."""
    import jax
    from jax.experimental import multihost_utils

    def gather(batch):
        return {
            key: np.asarray(multihost_utils.process_allgather(value, tiled=True))
            if jax.process_count() > 1
            else np.asarray(value)
            for key, value in batch.items()
        }

    mesh = make_mesh()
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        source = data.get_source("cifar10", "train", data_dir=data_dir)
        train = data.train_iterator(source, batch_size=BATCH, mesh=mesh, seed=SEED)
        batches = [gather(next(train)) for _ in range(TRAIN_STEPS)]
        batches += [gather(b) for b in data.eval_iterator(source, batch_size=BATCH, mesh=mesh)]
    return batches


def _worker(process_id: int, port: int, data_dir: str, out: str) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id
    )
    assert jax.process_count() == 2 and jax.device_count() == 4
    batches = _batches(data_dir)
    if process_id == 0:
        np.savez(out, **{f"{i}_{k}": v for i, b in enumerate(batches) for k, v in b.items()})


@pytest.mark.slow
@cpu_only("2 processes on localhost, each with 2 fake CPU devices (XLA_FLAGS)")
def test_two_processes_build_the_same_global_batches(tmp_path):
    port, out = free_port(), tmp_path / "batches.npz"
    env = dict(
        os.environ,
        XLA_FLAGS=cpu_xla_flags(2),
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, str(pid), str(port), str(tmp_path), str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for pid in range(2)
    ]
    try:
        logs = [w.communicate(timeout=120)[0] for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    assert all(w.returncode == 0 for w in workers), "\n".join(log[-3000:] for log in logs)

    expected = _batches(tmp_path)  # this process: 4 devices, one process
    got = np.load(out)
    assert len(expected) == TRAIN_STEPS + 5
    for i, batch in enumerate(expected):
        for key, value in batch.items():
            np.testing.assert_array_equal(got[f"{i}_{key}"], value, err_msg=f"batch {i} {key}")


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
