"""`hpm-train --help` and `hpm-evaluate --help` list the programs' flags, `--config` included.

absl's --help shows only the key flags of the module named by sys.argv[0]: a console script's
bin/ wrapper showed none, and --config (defined in config_lib) never showed. Each program runs
here as its console script does: sys.argv[0] is the wrapper's path, then `console_main()`.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

PROGRAMS = {
    "hpm-train": ("hpm_jax.train", ["--config", "--workdir", "--multihost"]),
    "hpm-evaluate": ("hpm_jax.evaluate", ["--config", "--checkpoint", "--workdir"]),
}


@pytest.fixture(scope="module")
def help_texts(tmp_path_factory):
    """Both programs' --help, run in parallel (each import takes seconds)."""
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
    for flag in PROGRAMS[program][1]:
        assert f"  {flag}" in text or f"  --[no]{flag[2:]}" in text, (flag, text)
