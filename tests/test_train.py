"""The training program on mock CIFAR-10.

Two runs are shared: PGD-AT with an FC head, and the reference, TRADES with an HPM head and
weight averaging (batch norm, HPM's batch prototypes and the prototype EMA all reduce over
the global batch). Tests check their outputs (metrics, TensorBoard events, checkpoints, the
final model), that 1 device, 4 devices and 2 processes x 2 devices (jax.distributed on
localhost, CPU gloo collectives) train the same model, that a SIGKILLed run resumes to the
uninterrupted result bit for bit, HPM fine-tuning from an FC checkpoint, and clear errors.
"""

import json
import os
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from platform_support import cpu_only, cpu_xla_flags, take_devices
from tensorboardX.proto import event_pb2
from train_support import (
    CONFIG,
    NUM_EXAMPLES,
    REPO,
    assert_close,
    child_env,
    final_params,
    free_port,
    kill_at_step,
    load,
    run,
    tiny_overrides,
)

from hpm_jax import data
from hpm_jax.config_lib import load_config
from hpm_jax.models.export import load_model
from hpm_jax.runtime import integrity
from hpm_jax.runtime.identity import WorkdirMismatchError
from hpm_jax.runtime.sharding import make_mesh
from hpm_jax.training import metrics, model_init, train, train_checkpoints

pytestmark = pytest.mark.slow  # trains end to end

STEPS, BATCH = 3, 8  # the FC run's; the reference run trains REFERENCE_STEPS
REFERENCE_STEPS = 4
SUPPORT = os.path.join(os.path.dirname(__file__), "train_support.py")


def reference_overrides(root):
    return tiny_overrides(
        root,
        **{
            "model.head": "hpm",
            "objective.name": "trades",
            "objective.prototype_features": "adversarial",
            "train.ema_decay": 0.9,
            "train.num_steps": REFERENCE_STEPS,
            # L2 steps are continuous in the gradient, where Linf's sign() would turn float
            # rounding (sums in another order on another topology) into whole-step changes.
            "attack.norm": "L2",
            "attack.eps": 0.5,
            "attack.step_size": 0.2,
            "eval.attack.step_size": 0.2,
        },
    )


def read_events(workdir) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from the TensorBoard event files (TFRecord framing, no TF)."""
    scalars: dict[str, dict[int, float]] = {}
    directory = os.path.join(workdir, metrics.TENSORBOARD)
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            raw = f.read()
        offset = 0
        while offset < len(raw):
            (length,) = struct.unpack("<Q", raw[offset : offset + 8])
            event = event_pb2.Event.FromString(raw[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


@pytest.fixture(scope="module")
def fc_run(tmp_path_factory):
    """One finished PGD-AT run of an FC model, shared by the tests that read or extend it."""
    root = tmp_path_factory.mktemp("fc_run")
    workdir = root / "work"
    summary = run(workdir, root, tiny_overrides(root))
    return workdir, root, summary


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The reference run (HPM + TRADES + weight averaging) on 4 devices, one process."""
    root = tmp_path_factory.mktemp("reference")
    workdir = root / "work"
    summary = run(workdir, root, reference_overrides(root))
    return workdir, root, summary, final_params(workdir)


