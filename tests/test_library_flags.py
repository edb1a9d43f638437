"""Programs apart from the library: only `hpm_jax/cli/` defines flags or imports absl's.

Every other module of hpm_jax (the library: `train.run`, `evaluate.run`, ... take ConfigDicts
and paths) is imported in one fresh interpreter, which must then hold no absl flag defined by
an hpm_jax module, and no `hpm_jax.cli` (importing the library must not import a program).
absl.flags itself is imported there anyway (absl.logging, Orbax, chex import it), so the
source is also read: no library module imports absl.flags or absl.app, at its top or inside
a function.
"""

from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hpm_jax"
PROGRAMS = PACKAGE / "cli"


def library_files() -> list[pathlib.Path]:
    files = sorted(p for p in PACKAGE.rglob("*.py") if PROGRAMS not in p.parents)
    assert len(files) > 20, files  # the walk found the package
    return files


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def absl_program_imports(path: pathlib.Path) -> list[str]:
    """`import absl.flags`, `from absl import app`, ... anywhere in the file, as written."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name in ("absl.flags", "absl.app")]
        elif isinstance(node, ast.ImportFrom) and node.module == "absl":
            found += [f"absl.{a.name}" for a in node.names if a.name in ("flags", "app")]
        elif isinstance(node, ast.ImportFrom) and node.module in ("absl.flags", "absl.app"):
            found.append(node.module)
    return [f"{path.relative_to(ROOT)}:{name}" for name in found]


def test_no_library_module_imports_absl_flags_or_app():
    offenders = [hit for path in library_files() for hit in absl_program_imports(path)]
    assert offenders == [], f"absl.flags / absl.app belong in hpm_jax/cli/: {offenders}"


def test_importing_the_library_defines_no_flag():
    names = [module_name(p) for p in library_files()]
    code = textwrap.dedent(
        f"""
        import importlib, json, sys
        skipped = []
        for name in {names!r}:
            try:
                importlib.import_module(name)
            except ImportError as e:  # an optional extra that is not installed here
                if "pip install 'hpm-jax[" not in str(e):
                    raise
                skipped.append(name)
        from absl import flags
        defined = {{module: sorted(f.name for f in module_flags)
                   for module, module_flags in flags.FLAGS.flags_by_module_dict().items()
                   if module.startswith("hpm_jax") or module == "__main__"}}
        programs = sorted(m for m in sys.modules if m.startswith("hpm_jax.cli"))
        print(json.dumps({{"defined": defined, "programs": programs, "skipped": skipped}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["defined"] == {}, f"library modules define absl flags: {out['defined']}"
    assert out["programs"] == [], f"importing the library imported programs: {out['programs']}"
    assert len(out["skipped"]) < len(names) // 2, out["skipped"]  # most modules were imported


def test_the_programs_print_each_attack_warning_once():
    """The programs print the attacks' lines themselves; the attack logger then stops, and its
    WARNING records (the sanity checks: a dynamic defense, batch dependence) must not reach
    Python's last-resort handler, which printed each a second time on stderr."""
    code = textwrap.dedent(
        """
        import logging
        from hpm_jax import cli
        cli.quiet_attack_logger()
        cli.quiet_attack_logger()  # each program calls it; twice must not add a second handler
        logging.getLogger("hpm_jax.autoattack").warning("the output depends on the batch")
        print(len(logging.getLogger("hpm_jax.autoattack").handlers))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout.strip() == "1", (result.stdout, result.stderr)
