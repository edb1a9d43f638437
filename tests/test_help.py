"""Every absl program's `--help` (`hpm-train`, `hpm-evaluate`, `hpm-demo`, `hpm-study`,
`hpm-analysis`) lists its flags, `--config` included; every console script names a function.

absl's --help shows only the key flags of the module named by sys.argv[0]: a console script's
bin/ wrapper showed none, and --config (defined in hpm_jax.cli) never showed. Each program runs
here as its console script does: sys.argv[0] is the wrapper's path, then `console_main()`.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import subprocess
import sys
import tomllib

import pytest

PROGRAMS = {
    "hpm-train": ("hpm_jax.cli.train", ["--config", "--workdir", "--multihost"]),
    "hpm-evaluate": (
        "hpm_jax.cli.evaluate",
        ["--config", "--checkpoint", "--workdir", "--multihost", "--coordinator_address"],
    ),
    "hpm-demo": ("hpm_jax.cli.demo", ["--config", "--workdir"]),
    "hpm-study": ("hpm_jax.cli.study", ["--config", "--workdir"]),
    "hpm-analysis": ("hpm_jax.cli.analysis", ["--checkpoint", "--out", "--heads"]),
}


@pytest.fixture(scope="module")
def help_texts(tmp_path_factory):
    """Every program's --help, run in parallel (each import takes seconds)."""
    script = tmp_path_factory.mktemp("bin")
    runs = {}
    for program, (module, _) in PROGRAMS.items():
        code = (
            f"import sys; sys.argv = [{str(script / program)!r}, '--help']; "
            f"from {module} import console_main; console_main()"
        )
        runs[program] = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    return {program: run.communicate(timeout=300)[0] for program, run in runs.items()}


@pytest.mark.parametrize("program", list(PROGRAMS))
def test_help_lists_every_flag(help_texts, program):
    text = help_texts[program]
    for flag in [*PROGRAMS[program][1], "--compilation_cache_dir"]:  # every program's (cli)
        assert f"  {flag}" in text or f"  --[no]{flag[2:]}" in text, (flag, text)


def test_every_console_script_names_a_function():
    """Read, not imported: two programs in one process would define --workdir twice."""
    pyproject = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"
    scripts = tomllib.loads(pyproject.read_text())["project"]["scripts"]
    assert set(PROGRAMS) <= set(scripts)
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        source = pathlib.Path(importlib.util.find_spec(module).origin).read_text()
        defined = {n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
        assert function in defined, (name, target)
        if name in PROGRAMS:
            assert module == PROGRAMS[name][0], (name, target)