def _check_run(workdir, summary, objective, head, steps=STEPS):
    assert summary["steps"] == steps and summary["devices"] == 4 and summary["resumed_from"] == 0
    assert summary["eval_examples"] == 16
    assert 0 <= summary["eval_pgd_accuracy"] <= summary["eval_clean_accuracy"] <= 1

    records = metrics.read_jsonl(os.path.join(workdir, metrics.JSONL))
    train_records = [r for r in records if "loss" in r]
    # log_every_steps=1 here; the last step is always logged.
    assert [r["step"] for r in train_records] == list(range(1, steps + 1))
    for r in train_records:
        assert np.isfinite(r["loss"]) and r["learning_rate"] >= 0
    assert "images_per_second" in train_records[-1]
    modes = ["fc"] if head == "fc" else ["hpm", "fc"]
    for r in train_records:
        # The loss is the weighted sum of its per-mode terms (weights 1 in the config).
        np.testing.assert_allclose(r["loss"], sum(r[f"loss_{m}"] for m in modes), rtol=1e-5)
        if objective == "trades":
            for m in modes:
                expected = r[f"natural_loss_{m}"] + 6.0 * r[f"robust_kl_{m}"]
                np.testing.assert_allclose(r[f"loss_{m}"], expected, rtol=1e-5)
                assert r[f"robust_kl_{m}"] >= -1e-6  # a KL, up to float32 rounding
    (eval_record,) = [r for r in records if "eval_pgd_accuracy" in r]
    assert eval_record["step"] == steps
    assert eval_record["eval_clean_accuracy"] == summary["eval_clean_accuracy"]

    events = read_events(workdir)
    assert sorted(events["loss"]) == list(range(1, steps + 1))
    np.testing.assert_allclose(events["loss"][steps], train_records[-1]["loss"], rtol=1e-6)
    assert steps in events["eval_pgd_accuracy"]

    # Checkpoints every 2 steps, the last one forced, the newest 2 kept.
    kept = train_checkpoints.TrainCheckpoints(workdir, every_steps=2, keep=2).all_steps()
    assert kept == sorted({*range(2, steps + 1, 2), steps})[-2:]
    model, variables = load_model(summary["model_dir"])
    assert type(model.head).__name__ == {"fc": "FCHead", "hpm": "HPMHead"}[head]
    return variables


def test_pgd_at_with_fc_head(fc_run):
    workdir, _, summary = fc_run
    _check_run(workdir, summary, "pgd_at", "fc")
    assert integrity.read_json(os.path.join(workdir, "summary.json")) == summary  # checksum checked


def test_trades_with_hpm_head_and_weight_averaging(reference):
    workdir, _, summary, _ = reference
    variables = _check_run(workdir, summary, "trades", "hpm", steps=REFERENCE_STEPS)
    # The prototype EMA saw every example of every global batch exactly once per step,
    # whichever passes (clean, adversarial, attack) the objective made.
    seen = np.asarray(variables["prototypes"]["head"]["seen"])
    assert seen.sum() == REFERENCE_STEPS * BATCH
    ema = np.asarray(variables["prototypes"]["head"]["ema"])
    assert np.all(np.abs(ema[seen > 0]).sum(axis=1) > 0)
    assert np.all(ema[seen == 0] == 0)


def test_one_device_trains_the_same_model_as_four(reference, tmp_path):
    _, root, summary, expected = reference
    one = run(tmp_path / "work", root, reference_overrides(root), devices=take_devices(1))
    assert one["devices"] == 1
    # Float32 sums in another order: equal to rounding, after a few steps of SGD.
    assert_close(final_params(tmp_path / "work"), expected, rtol=2e-4, atol=2e-5)
    assert one["eval_clean_accuracy"] == summary["eval_clean_accuracy"]


@pytest.mark.slow
@cpu_only("2 processes on localhost, each with 2 fake CPU devices (XLA_FLAGS)")
def test_two_processes_train_the_same_model_as_one(reference, tmp_path):
    _, root, summary, expected = reference
    port, workdir = free_port(), tmp_path / "work"
    env = child_env(XLA_FLAGS=cpu_xla_flags(2))
    args = [str(port), str(workdir), str(root), json.dumps(reference_overrides(root))]
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
    assert [(s["processes"], s["devices"]) for s in summaries] == [(2, 4), (2, 4)]
    for s in summaries:  # evaluation counts are global: both report the one-process numbers
        assert s["eval_clean_accuracy"] == summary["eval_clean_accuracy"]
        assert s["eval_pgd_accuracy"] == summary["eval_pgd_accuracy"]
    assert_close(final_params(workdir), expected, rtol=2e-4, atol=2e-5)
    steps = [r["step"] for r in metrics.read_jsonl(workdir / metrics.JSONL) if "loss" in r]
    assert steps == list(range(1, REFERENCE_STEPS + 1))  # process 0 alone logs


