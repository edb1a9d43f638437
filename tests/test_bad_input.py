"""Bad input to the programs: one line on stderr naming the fix, exit code 2, nothing lost.

Every case runs a program as a user would (`python -m ...`, a subprocess) and asserts that
stderr's last line is `PROG: error: ...` matching what the case expects, that the exit code
is 2 (`hpm_jax.cli.EXIT_USER_ERROR`), that no Python traceback was printed, and that every
file already in the workdirs (a finished evaluation's report and state, a training run's
checkpoints, a demo's earlier output) is byte-identical afterwards. The models are tiny
small CNNs with random weights; the only real work is one short training run and two tiny
evaluations (the earlier output the cases must not harm, and `--overwrite`).

Cases tried (ids of `CASES`):

hpm-evaluate
- eval-misspelt-section: `--config.evalution.eps=...` (no such section; the error lists them)
- eval-unknown-key: `--config.evaluation.typo=1`
- eval-wrong-type: `--config.evaluation.eps=abc` (a float key given a string)
- eval-eps-zero, eval-eps-negative: `--config.evaluation.eps=0` / `=-0.1`
- eval-bad-norm: `--config.evaluation.norm=Linfty`
- eval-no-threat-model: a config with neither `evaluation.eps` nor `attack.eps`
- eval-changed-settings: another eps under the workdir of a finished evaluation
  (the state files of that evaluation; the fix named is `--overwrite`)
- eval-other-architecture: a checkpoint whose model.json describes another architecture
- eval-wrong-dataset: an RGB 32x32 model evaluated on Fashion-MNIST
- eval-missing-dataset: a dataset that is not prepared (`cifar10` in an empty data_dir)
- eval-images-0-255, eval-images-nchw, eval-labels-out-of-range, eval-labels-mismatch:
  `evaluation.data_file` arrays with values in 0..255, in PyTorch's NCHW layout, with a
  label 10 for a 10-class model, with fewer labels than images
- eval-missing-data-file: `evaluation.data_file` naming no file
- eval-no-checkpoint-flag, eval-missing-checkpoint: `--checkpoint` absent / not a model dir
- eval-unknown-flag: `--chekpoint=...` (a typo of a flag)
- eval-positional: a stray positional argument
- eval-missing-config-file, eval-unknown-variant: `--config=nope.py`,
  `--config=configs/fashion_mnist.py:nope`

hpm-train
- train-unknown-key: `--config.train.lrr=0.1`
- train-eps-zero: `--config.attack.eps=0`
- train-changed-settings: another seed under the workdir of a finished run (its checkpoints)
- train-init-other-architecture: `init.checkpoint` of an RGB model for a Fashion-MNIST model
- train-missing-dataset: a dataset that is not prepared
- train-no-workdir: `--workdir` absent
- train-missing-section: a config file without the `attack` section
- train-missing-init-checkpoint: `init.checkpoint` naming no directory
- train-no-init-checkpoint: a fine-tuning config (`:hpm`) without `--config.init.checkpoint`
  (these two, train-init-other-architecture and train-missing-dataset also leave no workdir
  behind: it used to keep an empty WORKDIR/checkpoints/)

hpm-convert
- convert-missing-file: `--checkpoint` naming no file
- convert-other-architecture: a state dict of another architecture (safetensors)

python -m hpm_jax.analysis
- analysis-missing-checkpoint, analysis-wrong-dataset (`--dataset=cifar10` for a 1-channel
  model), analysis-no-out (`--out` absent)

the demo
- demo-unknown-key, demo-eps-negative: refused before its first stage, its workdir untouched
- demo-few-points: `evaluation.num_examples=64` below `evaluation.batch_size=128`, which the
  analysis stage cannot cut into one full batch: refused before training (it crashed with a
  traceback after both training stages)

Beside the programs:
- launch/tpu.sh with a config that needs `--config.init.checkpoint` and none given, with and
  without `--dry-run`: the config is checked locally, one line, before any gcloud command
- `AutoAttack.run` and `mixed_surrogate_attack` (the Python API) with a label >= the model's
  classes: a ValueError naming the range (it reported robust accuracy 0.0 silently)

And the positive cases beside them: a hyphenated attack name overrides by a dotted flag
(`--config.evaluation.attack_options.apgd-ce.n_iter=2`, read back from report.json),
`--overwrite` discards the old evaluation and writes the new one, `--config.evaluation.eps`
works on a config file without an evaluation section, and every training config evaluates
at its own threat model (RobustBench's eps).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpm_jax import config_lib
from hpm_jax.data import offline
from hpm_jax.evaluation import evaluate
from hpm_jax.models import get_model
from hpm_jax.models.export import save_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = os.path.join(REPO, "configs", "fashion_mnist.py")
GRAY = dict(in_channels=1, image_size=28, channels=[4, 8, 8], num_features=16)
RGB = dict(in_channels=3, image_size=32, channels=[4, 8, 8], num_features=16)
# A tiny evaluation: 8 points, APGD-CE with 2 iterations (the hyphenated key overridden by
# a dotted flag), no checks, no MSA (the models are FC).
EVAL_TINY = [
    "--config.evaluation.num_examples=8",
    "--config.evaluation.batch_size=8",
    "--config.evaluation.version=apgd-ce",
    "--config.evaluation.attack_options.apgd-ce.n_iter=2",
    "--config.evaluation.msa=off",
    "--config.evaluation.run_checks=False",
]
TRAIN_TINY = [
    "--config.train.num_steps=2",
    "--config.train.batch_size=8",
    "--config.train.warmup_steps=0",
    "--config.train.log_every_steps=1",
    "--config.eval.num_examples=8",
    "--config.eval.batch_size=8",
    "--config.eval.attack.num_steps=1",
    "--config.attack.num_steps=1",
    "--config.checkpoint.every_steps=1",
    "--config.checkpoint.async_save=False",
    "--config.model.kwargs.channels=(4, 8, 8)",
    "--config.model.kwargs.num_features=16",
]
PROGRAMS = {
    "evaluate": ("hpm_jax.evaluate", "hpm-evaluate"),
    "train": ("hpm_jax.train", "hpm-train"),
    "convert": ("hpm_jax.convert", "hpm-convert"),
    "analysis": ("hpm_jax.analysis", "python -m hpm_jax.analysis"),
    "demo": ("hpm_jax.demo", "hpm-demo"),
}

pytestmark = [
    pytest.mark.slow,  # runs the programs on bad input end to end
    pytest.mark.skipif(
        not offline.fashion_mnist_files_present(),
        reason="needs apt-get install dataset-fashion-mnist",
    ),
]


def _command(program: str, args: list[str]) -> list[str]:
    return [sys.executable, "-m", PROGRAMS[program][0], *args]


def _run(program: str, args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(program, args), capture_output=True, text=True, cwd=REPO, timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip


def _snapshot(*roots: str) -> dict[str, bytes]:
    """Every file under `roots`, path -> bytes."""
    files = {}
    for root in roots:
        for directory, _, names in os.walk(root):
            for name in names:
                path = os.path.join(directory, name)
                with open(path, "rb") as f:
                    files[path] = f.read()
    return files


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    program: str
    args: tuple[str, ...]  # formatted with the paths of `world`
    expect: str  # a regex the error line (after "PROG: error: ") must match
    absent: tuple[str, ...] = ()  # paths (formatted with `world`) that must not exist after


def _eval(*extra: str, workdir: str = "{scratch}/eval", checkpoint: str = "{gray}") -> tuple:
    return (f"--config={FMNIST}", f"--checkpoint={checkpoint}", f"--workdir={workdir}",
            *EVAL_TINY, *extra)  # fmt: skip


def _train(*extra: str, workdir: str = "{scratch}/train") -> tuple:
    return (f"--config={FMNIST}:local", f"--workdir={workdir}", *TRAIN_TINY, *extra)


CASES = [
    Case("eval-misspelt-section", "evaluate",
         ("--config={no_section}", "--checkpoint={gray}", "--workdir={scratch}/e1",
          "--config.evalution.eps=0.03"),
         r"config has no section 'evalution'; its keys are .*evaluation"),
    Case("eval-unknown-key", "evaluate", _eval("--config.evaluation.typo=1"),
         r"config\.evaluation has no key 'typo'; its keys are .*eps"),
    Case("eval-wrong-type", "evaluate", _eval("--config.evaluation.eps=abc"),
         r"config\.evaluation\.eps holds a float .*not a str"),
    Case("eval-eps-zero", "evaluate", _eval("--config.evaluation.eps=0"),
         r"evaluation\.eps=0\.0 must be > 0"),
    Case("eval-eps-negative", "evaluate", _eval("--config.evaluation.eps=-0.1"),
         r"evaluation\.eps=-0\.1 must be > 0"),
    Case("eval-bad-norm", "evaluate", _eval("--config.evaluation.norm=Linfty"),
         r"evaluation\.norm='Linfty' is not one of"),
    Case("eval-no-threat-model", "evaluate",
         ("--config={no_threat_model}", "--checkpoint={gray}", "--workdir={scratch}/e2"),
         r"neither evaluation\.eps nor attack\.eps.*Add an evaluation section"),
    Case("eval-changed-settings", "evaluate",
         _eval("--config.evaluation.eps=0.05", workdir="{evaluated}"),
         r"holds an evaluation with other settings \(settings\.eps: 0\.1 -> 0\.05\).*--overwrite"),
    Case("eval-other-architecture", "evaluate", _eval(checkpoint="{other_arch}"),
         r"does not match architecture 'small_cnn'.*mis-shaped.*describes another model"),
    Case("eval-wrong-dataset", "evaluate", _eval(checkpoint="{rgb}"),
         r"cannot take images of shape \(28, 28, 1\).*dataset it was trained on"),
    Case("eval-missing-dataset", "evaluate",
         _eval("--config.dataset.name=cifar10", "--config.dataset.data_dir={scratch}/no_data"),
         r"cifar10"),
    Case("eval-images-0-255", "evaluate", _eval("--config.evaluation.data_file={npz_255}"),
         r"images must lie in \[0, 1\]; these span \[0, 2\d\d\] \(0\.\.255 values: divide by 255"),
    Case("eval-images-nchw", "evaluate", _eval("--config.evaluation.data_file={npz_nchw}"),
         r"look NCHW .*x\.transpose\(0, 2, 3, 1\)"),
    Case("eval-labels-out-of-range", "evaluate",
         _eval("--config.evaluation.data_file={npz_labels}"),
         r"labels span \[0, 10\] but the model has 10 classes"),
    Case("eval-labels-mismatch", "evaluate", _eval("--config.evaluation.data_file={npz_short}"),
         r"labels of shape \(7,\) do not match 8 images"),
    Case("eval-missing-data-file", "evaluate",
         _eval("--config.evaluation.data_file={scratch}/nothing.npz"),
         r"no data file .*np\.savez"),
    Case("eval-no-checkpoint-flag", "evaluate", (f"--config={FMNIST}", "--workdir={scratch}/e3"),
         r"--checkpoint is required"),
    Case("eval-missing-checkpoint", "evaluate", _eval(checkpoint="{scratch}/no_model"),
         r"is not a model directory \(no model\.json\)\..*hpm_jax\.train"),
    Case("eval-unknown-flag", "evaluate", (*_eval(), "--chekpoint={gray}"),
         r"Unknown command line flag 'chekpoint'"),
    Case("eval-positional", "evaluate", (*_eval(), "stray"),
         r"unexpected arguments \['stray'\]"),
    Case("eval-missing-config-file", "evaluate",
         ("--config=nope.py", "--checkpoint={gray}", "--workdir={scratch}/e4"),
         r"No config file 'nope\.py'"),
    Case("eval-unknown-variant", "evaluate",
         (f"--config={FMNIST}:nope", "--checkpoint={gray}", "--workdir={scratch}/e5"),
         r"Unknown variant\(s\) \['nope'\]"),
    Case("train-unknown-key", "train", _train("--config.train.lrr=0.1"),
         r"config\.train has no key 'lrr'; its keys are .*learning_rate"),
    Case("train-eps-zero", "train", _train("--config.attack.eps=0", workdir="{scratch}/t1"),
         r"attack\.eps and attack\.step_size must be > 0"),
    Case("train-changed-settings", "train", _train("--config.seed=1", workdir="{trained}"),
         r"holds checkpoints of a different run.*seed"),
    Case("train-init-other-architecture", "train",
         _train("--config.init.checkpoint={rgb}", workdir="{scratch}/t2"),
         r"init\.checkpoint|does not match|does not fit", absent=("{scratch}/t2",)),
    Case("train-missing-dataset", "train",
         _train("--config.dataset.name=cifar10", "--config.dataset.data_dir={scratch}/no_data",
                workdir="{scratch}/t3"),
         r"cifar10", absent=("{scratch}/t3",)),
    Case("train-missing-init-checkpoint", "train",
         _train("--config.init.checkpoint={scratch}/no_model", workdir="{scratch}/t5"),
         r"init\.checkpoint=.*no_model' does not exist", absent=("{scratch}/t5",)),
    Case("train-no-init-checkpoint", "train",
         (f"--config={FMNIST}:hpm", "--workdir={scratch}/t6"),
         r"init\.checkpoint is None.*--config\.init\.checkpoint=DIR", absent=("{scratch}/t6",)),
    Case("train-no-workdir", "train", (f"--config={FMNIST}",), r"--workdir is required"),
    Case("train-missing-section", "train",
         ("--config={no_threat_model}", "--workdir={scratch}/t4"),
         r"the config has no section\(s\) \['attack'\].*configs/fashion_mnist\.py"),
    Case("convert-missing-file", "convert",
         ("--arch", "resnet18", "--checkpoint", "{scratch}/nope.pt", "--out", "{scratch}/c1"),
         r"No checkpoint file at"),
    Case("convert-other-architecture", "convert",
         ("--arch", "resnet18", "--checkpoint", "{foreign_state_dict}", "--out", "{scratch}/c2"),
         r"does not match architecture 'resnet18'.*missing from the checkpoint"),
    Case("analysis-missing-checkpoint", "analysis",
         ("--checkpoint={scratch}/no_model", "--out={scratch}/a1"), r"does not exist"),
    Case("analysis-wrong-dataset", "analysis",
         ("--checkpoint={gray}", "--out={scratch}/a2", "--dataset=cifar10", "--batch_size=200",
          "--num_examples=200"),
         r"--dataset=cifar10 .*does not fit the checkpoint's model"),
    Case("analysis-no-out", "analysis", ("--checkpoint={gray}",), r"--out is required"),
    Case("demo-unknown-key", "demo",
         (f"--config={FMNIST}", "--workdir={demo}", "--config.evaluation.typo=1"),
         r"config\.evaluation has no key 'typo'"),
    Case("demo-eps-negative", "demo",
         (f"--config={FMNIST}", "--workdir={demo}", "--config.evaluation.eps=-1"),
         r"evaluation\.eps=-1(\.0)? must be > 0"),
    Case("demo-few-points", "demo",
         (f"--config={FMNIST}", "--workdir={scratch}/d1", "--config.evaluation.num_examples=64"),
         r"analysis needs at least one full batch: evaluation\.num_examples=64 < "
         r"evaluation\.batch_size=128; set --config\.evaluation\.batch_size=64",
         absent=("{scratch}/d1",)),
]  # fmt: skip


def _save_tiny(path: str, arch: dict, seed: int = 0) -> str:
    model = get_model("small_cnn", num_classes=10, **arch)
    image = jnp.zeros((1, arch["image_size"], arch["image_size"], arch["in_channels"]))
    variables = jax.jit(model.init)(jax.random.key(seed), image)
    return save_model(path, variables, arch="small_cnn", num_classes=10, **arch)


def _write_config(path: str, body: str) -> str:
    with open(path, "w") as f:
        f.write(textwrap.dedent(body))
    return path


def _make_world(root: str) -> dict[str, str]:
    """Models, configs and data files for the cases; earlier output in three workdirs."""
    w = {"scratch": os.path.join(root, "scratch")}
    os.makedirs(os.path.join(w["scratch"], "no_data"))
    w["gray"] = _save_tiny(os.path.join(root, "gray"), GRAY)
    w["rgb"] = _save_tiny(os.path.join(root, "rgb"), RGB)
    other = shutil.copytree(w["gray"], os.path.join(root, "other_arch"))
    spec = os.path.join(other, "model.json")
    with open(spec) as f:
        desc = json.load(f)
    desc["kwargs"]["channels"] = [8, 8, 8]
    with open(spec, "w") as f:
        json.dump(desc, f)
    w["other_arch"] = other
    load = f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("fm", {FMNIST!r})
        fm = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fm)
    """
    w["no_section"] = _write_config(os.path.join(root, "no_section.py"), load + """
        def get_config(arg=None):
            config = fm.get_config(arg)
            del config["evaluation"]
            return config
    """)  # fmt: skip
    w["no_threat_model"] = _write_config(os.path.join(root, "no_threat.py"), load + """
        def get_config(arg=None):
            config = fm.get_config(arg)
            del config["evaluation"], config["attack"]
            return config
    """)  # fmt: skip
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (8, 28, 28, 1)).astype(np.float32)
    y = np.arange(8) % 10
    for name, (xs, ys) in {
        "npz_255": (np.round(x * 255), y),
        "npz_nchw": (x.transpose(0, 3, 1, 2), y),
        "npz_labels": (x, np.where(np.arange(8) == 3, 10, y)),  # labels 0..10
        "npz_short": (x, y[:7]),
    }.items():
        w[name] = os.path.join(root, f"{name}.npz")
        np.savez(w[name], x=xs, y=ys)
    from safetensors.numpy import save_file

    w["foreign_state_dict"] = os.path.join(root, "foreign.safetensors")
    save_file({"features.0.weight": np.zeros((4, 1, 3, 3), np.float32)}, w["foreign_state_dict"])
    w["evaluated"] = os.path.join(root, "evaluated")
    w["trained"] = os.path.join(root, "trained")
    w["demo"] = os.path.join(root, "demo")
    os.makedirs(os.path.join(w["demo"], "at"))
    with open(os.path.join(w["demo"], "at", "metrics.jsonl"), "w") as f:
        f.write('{"step": 1}\n')  # a demo's earlier output
    return w


