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
        import hpm_jax.attacks, hpm_jax.models, hpm_jax.models.export, hpm_jax.interop.zoo
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
        "import sys, hpm_jax.attacks, hpm_jax.models, hpm_jax.interop.zoo\n"
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


def test_programs_on_the_core_install_say_which_extra_in_one_line():
    """`hpm-train --help` on the core install printed a 25-line ImportError traceback. Each
    program runs as its console script does (`console_main()`), the optional packages
    blocked, in parallel (each import takes seconds)."""
    programs = {
        "hpm-train": ("hpm_jax.cli.train", "train"),
        "hpm-evaluate": ("hpm_jax.cli.evaluate", "train"),
        "hpm-demo": ("hpm_jax.cli.demo", "train"),
        "hpm-study": ("hpm_jax.cli.study", "train"),
        "hpm-analysis": ("hpm_jax.cli.analysis", "all"),
    }
    blocked = f"import sys\nfor name in {sorted(OPTIONAL)!r}:\n    sys.modules[name] = None\n"
    runs = {}
    for program, (module, _) in programs.items():
        code = f"sys.argv = [{program!r}, '--help']\nimport {module} as m\nm.console_main()"
        runs[program] = subprocess.Popen(
            [sys.executable, "-c", blocked + code],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for program, run in runs.items():
        stdout, stderr = run.communicate(timeout=300)
        extra = programs[program][1]
        assert run.returncode == 2, (program, stderr[-2000:])
        assert stdout == "" and len(stderr.splitlines()) == 1, (program, stderr[-2000:])
        assert stderr.startswith(f"{program}: error: {program} needs hpm-jax's '{extra}' extra")
