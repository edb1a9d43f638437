"""The README's main command end to end, shortened: adversarial training, HPM fine-tuning,
sensitivity analysis, AutoAttack / MSA evaluation and the printed table, then a rerun in
the same workdir that skips every stage and prints the same table."""

import json
import os

import pytest

from hpm_jax import demo
from hpm_jax.data import offline

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "fashion_mnist.py")
TINY = [
    "train.num_steps=4",
    "train.warmup_steps=0",
    "train.batch_size=32",
    "train.log_every_steps=2",
    "eval.num_examples=32",
    "eval.batch_size=32",
    "checkpoint.every_steps=2",
    "init.prototype_examples=256",
    "evaluation.num_examples=16",
    "evaluation.batch_size=8",
    "evaluation.version='apgd-ce,square'",
    "evaluation.attack_options={'apgd-ce': {'n_iter': 2, 'n_restarts': 1}, "
    "'square': {'n_queries': 3}}",
    "evaluation.surrogates=('fc', 'ste')",
    "evaluation.run_checks=False",  # tested in test_evaluate; here they would only add time
]


@pytest.mark.skipif(
    not offline.fashion_mnist_files_present(), reason="needs apt-get install dataset-fashion-mnist"
)
def test_demo_end_to_end_then_resumes_by_skipping(tmp_path):
    lines = []
    at_config, hpm_config = demo.stage_configs(CONFIG, TINY)
    summary = demo.run(at_config, hpm_config, os.fspath(tmp_path), log=lines.append)
    text = "\n".join(lines)
    for stage in ("1/4: adversarial training", "2/4: HPM fine-tuning", "3/4: sensitivity",
                  "4/4: AutoAttack"):  # fmt: skip
        assert stage in text
    # The table: rows FC, l2-EMA, HPM; MSA only for HPM; n and the budgets stated.
    table = text[text.index("clean  AutoAttack") :]
    for row in ("FC", "l2-EMA", "HPM"):
        assert any(line.startswith(row) for line in table.splitlines()), row
    fc_line = next(line for line in table.splitlines() if line.startswith("FC"))
    assert fc_line.rstrip().endswith("n/a")
    assert "n=16" in table and "square: n_queries=3" in table
    assert summary["table"]["hpm"]["msa"] is not None
    assert summary["table"]["fc"]["msa"] is None
    assert summary["train"]["at"]["head"] == "fc" and summary["train"]["hpm"]["head"] == "hpm"
    assert os.path.isfile(summary["report"]) and os.path.isfile(summary["summary_md"])
    names = {os.path.basename(p) for p in summary["plots"]}
    assert {"robustness.png", "histograms.png", "perturbations.png"} <= names
    with open(tmp_path / "analysis" / "summary.json") as f:
        assert set(json.load(f)["heads"]) == {"fc", "l2", "hpm"}

    again = []
    rerun = demo.run(*demo.stage_configs(CONFIG, TINY), os.fspath(tmp_path), log=again.append)
    assert sum("complete; skipped" in line for line in again) == 4
    assert rerun["table"] == summary["table"]
