"""README.md runs as written: every fenced block is executed, or fails as its marker says.

Each fenced block of README.md has a marker on the line before it,
`<!-- readme-test: KIND [ARGUMENT] -->`, which says how it is checked:

- `run`: run as written, top to bottom in one temporary directory ROOT, as a new user would
  (a block may use what an earlier one wrote, e.g. the demo's model). Bash blocks run command
  by command in the repository root; Python blocks run in one fresh interpreter, each block in
  a fresh namespace, in the working directory ROOT/cwd. The fixture, and all it changes:
  * every `/tmp/` in a block becomes `ROOT/`, and the launch scripts' default workdirs
    (`/tmp/hpm_demo`, `/tmp/hpm_train`) move there through their `WORKDIR` variable;
  * each program's command gets the small sizes of `TINY` appended (a later `--config.KEY`
    wins over the README's), so the demo, training, evaluation, study and analysis take
    seconds; the test suite's own commands only collect (`--collect-only`), `ruff format`
    only checks (`--check`): running the suite inside itself would recurse;
  * the launch scripts install nothing (`HPM_SKIP_INSTALL=1`, the running environment).
- `offline "REGEX"`: the block needs what the test machines lack (the network, CIFAR data, a
  downloaded checkpoint). It runs as written all the same and must fail within
  `OFFLINE_SECONDS`: a command with exit code 2 and a last stderr line `PROG: error: ...`
  matching REGEX, no traceback; a Python block with an exception whose one-line message
  matches REGEX. Skipped where the download hosts are reachable (it would download).
- `install`: not run (it changes the environment). Every extra it names exists in
  pyproject.toml, and every pinned version is the one `launch/_env.sh` installs.
- `output`: the demo's printed table. Its header, row labels, footnote and settings line
  must have the shape of the table the `run` of the first block printed.
- `citation`: each BibTeX entry's title and year are those of CITATION.cff.

A block without a marker, or with an unknown one, fails. So does a block whose code no longer
runs: deleting a line that a block needs (an import, a definition) fails its test.

The first block's demo is also checked in detail (its stages, table, summary, report and
plots) and run a second time, which must skip every stage and print the same table (this was
tests/test_demo.py, which ran the same demo through `demo.run`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import textwrap
import time
import tomllib

import pytest

from hpm_jax.data import offline

REPO = pathlib.Path(__file__).resolve().parent.parent
README = REPO / "README.md"
OFFLINE_SECONDS = 60
KINDS = ("run", "offline", "install", "output", "citation")
_MARKER = re.compile(r'^<!-- readme-test: (\w+)(?: "(.*)")? -->$')

# Small sizes, appended to each program's command (see the module docstring).
_TRAIN = [
    "--config.train.num_steps=2",
    "--config.train.batch_size=32",
    "--config.train.warmup_steps=0",
    "--config.train.log_every_steps=1",
    "--config.eval.num_examples=32",
    "--config.eval.batch_size=32",
    "--config.checkpoint.every_steps=2",
    "--config.init.prototype_examples=256",
]
# The demo's evaluation keeps every row and column of its table (MSA with two surrogates, the
# naive AutoAttack beside it) with one attack; Square and the sanity checks are tested in
# test_evaluate and test_square.
_EVAL = [
    "--config.evaluation.num_examples=16",
    "--config.evaluation.batch_size=8",
    "--config.evaluation.version=apgd-ce",
    "--config.evaluation.attack_options={'apgd-ce': {'n_iter': 2, 'n_restarts': 1}}",
    "--config.evaluation.surrogates=('fc', 'ste')",
    "--config.evaluation.run_checks=False",
]
# Other evaluations: one attack, no MSA (each MSA surrogate compiles its own programs).
_EVAL_ONLY = [*_EVAL, "--config.evaluation.msa=off"]
_STUDY = ["--config.study.run=('default',)", "--config.study.seeds=(0,)",
          "--config.study.baseline=False"]  # fmt: skip
_ANALYSIS = ["--num_examples=32", "--batch_size=16", "--num_steps=2", "--num_draws=1",
             "--prototype_examples=256"]  # fmt: skip
_COLLECT = ["--collect-only", "-q"]
TINY = {
    "launch/demo.sh": _TRAIN + _EVAL,
    "hpm_jax.demo": _TRAIN + _EVAL,
    "launch/train_local.sh": _TRAIN,
    "hpm_jax.train": _TRAIN,
    "hpm-train": _TRAIN,
    "hpm_jax.evaluate": _EVAL_ONLY,
    "hpm-evaluate": _EVAL_ONLY,
    "hpm_jax.study": _TRAIN + _EVAL + _STUDY,
    "hpm_jax.analysis": _ANALYSIS,
    "launch/test.sh": _COLLECT,
    ".venv/bin/ruff format": ["--check"],
}
WORKDIRS = {"launch/demo.sh": "hpm_demo", "launch/train_local.sh": "hpm_train"}
# launch/test.sh collects in this process's worker, not in two more (pytest-xdist).
ENVIRONMENTS = {"launch/test.sh": {"HPM_TEST_WORKERS": "0"}}


@dataclasses.dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    kind: str
    argument: str

    @property
    def id(self) -> str:
        return f"line{self.line}-{self.lang}-{self.kind}"


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of `text` with the marker on the line before each ("" if none)."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].startswith("```"):
            start, lang = i, lines[i][3:].strip()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            marker = _MARKER.match(lines[start - 1].strip()) if start else None
            kind, argument = (marker.group(1), marker.group(2) or "") if marker else ("", "")
            blocks.append(Block(start + 1, lang, "\n".join(lines[start + 1 : end]), kind, argument))
            i = end
        i += 1
    return blocks


def commands(code: str) -> list[list[str]]:
    """A bash block's commands as argument lists: continuation lines joined, comments gone."""
    joined = re.sub(r"\\\n", " ", code)
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def program(words: list[str]) -> str:
    """The key of `TINY` a command runs ("" if none): the script, module or console script."""
    words = [w for w in words if not re.match(r"^[A-Z_]+=", w)]  # leading VAR=value
    if words[:2] == ["python", "-m"]:
        return words[2]
    if words[0].endswith("/ruff"):
        return f"{words[0]} {words[1]}"
    return words[0]


