"""Shared pieces of the training tests (no tests here): a tiny config on mock CIFAR-10,
running it, reading results.

Also the script of the subprocess tests (the mock data lives in-process, so a subprocess
must set it up itself):
    python tests/train_support.py run WORKDIR DATA_DIR OVERRIDES_JSON [SLOW_AFTER_STEP]
    python tests/train_support.py worker PROCESS_ID PORT WORKDIR DATA_DIR OVERRIDES_JSON
"""

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

REPO = Path(__file__).resolve().parents[1]
CONFIG = os.fspath(REPO / "configs" / "fashion_mnist.py")
NUM_EXAMPLES = 48  # per mock split


def tiny_overrides(data_dir, **extra) -> list[str]:
    """Overrides that turn the Fashion-MNIST config into a seconds-long run on mock CIFAR-10."""
    values = {
        "dataset.name": "cifar10",
        "dataset.data_dir": os.fspath(data_dir),
        "dataset.augment": "pad_crop_flip",
        "model.kwargs": {"in_channels": 3, "image_size": 32, "channels": [4, 8], "num_features": 8},
        "attack.num_steps": 1,
        "attack.step_size": 0.05,
        "train.batch_size": 8,
        "train.num_steps": 3,
        "train.warmup_steps": 1,
        "train.log_every_steps": 1,
        "eval.batch_size": 8,
        "eval.num_examples": 16,
        "eval.attack.num_steps": 1,
        "checkpoint.every_steps": 2,
        "init.prototype_examples": 16,
    }
    values.update(extra)
    return [f"{key}={value!r}" for key, value in values.items()]


def load(overrides):
    from hpm_jax import config_lib

    config = config_lib.load_config(CONFIG, [])
    for item in overrides:  # dict values (model.kwargs) replace the whole sub-config
        key, _, text = item.partition("=")
        value = eval(text, {})  # test-made literals only
        if isinstance(value, dict):
            parent, _, leaf = key.rpartition(".")
            node = config
            for part in parent.split("."):
                node = node[part]
            node[leaf] = value
        else:
            config_lib.apply_overrides(config, [f"{key}={text}"])
    return config


def run(workdir, data_dir, overrides, devices=None):
    """train.run under the mock data; returns the summary."""
    from hpm_jax.training import train

    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        return train.run(load(overrides), os.fspath(workdir), devices=devices)


def final_params(workdir) -> dict[str, np.ndarray]:
    """The saved model's variables (WORKDIR/model), flattened to {"params/a/b": array}.

    `load_model` restores onto one local device whatever topology wrote them (a two-process
    run's arrays name devices this process does not have).
    """
    import jax

    from hpm_jax.models.export import load_model

    _, variables = load_model(os.path.join(workdir, "model"))
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables)
    }


def assert_close(a, b, rtol=1e-4, atol=1e-5):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=atol, err_msg=key)


class _CountCompiles(logging.Handler):
    def __init__(self):
        super().__init__()
        self.names = []

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Compiling "):
            self.names.append(message.split(" with ")[0])


def compiles(run) -> list[str]:
    """The programs XLA compiled while `run()` ran (jax_log_compiles), as "Compiling NAME"."""
    import jax

    handler = _CountCompiles()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles():
            run()
    finally:
        logger.removeHandler(handler)
    return handler.names


def child_env(**extra) -> dict[str, str]:
    """The environment of a subprocess that imports this repository's hpm_jax."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, **extra)


def free_port() -> int:
    """A TCP port free on localhost now (for a jax.distributed coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_processes(
    module: str, args: list[str], count: int, *, cache: str, devices: int | None = None
) -> list[subprocess.Popen]:
    """`python -m MODULE ARGS` as `count` processes joined by jax.distributed on localhost (a
    lone process: as it is), each with `devices` fake CPU devices (default: this process's
    XLA_FLAGS) and the JAX compilation cache in `cache`, which process 0 (or a lone process)
    of a later program loads from (the entries name the devices); stdout and stderr merged."""
    from platform_support import cpu_xla_flags

    joined = [f"--coordinator_address=127.0.0.1:{free_port()}", f"--num_processes={count}"]
    devices_flags = {} if devices is None else {"XLA_FLAGS": cpu_xla_flags(devices)}
    env = child_env(JAX_COMPILATION_CACHE_DIR=cache,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **devices_flags)  # fmt: skip
    command = [sys.executable, "-m", module, *args]
    return [
        subprocess.Popen(command + ([*joined, f"--process_id={i}"] if count > 1 else []),
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(count)
    ]  # fmt: skip


def finish_processes(children: list[subprocess.Popen], timeout: float = 900) -> list[str]:
    """The children's outputs once every one exits 0 (an assertion with their output's tails
    otherwise); any still running after `timeout` seconds is killed, not left behind."""
    try:
        logs = [c.communicate(timeout=timeout)[0] for c in children]
    finally:
        for c in children:
            c.kill()
    assert all(c.returncode == 0 for c in children), "\n".join(log[-4000:] for log in logs)
    return logs


def kill_at_step(workdir, data_dir, overrides, *, step: int, total: int) -> None:
    """Run training in a subprocess and SIGKILL it while it trains step `step` of `total`:
    the child sleeps 0.5 s before each batch from step `step` on, so the signal lands inside
    the run whatever the machine's speed. Raises unless the child died of the signal."""
    import signal
    import subprocess

    script = os.fspath(Path(__file__).resolve())
    command = [sys.executable, "-u", script, "run", os.fspath(workdir), os.fspath(data_dir)]
    command += [json.dumps(overrides), str(step - 1)]
    child = subprocess.Popen(
        command, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    log = []
    try:
        for line in child.stdout:
            log.append(line)
            if line.startswith(f"step {step}/{total}"):
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.kill()
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, "".join(log[-50:])


def _slow_after(step: int) -> None:
    """Slow the training stream down after `step` batches, so a test can kill mid-run."""
    from hpm_jax import data

    real = data.train_iterator

    def slowed(*args, **kwargs):
        iterator = real(*args, **kwargs)
        start = kwargs.get("start_step", 0)

        def generate():
            for i, batch in enumerate(iterator, start=start):
                if i >= step:
                    time.sleep(0.5)
                yield batch

        return generate()

    data.train_iterator = slowed  # hpm_jax.training.train looks it up on the module at call time


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "run":
        workdir, data_dir, overrides = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
        if len(sys.argv) > 5:
            _slow_after(int(sys.argv[5]))
        run(workdir, data_dir, overrides)
    elif mode == "worker":
        import jax

        pid, port = int(sys.argv[2]), int(sys.argv[3])
        workdir, data_dir, overrides = sys.argv[4], sys.argv[5], json.loads(sys.argv[6])
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid
        )
        assert jax.process_count() == 2 and jax.device_count() == 4
        summary = run(workdir, data_dir, overrides)
        print("SUMMARY", json.dumps(summary), flush=True)
    else:
        raise SystemExit(f"unknown mode {mode}")