def _fmt(args, world) -> list[str]:
    return [a.format(**world) for a in args]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The paths, the earlier output (a finished evaluation, a finished training run), and
    every case's result: the cases are independent, so they run two at a time."""
    w = _make_world(str(tmp_path_factory.mktemp("bad_input")))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        evaluation = pool.submit(_run, "evaluate", _fmt(_eval(workdir="{evaluated}"), w))
        training = pool.submit(_run, "train", _fmt(_train(workdir="{trained}"), w))
        for name, future in (("evaluation", evaluation), ("training", training)):
            result = future.result()
            assert result.returncode == 0, f"the earlier {name} failed:\n{result.stderr[-3000:]}"
    before = _snapshot(w["evaluated"], w["trained"], w["demo"])
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {c.id: pool.submit(_run, c.program, _fmt(c.args, w)) for c in CASES}
        results = {name: future.result() for name, future in futures.items()}
    return {"paths": w, "before": before, "results": results}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_loses_nothing(world, case):
    result = world["results"][case.id]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, f"no error message; stdout:\n{result.stdout[-2000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    prefix = f"{PROGRAMS[case.program][1]}: error: "
    assert lines[-1].startswith(prefix), result.stderr[-3000:]
    assert re.search(case.expect, lines[-1][len(prefix) :]), lines[-1]
    assert result.returncode == 2, result.stderr[-2000:]
    w = world["paths"]
    assert _snapshot(w["evaluated"], w["trained"], w["demo"]) == world["before"]
    for path in _fmt(case.absent, w):
        assert not os.path.exists(path), f"{path} was made before the error: {os.listdir(path)}"


