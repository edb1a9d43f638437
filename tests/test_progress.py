"""Progress bars and lines (`hpm_jax.runtime.progress`): rate and ETA, tqdm bars, the plain-line
fallback without a terminal or without tqdm, and the training's step lines with steps/s."""

from __future__ import annotations

import os

import pytest

from hpm_jax import config_lib
from hpm_jax.data import offline
from hpm_jax.runtime import progress
from hpm_jax.training import train

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "fashion_mnist.py")


def test_lines_mode_reports_rate_and_eta(monkeypatch, capsys):
    monkeypatch.setenv("HPM_PROGRESS_INTERVAL_S", "0")
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    bar = progress.Bar("apgd-ce", 4, unit="batch", mode="lines")  # opened at t=100
    now[0] = 102.0
    bar.set(1)  # 1 batch in 2 s -> 2 s/batch, 3 left -> ETA 6 s
    err = capsys.readouterr().err
    assert "[progress] apgd-ce: 1/4 batch, 2.0 s/batch, ETA 0:00:06" in err
    bar.set(4)  # finished: no line (the attack's own closing line follows)
    assert capsys.readouterr().err == ""


def test_resumed_bar_counts_only_its_own_work(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    bar = progress.Bar("train", 100, unit="step", initial=50, mode="off")
    now[0] = 10.0
    bar.set(60)  # 10 steps in 10 s, not 60
    assert bar.rate() == pytest.approx(1.0)
    assert bar.eta() == pytest.approx(40.0)


def test_bars_write_lines_above_them(capsys):
    bar = progress.Bar("square", 3, unit="batch", mode="bars")
    progress.echo("robust accuracy after SQUARE: 50.00%")
    bar.set(2)
    bar.close()
    out, err = capsys.readouterr()
    assert out.strip() == "robust accuracy after SQUARE: 50.00%"  # not mixed into the bar
    assert "square" in err and "2/3" in err
    assert not progress._live


def test_without_tqdm_bars_become_lines(monkeypatch):
    monkeypatch.setattr(progress, "_tqdm", lambda: None)
    assert progress.resolve_mode("bars") == "lines"
    assert progress.resolve_mode("auto") == "lines"
    with pytest.raises(ValueError, match="HPM_PROGRESS"):
        progress.resolve_mode("fancy")


@pytest.mark.skipif(
    not offline.fashion_mnist_files_present(), reason="needs apt-get install dataset-fashion-mnist"
)
def test_training_step_lines_carry_steps_per_second_and_eta(tmp_path, capsys):
    config = config_lib.load_config(f"{CONFIG}:local", [
        "train.num_steps=3", "train.batch_size=8", "train.warmup_steps=0",
        "train.log_every_steps=1", "eval.num_examples=8", "eval.batch_size=8",
        "eval.attack.num_steps=1", "attack.num_steps=1", "checkpoint.every_steps=3",
        "checkpoint.async_save=False", "model.kwargs.channels=(4, 8, 8)",
        "model.kwargs.num_features=16",
    ])  # fmt: skip
    train.run(config, str(tmp_path))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert "steps/s  ETA 0:" in lines[1]  # 1 step left after step 2
    assert "steps/s" in lines[2]
