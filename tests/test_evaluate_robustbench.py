"""`hpm-evaluate --robustbench NAME`, offline: a random-weight checkpoint written from
RobustBench's own architecture file into RobustBench's cache layout, evaluated on 8 images
(a data file override, tiny APGD-CE) as the console script runs; RobustBench's report fields,
provenance, log.txt, progress lines, TensorBoard; a missing checkpoint as one error line; and
RobustBench's CIFAR order restored from TFDS's shuffled ids.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hpm_jax.evaluation import provenance
from hpm_jax.evaluation import robustbench as rb_eval
from hpm_jax.runtime import integrity

pytestmark = pytest.mark.slow  # evaluates converted RobustBench models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "Andriushchenko2020Understanding"  # PreActResNet-18: the smallest CIFAR-10 Linf entry
TINY = [
    "--config.evaluation.num_examples=8",
    "--config.evaluation.batch_size=4",  # 2 batches: a progress line after the first
    "--config.evaluation.version=apgd-ce",
    "--config.evaluation.attack_options={'apgd-ce': {'n_iter': 2, 'n_restarts': 1}}",
    "--config.evaluation.run_checks=False",
]


def _evaluate(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HPM_PROGRESS": "lines",
           "HPM_PROGRESS_INTERVAL_S": "0"}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "hpm_jax.evaluate", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=300, env=env)  # fmt: skip


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    import torch_reference

    torch = torch_reference.torch
    torch.manual_seed(0)
    arch = torch_reference.robustbench_architecture("resnet")
    model = arch.PreActResNet(arch.PreActBlock, [2, 2, 2, 2])
    root = tmp_path_factory.mktemp("rb")
    path = root / "models" / "cifar10" / "Linf" / f"{NAME}.pt"
    os.makedirs(path.parent)
    torch.save({"last": model.state_dict()}, path)  # as RobustBench's download holds it
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (8, 32, 32, 3)).astype(np.float32)
    model.eval()
    with torch.no_grad():  # the model's own labels: every point robust before the attack
        y = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).argmax(1).numpy()
    y = y.astype(np.int32)
    np.savez(root / "data.npz", x=x, y=y)
    workdir = root / "eval"
    result = _evaluate(f"--robustbench={NAME}", f"--model_dir={root / 'models'}",
                       f"--workdir={workdir}", f"--config.evaluation.data_file={root / 'data.npz'}",
                       *TINY)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with open(workdir / "report.json") as f:
        report = json.load(f)
    return report, workdir, result, (x, y)


def test_robustbench_report_fields_and_provenance(evaluated):
    report, workdir, _, (x, y) = evaluated
    info = report["robustbench"]
    assert info["name"] == NAME and info["dataset"] == "cifar10" and info["threat_model"] == "Linf"
    assert info["eps"] == "8/255"  # the leaderboard's eps, not the config's
    assert report["threat_model"] == {"norm": "Linf", "eps": pytest.approx(8 / 255)}
    row = report["heads"]["fc"]
    assert info["clean_acc"] == f"{round(100 * row['clean_accuracy'], 2)}"
    assert info["autoattack_acc"] == f"{round(100 * row['autoattack']['robust_accuracy'], 2)}"
    assert info["leaderboard"]["clean_acc"] == 79.84
    assert integrity.read_json(workdir / "model_info.json") == info  # its checksum checked
    prov = report["provenance"]
    assert set(prov["versions"]) >= {"jax", "jaxlib", "flax", "hpm-jax", "numpy"}
    assert prov["versions"]["hpm-jax"] != "absent"
    assert prov["devices"]["count"] >= 1 and prov["devices"]["kind"]
    assert prov["date"][:2] == "20"
    assert prov["data_sha256"] == provenance.data_hash(x, y)  # the arrays evaluated
    assert len(prov["variables_sha256"]) == 64


def test_log_file_progress_and_tensorboard(evaluated):
    _, workdir, result, _ = evaluated
    log = (workdir / "log.txt").read_text()
    assert "initial accuracy:" in log and "robust accuracy:" in log
    assert "initial accuracy: 100.00%" in log
    assert "[autoattack_fc batch 2/2] apgd-ce - 1/1 - " in log
    # Progress lines (no terminal here): after the first batch, with rate and ETA.
    assert "[progress] autoattack_fc: 1/2 batch, " in result.stderr
    assert "ETA 0:" in result.stderr
    # Each log line once on the console (the logger no longer repeats them through absl).
    # (each batch's "robust accuracy:" and the section's over all batches).
    assert result.stdout.count("robust accuracy:") == log.count("robust accuracy:") == 3
    assert "robust accuracy:" not in result.stderr
    events = os.listdir(workdir / "tensorboard")
    assert any(name.startswith("events.out.tfevents") for name in events)
    assert "hparams" in events
    data = b"".join(
        open(os.path.join(workdir, "tensorboard", name), "rb").read()
        for name in events if name.startswith("events")
    )  # fmt: skip
    assert b"fc/autoattack/robust_accuracy" in data and b"fc/clean_accuracy" in data


def test_missing_checkpoint_is_one_line_naming_the_file(tmp_path):
    result = _evaluate(f"--robustbench={NAME}", f"--model_dir={tmp_path}", "--nodownload",
                       f"--workdir={tmp_path / 'eval'}", *TINY)  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    expected = os.path.join(tmp_path, "cifar10", "Linf", f"{NAME}.pt")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith("hpm-evaluate: error: ") and expected in lines[-1]
    assert not (tmp_path / "eval").exists()


class _ShuffledCifar:
    """A source as TFDS writes cifar10's test split: records shuffled, `id` the original."""

    def __init__(self, n: int):
        self.perm = np.random.default_rng(0).permutation(n)

    def __len__(self) -> int:
        return len(self.perm)

    def raw(self, i: int) -> dict:
        return {"id": f"test_{self.perm[i]:05d}".encode()}


def test_robustbench_order_restores_the_original_cifar_order():
    source = _ShuffledCifar(50)
    indices, described = rb_eval.robustbench_indices(source, "cifar10", 7)
    assert [source.perm[i] for i in indices] == list(range(7))
    assert "original order" in described
    ids = rb_eval.imagenet_ids()  # RobustBench's list, read from its package
    assert len(ids) == 5000 and ids[0].endswith(".JPEG") and "/" in ids[0]
