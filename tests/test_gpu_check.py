"""benchmarks/gpu_check.py --smoke on the CPU: every part of the GPU check runs and what it
reports holds where the answer is known (the CPU's two loops agree, ours and the reference
agree within the paired bound)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyautoattack", reason="the GPU check compares with pyautoattack")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_smoke_run_reports_every_part(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", f"--out={tmp_path}"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for name, row in results["A"]["attacks"].items():
        # On the CPU both loops run the same float32 arithmetic up to the kernels XLA picks
        # (tests/test_lax_host.py bounds that drift); the flags must agree.
        assert row["flags_differ"] == 0, (name, row)
        assert row["max_abs_x_adv_diff"] <= 1e-4, (name, row)
    b = results["B"]
    assert b["n"] == 8 and b["within_bound"], b
    assert set(b["ours_after"]) == {"apgd-ce", "apgd-t", "fab-t", "square"}
    for dtype in ("float32", "bfloat16"):
        c = results["C"][dtype]
        for name in ("forward+gradient", "apgd-ce", "square"):
            assert c["ours"][name]["warm_s"] > 0 and c["reference"][name]["warm_s"] > 0
        assert c["chain_minutes_ours"] > 0
    assert "(C) WRN-10-1, batch 8" in out.stdout