def test_hyphenated_attack_names_override_by_dotted_flags(world):
    with open(os.path.join(world["paths"]["evaluated"], "report.json")) as f:
        report = json.load(f)
    assert report["settings"]["attack_options"]["apgd-ce"]["n_iter"] == 2
    assert report["heads"]["fc"]["autoattack"]["attack_settings"]["apgd-ce"]["n_iter"] == 2
    assert report["threat_model"] == {"norm": "Linf", "eps": 0.1}  # the training eps


def test_overwrite_discards_the_old_evaluation(world, tmp_path):
    workdir = str(tmp_path / "eval")
    shutil.copytree(world["paths"]["evaluated"], workdir)
    args = _fmt(_eval("--config.evaluation.eps=0.05", "--overwrite", workdir=workdir),
                world["paths"])  # fmt: skip
    result = _run("evaluate", args)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(workdir, "report.json")) as f:
        report = json.load(f)
    assert report["threat_model"]["eps"] == 0.05
    with open(os.path.join(workdir, "summary.md")) as f:
        assert "Linf eps=0.05" in f.read()
    with open(os.path.join(workdir, "state", "evaluation.json")) as f:
        assert json.load(f)["settings"]["eps"] == 0.05


def test_evaluation_knobs_override_without_the_section(world):
    config = evaluate.load_evaluation_config(
        world["paths"]["no_section"], ["evaluation.eps=0.03", "evaluation.data_file=x.npz"]
    )
    ev = evaluate.evaluation_config(config)
    assert (ev.norm, ev.eps, ev.data_file) == ("Linf", 0.03, "x.npz")
    ev = evaluate.evaluation_config(evaluate.load_evaluation_config(world["paths"]["no_section"]))
    assert ev.eps == 0.1  # the training eps of fashion_mnist.py, not a default