BLOCKS = readme_blocks(README.read_text())


def _in_root(text: str, root: str) -> str:
    return text.replace("/tmp/", f"{root}/")


def _environment(root: str) -> dict[str, str]:
    venv = pathlib.Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env.update(
        PATH=f"{venv}{os.pathsep}{env.get('PATH', '')}",
        HPM_SKIP_INSTALL="1",
        HPM_VENV=str(venv.parent),
        PYTHONWARNINGS="ignore",
        HPM_PROGRESS="off",
    )
    # The programs import the hpm_jax the tests import (a worktree, an editable install).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _run_command(words: list[str], root: str, env: dict[str, str]) -> dict:
    name = program(words)
    words = [*words, *TINY.get(name, [])]
    env = {**env, **ENVIRONMENTS.get(name, {})}
    if name in WORKDIRS:
        env["WORKDIR"] = f"{root}/{WORKDIRS[name]}"
    if words[0] == "python":
        words[0] = sys.executable
    start = time.perf_counter()
    result = subprocess.run(
        ["bash", "-c", shlex.join(words)], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    return {
        "command": shlex.join(words),
        "returncode": result.returncode,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "seconds": time.perf_counter() - start,
    }


_PYTHON_RUNNER = textwrap.dedent(
    """
    import json, sys, time, traceback
    blocks = json.load(open(sys.argv[1]))
    results = {}
    for block in blocks:
        start = time.perf_counter()
        try:
            exec(compile(block["code"], f"README.md:{block['line']}", "exec"), {})
            results[block["id"]] = {"error": None}
        except Exception as error:
            results[block["id"]] = {"error": f"{type(error).__name__}: {error}",
                                    "message": str(error), "traceback": traceback.format_exc()}
        results[block["id"]]["seconds"] = time.perf_counter() - start
    json.dump(results, open(sys.argv[2], "w"))
    """
)


def _run_python(blocks: list[Block], root: str, env: dict[str, str]) -> dict:
    cwd = pathlib.Path(root, "cwd")
    cwd.mkdir(exist_ok=True)
    spec = [{"id": b.id, "line": b.line, "code": _in_root(b.code, root)} for b in blocks]
    (cwd / "blocks.json").write_text(json.dumps(spec))
    result = subprocess.run(
        [sys.executable, "-c", _PYTHON_RUNNER, "blocks.json", "results.json"], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((cwd / "results.json").read_text())


def _download_hosts_reachable() -> bool:
    from hpm_jax.interop.zoo import download

    return download.reachable("drive.usercontent.google.com") or download.reachable(
        "www.cs.toronto.edu"
    )


pytestmark = [
    pytest.mark.slow,  # runs README's blocks, the tiny demo included
    pytest.mark.skipif(
        not offline.fashion_mnist_files_present(),
        reason="needs apt-get install dataset-fashion-mnist",
    ),
]


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """Every executable block's results, by block id: the first block (the demo, whose model
    later blocks use) first; then the Python blocks in one interpreter beside the remaining
    commands, in README order."""
    root = str(tmp_path_factory.mktemp("readme"))
    env = _environment(root)
    offline_ok = not _download_hosts_reachable()
    executable = [b for b in BLOCKS if b.kind == "run" or (b.kind == "offline" and offline_ok)]
    first, rest = executable[0], executable[1:]
    assert first.lang == "bash", "the first block runs the demo that later blocks use"
    done: dict[str, dict] = {}  # a command the README gives twice (launch/test.sh) runs once

    def bash_results(block: Block) -> list[dict]:
        out = []
        for words in commands(_in_root(block.code, root)):
            key = shlex.join(words)
            if key not in done:
                done[key] = _run_command(words, root, env)
            out.append(done[key])
        return out

    results = {first.id: bash_results(first)}

    def bash_blocks():
        return {block.id: bash_results(block) for block in rest if block.lang == "bash"}

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        python = pool.submit(_run_python, [b for b in rest if b.lang == "python"], root, env)
        bash = pool.submit(bash_blocks)
        results.update(bash.result())
        results.update(python.result())
    return {"results": results, "offline_ok": offline_ok, "root": root, "env": env}


def test_every_block_has_a_marker():
    assert len(BLOCKS) > 15  # the parser found the README's blocks
    unmarked = [b.line for b in BLOCKS if b.kind not in KINDS]
    assert not unmarked, f"README.md blocks at lines {unmarked} need <!-- readme-test: KIND -->"
    for block in BLOCKS:
        assert block.lang in ("bash", "python", "text", "bibtex"), block.id
        assert (block.kind == "offline") == bool(block.argument), block.id
        if block.kind in ("run", "offline"):
            assert block.lang in ("bash", "python"), block.id


def _check_run(block: Block, result) -> None:
    if block.lang == "python":
        assert result["error"] is None, result["traceback"][-4000:]
        return
    for r in result:
        assert r["returncode"] == 0, f"{r['command']}\n{r['stderr'][-4000:]}"


def _check_offline(block: Block, result) -> None:
    if block.lang == "python":
        assert result["error"] is not None, "ran without the network, data or file it needs"
        assert "\n" not in result["message"].strip(), result["message"]
        assert re.search(block.argument, result["message"]), result["traceback"][-3000:]
        assert result["seconds"] < OFFLINE_SECONDS
        return
    for r in result:
        lines = [line for line in r["stderr"].splitlines() if line.strip()]
        assert r["returncode"] == 2, f"{r['command']}\n{r['stderr'][-3000:]}"
        assert "Traceback" not in r["stderr"], r["stderr"][-3000:]
        assert re.match(r"^[\w. -]+: error: ", lines[-1]), lines[-1]
        assert re.search(block.argument, lines[-1]), lines[-1]
        assert r["seconds"] < OFFLINE_SECONDS, r["seconds"]


def _check_install(block: Block) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    env_script = (REPO / "launch" / "_env.sh").read_text()
    for words in commands(block.code):
        assert words[:2] == ["pip", "install"], words
        for word in words[2:]:
            if word.startswith("."):  # -e ".[a,b]"
                named = re.fullmatch(r"\.(?:\[([\w,]+)\])?", word).group(1) or ""
                assert set(filter(None, named.split(","))) <= extras, (word, sorted(extras))
            elif "==" in word:  # a pin: the one launch/_env.sh installs
                assert f'"{word}"' in env_script, (word, "not pinned so in launch/_env.sh")


_FIGURE = re.compile(r"\d+\.\d%\*?|n/a")


def _table_shape(lines: list[str]) -> list:
    """What a demo table must keep: the header, each row's label and which cells are n/a or
    starred, the footnote, and the settings line up to its eps."""
    start = next(i for i, line in enumerate(lines) if "clean  AutoAttack" in line)
    shape: list = [lines[start]]
    for line in lines[start + 1 :]:
        cells = _FIGURE.findall(line)
        if len(cells) == 3:
            shape.append((line.split()[0], [c if c == "n/a" else c.endswith("*") for c in cells]))
        elif line.startswith("* "):
            shape.append(line)
        elif line.startswith("n="):
            shape.append(re.sub(r"\d+", "#", line[: line.index("eps=")]))
            break
    return shape


def _check_output(block: Block, demo_stdout: str) -> None:
    shown = block.code.splitlines()
    printed = demo_stdout.splitlines()
    assert _table_shape(shown) == _table_shape(printed), demo_stdout[-3000:]
    assert shown[-1].startswith("demo time: ") and any(
        line.startswith("demo time: ") for line in printed
    )


def _check_citation(block: Block) -> None:
    cff = " ".join((REPO / "CITATION.cff").read_text().split())
    entries = re.findall(r"@\w+\{[^@]+", block.code)
    assert len(entries) == 3, block.code
    for entry in entries:
        title = re.search(r"title\s*=\s*\{(.+?)\},\s*\n\s*\w+\s*=", entry, re.S).group(1)
        year = re.search(r"year\s*=\s*\{(\d{4})\}", entry).group(1)
        assert " ".join(title.split()) in cff, title
        assert f"year: {year}" in cff, year


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block(block, request):
    if block.kind == "install":
        _check_install(block)
    elif block.kind == "citation":
        _check_citation(block)
    else:
        run = request.getfixturevalue("readme_run")
        if block.kind == "output":
            first = next(b for b in BLOCKS if b.kind == "run")
            _check_output(block, run["results"][first.id][0]["stdout"])
        elif block.kind == "offline" and not run["offline_ok"]:
            pytest.skip("the download hosts are reachable: it would download")
        else:
            check = _check_run if block.kind == "run" else _check_offline
            check(block, run["results"][block.id])


def test_the_demo_block_runs_every_stage_prints_the_table_and_resumes(readme_run):
    """The first block's `launch/demo.sh`: the four stages, the table (rows FC, l2-EMA, HPM;
    MSA for HPM only; n and the budgets stated), the summary, report and plots; started
    again in the same workdir it skips every stage and prints the same table."""
    first = next(b for b in BLOCKS if b.kind == "run")
    demo = readme_run["results"][first.id][0]
    assert demo["returncode"] == 0, demo["stderr"][-3000:]
    text = demo["stdout"]
    for stage in ("1/4: adversarial training", "2/4: HPM fine-tuning", "3/4: sensitivity",
                  "4/4: AutoAttack"):  # fmt: skip
        assert stage in text
    table = text[text.index("clean  AutoAttack") :]
    fc_line = next(line for line in table.splitlines() if line.startswith("FC"))
    assert fc_line.rstrip().endswith("n/a")
    assert "n=16" in table and "apgd-ce: n_iter=2" in table
    workdir = pathlib.Path(readme_run["root"], WORKDIRS["launch/demo.sh"])
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["table"]["hpm"]["msa"] is not None and summary["table"]["fc"]["msa"] is None
    assert summary["train"]["at"]["head"] == "fc" and summary["train"]["hpm"]["head"] == "hpm"
    assert os.path.isfile(summary["report"]) and os.path.isfile(summary["summary_md"])
    names = {os.path.basename(p) for p in summary["plots"]}
    assert {"robustness.png", "histograms.png", "perturbations.png"} <= names
    analysis = json.loads((workdir / "analysis" / "summary.json").read_text())
    assert set(analysis["heads"]) == {"fc", "l2", "hpm"}

    again = _run_command(commands(first.code)[0], readme_run["root"], readme_run["env"])
    assert again["returncode"] == 0, again["stderr"][-3000:]
    assert again["stdout"].count("complete; skipped") == 4
    rerun = json.loads((workdir / "summary.json").read_text())
    assert rerun["table"] == summary["table"]
    assert _table_shape(again["stdout"].splitlines()) == _table_shape(text.splitlines())
