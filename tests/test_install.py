"""A plain `pip install hpm-jax` (no extras) gives the models, heads and attacks.

Each check runs in a fresh interpreter in which the optional packages cannot be imported
(`sys.modules[name] = None` makes `import name` fail), as on a slim install.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Optional packages -> the extra that installs them (pyproject.toml).
OPTIONAL = {
    "tensorflow_datasets": "data",
    "grain": "data",
    "PIL": "data",
    "importlib_resources": "data",
    "tensorboardX": "train",
    "matplotlib": "reports",
    "torch": "torch",
    "safetensors": "torch",
}


def _run(code: str) -> subprocess.CompletedProcess:
    blocked = f"import sys\nfor name in {sorted(OPTIONAL)!r}:\n    sys.modules[name] = None\n"
    return subprocess.run(
        [sys.executable, "-c", blocked + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_core_imports_need_no_optional_package():
    result = _run(
        """
        import hpm_jax.attacks, hpm_jax.models, hpm_jax.model_export, hpm_jax.zoo
        from hpm_jax.attacks import apgd, mixed_surrogate_attack
        from hpm_jax.models import get_model
        get_model("small_cnn", num_classes=10, head="hpm", in_channels=1)
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_core_imports_load_no_optional_package():
    """Nothing optional is imported even when installed (no import-time cost, no coupling)."""
    code = (
        "import sys, hpm_jax.attacks, hpm_jax.models, hpm_jax.zoo\n"
        f"print([m for m in {sorted(OPTIONAL)!r} if m in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_missing_extra_is_named():
    result = _run(
        """
        for module, extra in [("hpm_jax.data", "data"), ("hpm_jax.training.metrics", "train"),
                              ("hpm_jax.analysis.plots", "reports")]:
            try:
                __import__(module)
            except ImportError as e:
                assert f"pip install 'hpm-jax[{extra}]'" in str(e), (module, str(e))
            else:
                raise AssertionError(f"{module} imported without its extra")
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