@pytest.mark.parametrize(
    "spec, norm, eps",
    [("cifar10.py", "Linf", 8 / 255), ("cifar10.py:l2", "L2", 0.5),
     ("cifar10.py:dm_wrn,local", "Linf", 8 / 255), ("cifar100.py", "Linf", 8 / 255),
     ("imagenet.py", "Linf", 4 / 255), ("imagenet.py:local", "Linf", 4 / 255)],
)  # fmt: skip
def test_every_training_config_evaluates_at_its_threat_model(spec, norm, eps):
    config = config_lib.load_config(os.path.join(REPO, "configs", spec))
    ev = evaluate.evaluation_config(config)
    assert (ev.norm, ev.eps) == (config.attack.norm, config.attack.eps) == (norm, eps)
    assert int(ev.batch_size) % 8 == 0 or spec.startswith("imagenet.py")  # 1, 2, 4, 8 devices
    budgets = ev.attack_options.to_dict()
    assert set(budgets) == {"apgd-ce", "apgd-t", "fab-t", "square"}  # each overridable
    if "local" not in spec:  # the standard version's full budgets
        assert budgets["square"]["n_queries"] == 5000 and budgets["apgd-t"]["n_iter"] == 100


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "real"])
def test_tpu_launch_checks_the_config_here_before_creating_anything(tmp_path, dry_run):
    """configs/imagenet.py fine-tunes a pretrained ResNet-50, so without
    `-- --config.init.checkpoint=...` the run cannot start: tpu.sh says so in one line before
    its first gcloud command (it used to create and set up the TPU first). gcloud on PATH is a
    stub that records any call."""
    calls = tmp_path / "gcloud_calls"
    stub = tmp_path / "bin" / "gcloud"
    stub.parent.mkdir()
    stub.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    stub.chmod(0o755)
    args = ["--tpu=hpm", "--zone=us-central2-b", "--accelerator=v4-32", "--bucket=my-bucket",
            "--config=configs/imagenet.py", "--workdir=runs/r50"]  # fmt: skip
    args += ["--dry-run"] if dry_run else []
    result = subprocess.run(
        ["bash", os.path.join(REPO, "launch", "tpu.sh"), *args],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}",
             "HPM_PYTHON": sys.executable, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert re.match(r"hpm-train: error: This config fine-tunes a pretrained resnet50 .*"
                    r"--config\.init\.checkpoint=DIR", lines[-1]), lines[-1]  # fmt: skip
    assert "gcloud" not in result.stdout and not calls.exists(), (result.stdout, calls)


def test_python_api_refuses_labels_out_of_range():
    """AutoAttack.run and mixed_surrogate_attack with a label >= the model's classes, without
    `num_classes`: a ValueError naming the range, before any attack (robust accuracy 0.0
    without an error before; the programs checked, the library did not)."""
    from hpm_jax.attacks import AutoAttack, mixed_surrogate_attack
    from hpm_jax.models import logits_fn

    model = get_model("small_cnn", num_classes=10, head="hpm", **GRAY)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    x = np.random.default_rng(0).uniform(0, 1, (8, 28, 28, 1)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 4, 5, 6, 10])  # 10: one past the last class
    expect = r"labels must lie in \[0, 9\], got values in \[0, 10\]"
    target = logits_fn(model, variables)
    with pytest.raises(ValueError, match=expect):
        AutoAttack(target, norm="Linf", eps=0.1, log=None).run(x, y, batch_size=8)
    surrogates = {"fc": logits_fn(model, variables, mode="fc")}
    with pytest.raises(ValueError, match=expect):
        mixed_surrogate_attack(target, surrogates, x, y, eps=0.1, batch_size=8, log=None)