def _losses(workdir):
    records = metrics.read_jsonl(os.path.join(workdir, metrics.JSONL))
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_result(reference, tmp_path):
    ref_workdir, root, ref_summary, expected = reference
    workdir = tmp_path / "killed"
    kill_at_step(workdir, root, reference_overrides(root), step=3, total=REFERENCE_STEPS)
    assert train_checkpoints.TrainCheckpoints(workdir, every_steps=2, keep=2).latest_step() == 2
    assert not os.path.exists(workdir / "model")  # it never got to the end

    summary = run(workdir, root, reference_overrides(root))
    assert summary["resumed_from"] == 2
    # Data by step, randomness by fold_in(step), momentum, batch statistics, prototypes and
    # the weight average restored: same devices, same programs, so bit for bit.
    got = final_params(workdir)
    assert sorted(got) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert summary["eval_pgd_accuracy"] == ref_summary["eval_pgd_accuracy"]
    # What the killed run logged after its checkpoint was dropped, then recomputed.
    assert _losses(workdir) == _losses(ref_workdir)


def test_hpm_fine_tuning_starts_from_the_fc_weights_and_class_means(fc_run, tmp_path):
    fc_workdir, root, _ = fc_run
    fc_dir = os.fspath(fc_workdir / "model")
    _, fc_vars = load_model(fc_dir)
    overrides = tiny_overrides(
        root,
        **{
            "model.head": "hpm",
            "init.checkpoint": fc_dir,
            "objective.prototype_features": "clean",  # PGD-AT's extra clean pass
            "train.num_steps": 1,
            "train.warmup_steps": 0,
        },
    )
    config = load(overrides)
    model, _ = model_init.build_model(config)
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        source = data.get_source("cifar10", "train", data_dir=root)
        start = model_init.initial_variables(model, config, train_source=source, mesh=make_mesh())
        first = {"image": [], "label": []}
        for i in range(16):  # init.prototype_examples
            first["image"].append(source[i]["image"])
            first["label"].append(source[i]["label"])
    # Backbone, FC weights and batch statistics carried over unchanged.
    for path, leaf in jax.tree_util.tree_leaves_with_path(fc_vars):
        keys = [getattr(k, "key", k) for k in path]
        node = start
        for k in keys:
            node = node[k]
        np.testing.assert_array_equal(np.asarray(node), np.asarray(leaf), err_msg=str(keys))
    # Prototypes: exact class means of eval-mode features of the first 16 training images.
    images = jnp.asarray(np.stack(first["image"]), jnp.float32) / 255.0
    labels = np.asarray(first["label"])
    feats = np.asarray(model.apply(start, images, method="features"))
    protos = start["prototypes"]["head"]
    for c in range(10):
        if (labels == c).any():
            np.testing.assert_allclose(
                protos["ema"][c], feats[labels == c].mean(0), rtol=1e-4, atol=1e-5
            )
        assert int(protos["seen"][c]) == int((labels == c).sum())

    summary = run(tmp_path / "hpm", root, overrides)
    assert summary["head"] == "hpm" and summary["steps"] == 1
    seen = np.asarray(final_params(tmp_path / "hpm")["prototypes/head/seen"])
    assert seen.sum() == 16 + BATCH  # the initial means' counts, then one batch


def test_resume_extends_a_finished_run_and_ignores_half_written_checkpoints(fc_run, tmp_path):
    fc_workdir, root, _ = fc_run
    workdir = tmp_path / "work"
    subprocess.run(["cp", "-r", os.fspath(fc_workdir), os.fspath(workdir)], check=True)
    # What a run killed while writing checkpoint 4 leaves behind: Orbax's temporary directory,
    # with part of the state in it. It must never be taken for the latest checkpoint.
    partial = workdir / "checkpoints" / "4.orbax-checkpoint-tmp-1234"
    subprocess.run(["cp", "-r", os.fspath(workdir / "checkpoints" / "3"), os.fspath(partial)])
    subprocess.run(["rm", "-r", os.fspath(partial / "state")], check=True)
    assert train_checkpoints.TrainCheckpoints(workdir, every_steps=2, keep=2).latest_step() == 3

    summary = run(workdir, root, tiny_overrides(root, **{"train.num_steps": 4}))
    assert summary["resumed_from"] == 3 and summary["steps"] == 4
    assert not partial.exists()  # cleaned up when the run started
    steps = [r["step"] for r in metrics.read_jsonl(workdir / metrics.JSONL) if "loss" in r]
    assert steps == [1, 2, 3, 4]


