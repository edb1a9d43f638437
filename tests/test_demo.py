"""The README's main command, shortened: real Fashion-MNIST, sharded training, evaluation,
Orbax round trip, summary."""

import json
import os

import pytest

from hpm_jax import config_lib, demo
from hpm_jax.data import offline

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "fashion_mnist.py")


@pytest.mark.skipif(
    not offline.fashion_mnist_files_present(), reason="needs apt-get install dataset-fashion-mnist"
)
def test_demo_trains_evaluates_and_round_trips(tmp_path):
    config = config_lib.load_config(
        f"{CONFIG}:local", ["train.num_steps=80", "train.log_every_steps=40", "train.batch_size=32"]
    )
    summary = demo.run(config, os.fspath(tmp_path))
    # 80 steps beat chance (10%) by far on the 10000 test images. Fewer would not do: eval
    # mode uses running batch-norm statistics, which start at (0, 1) and take ~50 steps at
    # momentum 0.9 to forget that start (bn1's variance here is ~0.02).
    assert summary["clean_accuracy"] > 0.4
    assert summary["devices"] == 4
    with open(tmp_path / "summary.json") as f:
        assert json.load(f) == summary
    assert os.path.isfile(os.path.join(summary["checkpoint"], "model.json"))
