"""The evaluation program on a tiny HPM model trained here on real Fashion-MNIST.

One full evaluation is shared (module fixture); tests check its report against itself and
the data (clean accuracy per head equals the attacks' clean pass, robust accuracy never above
any intermediate figure, adversarial images inside the eps ball, flags of the dynamic
defense), the written summary.md and PNGs, that an evaluation interrupted midway (an exception
raised from its log hook inside MSA) resumes to the same report, and the errors.
"""

import os

import numpy as np
import pytest
from evaluation_support import ARCH, EPS, comparable, tiny_config, train_tiny

from hpm_jax.attacks import driver
from hpm_jax.data import offline
from hpm_jax.evaluation import evaluate
from hpm_jax.models.export import save_model
from hpm_jax.runtime import integrity

pytestmark = [
    pytest.mark.slow,  # trains and evaluates a model end to end
    pytest.mark.skipif(
        not offline.fashion_mnist_files_present(),
        reason="needs apt-get install dataset-fashion-mnist",
    ),
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    _, variables = train_tiny()
    hpm_dir = save_model(str(root / "hpm"), variables, arch="small_cnn", num_classes=10,
                         head="hpm", **ARCH)  # fmt: skip
    fc_vars = {
        "params": {
            "backbone": variables["params"]["backbone"],
            "head": {"fc": variables["params"]["head"]["fc"]},
        },
        "batch_stats": variables["batch_stats"],
    }
    fc_dir = save_model(str(root / "fc"), fc_vars, arch="small_cnn", num_classes=10, **ARCH)
    return {"hpm": hpm_dir, "fc": fc_dir}


@pytest.fixture(scope="module")
def evaluated(checkpoints, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("eval")
    report = evaluate.run(tiny_config(), checkpoints["hpm"], str(workdir), log=None)
    return report, workdir


def test_report_fields_and_consistency(evaluated):
    report, workdir = evaluated
    assert set(report["heads"]) == {"fc", "ema_l2", "hpm"}
    assert report["num_examples"] == 24 and report["batch_size"] == 8
    assert report["settings"]["attack_options"]["square"] == {"n_queries": 4}
    assert "fixed batches of 8" in report["order"]
    x, _ = evaluate.load_eval_data(tiny_config(), 24)
    for name, row in report["heads"].items():
        entries = {k: row[k] for k in ("autoattack", "msa", "naive_autoattack") if k in row}
        assert entries, name
        for kind, entry in entries.items():
            # The attacks' clean pass is the same fixed batches as the row's clean accuracy.
            assert entry["clean_accuracy"] == row["clean_accuracy"], (name, kind)
            after = list(entry["robust_accuracy_after"].values())
            assert all(a >= b for a, b in zip([row["clean_accuracy"], *after], after, strict=False))
            assert entry["robust_accuracy"] <= after[-1] + 1e-12
            saved = np.load(workdir / "adversarial" / f"{_section(name, kind)}.npz")
            assert saved["robust"].mean() == pytest.approx(entry["robust_accuracy"])
            delta = np.abs(saved["x_adv"] - x).reshape(len(x), -1).max(axis=1)
            assert delta.max() <= EPS + 1e-6
            assert saved["x_adv"].min() >= 0 and saved["x_adv"].max() <= 1
    msa = report["heads"]["hpm"]["msa"]
    assert list(msa["per_surrogate"]) == ["fc", "ste"]
    # The default precision, float32's tolerance, in the report, every attack and provenance.
    assert report["precision"] == {"level": "high", "backend": "cpu",
                                   "compute_dtype": "float32", "logit_tolerance": 1e-5}  # fmt: skip
    assert report["provenance"]["matmul_precision"] == "high"
    assert {msa["chain"]["precision"], msa["chain"]["logit_tolerance"]} == {"high", 1e-5}
    assert list(msa["robust_accuracy_after"]) == ["apgd-ce@fc", "apgd-ce@ste", "square"]
    # HPM is a dynamic, batch-coupled defense: the naive evaluation's checks must say so.
    naive = report["heads"]["hpm"]["naive_autoattack"]
    assert {"dynamic", "batch_dependence"} <= set(naive["flagged"])
    # A plain FC head raises none of the structural flags: those checks look at the model
    # (primitives, determinism, batch coupling: float32 noise ~1e-6 against a 1e-3 bound), so
    # no CPU can change them. The Square flag is not structural: with 3 APGD-CE iterations and
    # 4 Square queries on 24 points, whether Square breaks one point more (1/24 > 0.002) is a
    # coin flip of each CPU's rounding (flagged on an AMD EPYC, not on a Xeon). For it, only
    # the rule itself is checked, against the figures the report holds.
    fc = report["heads"]["fc"]["autoattack"]
    assert set(fc["flagged"]) <= {"square"}, fc["flagged"]
    after = fc["robust_accuracy_after"]
    assert ("square" in fc["flagged"]) == (after["apgd-ce"] - after["square"] > 0.002)
    # The file as written, its checksum checked (and left out).
    assert integrity.read_json(workdir / "report.json") == {
        k: v for k, v in report.items() if k != "files"
    }


def _section(name, kind):
    return {"autoattack": f"autoattack_{name}", "msa": "msa_hpm",
            "naive_autoattack": "autoattack_hpm_naive"}[kind]  # fmt: skip


def test_summary_and_plots_written(evaluated):
    report, workdir = evaluated
    md = (workdir / "summary.md").read_text()
    assert "| head | clean | AutoAttack | MSA |" in md
    for label in ("| FC |", "| l2-EMA |", "| HPM |", "apgd-ce@ste", "Sanity checks flagged"):
        assert label in md
    assert f"{100 * report['heads']['hpm']['msa']['robust_accuracy']:.1f}%" in md
    with open(workdir / "robustness.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert set(report["files"]) == {"robustness", "summary"}
    # The attacks' lines reach log.txt even with log=None; results reach TensorBoard.
    log = (workdir / "log.txt").read_text()
    assert "initial accuracy:" in log and "robust accuracy:" in log
    assert "[msa_hpm batch 3/3] apgd-ce@fc - 1/1 - " in log
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(workdir / "tensorboard"))
    assert report["provenance"]["devices"]["count"] == 4


class _Stop(Exception):
    pass


def test_interrupted_evaluation_resumes_to_the_same_report(evaluated, checkpoints, tmp_path):
    report, _ = evaluated

    def stop_inside_msa(line):
        # MSA's first attack, its first batch done and saved. That line comes on every CPU:
        # a batch is logged whether or not it breaks points, and every attack runs as long as
        # a point is robust (the HPM model classifies ~2/3 of the 24 points correctly; 0 of 24
        # would need every one wrong). A later attack's line, as this test once used, never
        # comes where the first attack already broke every point.
        if line.startswith("[msa_hpm batch 1/3] apgd-ce@fc - 1/1 - "):
            raise _Stop

    # Without the naive AutoAttack (a section of its own, with its own state and seeds, so
    # the other entries cannot depend on it): two runs less to compile.
    config = tiny_config(naive_autoattack=False)
    with pytest.raises(_Stop):
        evaluate.run(config, checkpoints["hpm"], str(tmp_path), log=stop_inside_msa)
    assert not (tmp_path / "report.json").exists()
    assert (tmp_path / "state" / "msa_hpm" / "batch_00000.json").exists()
    resumed = evaluate.run(config, checkpoints["hpm"], str(tmp_path), log=None)
    assert resumed["heads"]["hpm"]["msa"]["chain"]["resumed"] is True
    assert "naive_autoattack" not in resumed["heads"]["hpm"]
    expected = comparable(report)
    del expected["heads"]["hpm"]["naive_autoattack"], expected["flagged"]["hpm/naive_autoattack"]
    expected["settings"]["naive_autoattack"] = False
    assert comparable(resumed) == expected


def test_errors_name_the_problem_and_the_fix(checkpoints, tmp_path):
    with pytest.raises(evaluate.EvaluationSetupError, match=r"no model.json.*hpm_jax.train"):
        evaluate.run(tiny_config(), str(tmp_path / "missing"), str(tmp_path / "out"), log=None)
    with pytest.raises(evaluate.EvaluationSetupError, match=r"no HPM head.*:hpm"):
        evaluate.run(tiny_config(msa="required"), checkpoints["fc"], str(tmp_path), log=None)
    with pytest.raises(evaluate.EvaluationSetupError, match="not modes of this model"):
        evaluate.run(tiny_config(surrogates=("fc", "bpda")), checkpoints["hpm"], str(tmp_path),
                     log=None)  # fmt: skip
    with pytest.raises(evaluate.EvaluationSetupError, match=r"evaluation.loop='python'"):
        evaluate.run(tiny_config(loop="python"), checkpoints["hpm"], str(tmp_path), log=None)
    with pytest.raises(evaluate.EvaluationSetupError, match="multiple of the 4 devices"):
        evaluate.run(tiny_config(batch_size=6), checkpoints["hpm"], str(tmp_path), log=None)
    with pytest.raises(evaluate.EvaluationSetupError, match=r"precision='tf32' is not one of"):
        evaluate.run(tiny_config(precision="tf32"), checkpoints["hpm"], str(tmp_path), log=None)
    config = tiny_config()
    with config.unlocked():
        config.evaluation.typo = 1
    with pytest.raises(evaluate.EvaluationSetupError, match=r"unknown key.*typo"):
        evaluate.run(config, checkpoints["hpm"], str(tmp_path), log=None)
    assert not (tmp_path / "report.json").exists()


def test_evaluation_loop_reaches_the_attacks_and_the_report(evaluated, checkpoints, tmp_path):
    """evaluation.loop=lax: no attack compiles a host-loop step (APGD's would under "auto" on
    the CPU), the report records the loop, and the FC model (the HPM model's own FC head)
    keeps the robust flags the shared evaluation's host loop gave it."""
    steps = driver.compiled_programs()["step"]
    report = evaluate.run(tiny_config(loop="lax"), checkpoints["fc"], str(tmp_path), log=None)
    assert driver.compiled_programs()["step"] == steps
    assert report["settings"]["loop"] == "lax"
    assert report["heads"]["fc"]["autoattack"]["loop"] == "lax"
    lax_flags, host_flags = (np.load(d / "adversarial" / "autoattack_fc.npz")["robust"]
                             for d in (tmp_path, evaluated[1]))  # fmt: skip
    np.testing.assert_array_equal(lax_flags, host_flags)