def test_a_workdir_of_another_run_is_refused_with_the_differences(fc_run):
    workdir, root, _ = fc_run
    with pytest.raises(WorkdirMismatchError, match=r"model\.head: 'fc' -> 'hpm'"):
        run(workdir, root, tiny_overrides(root, **{"model.head": "hpm"}))
    with pytest.raises(WorkdirMismatchError, match="--workdir"):
        run(workdir, root, tiny_overrides(root, **{"seed": 1}))


def test_missing_or_mismatched_init_checkpoints_are_named(fc_run, tmp_path):
    fc_workdir, root, _ = fc_run
    with pytest.raises(model_init.InitCheckpointError, match=r"hpm_jax\.convert"):
        run(tmp_path / "a", root, tiny_overrides(root, **{"init.checkpoint": "/nonexistent"}))
    other = {"in_channels": 3, "image_size": 32, "channels": [4, 16], "num_features": 8}
    overrides = tiny_overrides(
        root, **{"init.checkpoint": os.fspath(fc_workdir / "model"), "model.kwargs": other}
    )
    with pytest.raises(model_init.InitCheckpointError, match="channels"):
        run(tmp_path / "b", root, overrides)


def test_a_fine_tuning_config_without_init_checkpoint_fails_before_writing(tmp_path):
    config = load_config(CONFIG + ":hpm")  # fine-tunes an FC model: init.checkpoint is None
    workdir = tmp_path / "never_made"
    with pytest.raises(model_init.InitCheckpointError, match=r"--config\.init\.checkpoint=DIR"):
        train.run(config, os.fspath(workdir))
    assert not workdir.exists()


def test_a_dataset_not_prepared_is_named(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="cifar10"):
        train.run(load(tiny_overrides(tmp_path)), os.fspath(tmp_path / "work"))
    assert not (tmp_path / "work").exists()  # checked before the workdir is made


def test_command_line_reports_setup_errors_without_a_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpm_jax.train",
            f"--config={CONFIG}",
            f"--workdir={tmp_path}",
            "--config.init.checkpoint=/nonexistent/model",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]  # hpm_jax.cli.EXIT_USER_ERROR
    assert "hpm-train: error: init.checkpoint='/nonexistent/model' does not exist" in result.stderr
    assert "Traceback" not in result.stderr


CONFIG_VARIANTS = {
    "fashion_mnist.py": [None, "local", "hpm", "hpm,local"],
    "cifar10.py": [None, "local", "dm_wrn", "fc", "dm_wrn,local"],
    "cifar100.py": [None, "local", "dm_wrn", "dm_wrn,local"],
    "imagenet.py": [None, "local", "fc"],
}


@pytest.mark.parametrize("name", sorted(CONFIG_VARIANTS))
def test_every_training_config_builds_its_model_objective_and_optimizer(name):
    path = os.path.join(REPO, "configs", name)
    for arg in CONFIG_VARIANTS[name]:
        config = load_config(path if arg is None else f"{path}:{arg}")
        setup = train._Setup(config)  # what a run validates before reading any data
        assert config.train.num_steps > 0 and config.checkpoint.every_steps > 0
        assert (
            setup.model_kwargs["num_classes"] == data.dataset_info(config.dataset.name).num_classes
        )
        with open(path) as f:  # the launch command is in the docstring
            assert "hpm_jax.train --config=configs/" + name in f.read()


def test_bad_config_values_are_named(tmp_path):
    with pytest.raises(train.ConfigError, match=r"objective\.name must be one of"):
        train.run(load(tiny_overrides(tmp_path, **{"objective.name": "madry"})), tmp_path)
    with pytest.raises(train.ConfigError, match="not divisible by the 4 devices"):
        train.run(load(tiny_overrides(tmp_path, **{"train.batch_size": 6})), tmp_path)
    assert not os.path.exists(tmp_path / "checkpoints")  # refused before writing anything
