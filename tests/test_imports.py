"""The shape of the code, enforced: no import cycle among hpm_jax's modules, no library module
importing the programs (`hpm_jax.cli`), and README's layers ("## Layout": each layer imports
only itself and the layers above it). Every module is parsed with `ast`, imports inside
functions included; nothing is imported.

An import of package P counts as importing P/__init__.py; `from hpm_jax.a import b`, with b a
submodule, counts as importing hpm_jax.a.b (with b a name defined in a/__init__.py, as
importing hpm_jax.a). The parent packages Python runs implicitly before a module are not
counted: they have started before it, so they close no cycle.
"""

from __future__ import annotations

import ast
import pathlib
import shutil

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "hpm_jax"

# README's layers, top to bottom: a module may import its own layer and those listed before
# it. A name is a module or a package (all of it).
LAYERS = [
    ("runtime", ["hpm_jax.runtime"]),
    ("configs", ["hpm_jax.config_lib", "hpm_jax.config_sections"]),
    ("models", ["hpm_jax", "hpm_jax.ops", "hpm_jax.models"]),
    ("data", ["hpm_jax.data"]),
    ("attacks", ["hpm_jax.attacks"]),
    ("interop", ["hpm_jax.interop"]),
    ("training", ["hpm_jax.training"]),
    ("evaluation", ["hpm_jax.evaluation"]),
    ("analysis", ["hpm_jax.analysis"]),
    ("experiments", ["hpm_jax.experiments"]),
    ("programs", ["hpm_jax.cli"]),
]
# `python -m hpm_jax.X`: a few lines that call the program; the only modules besides cli/
# that may import it.
SHIMS = {"hpm_jax.train", "hpm_jax.evaluate", "hpm_jax.demo", "hpm_jax.study",
         "hpm_jax.convert", "hpm_jax.analysis.__main__"}  # fmt: skip


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports(path: pathlib.Path, name: str, known: set[str], root_name: str) -> set[str]:
    """The modules of `known` that the module `name` (file `path`) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from P import b`: the submodule P.b where b is one, else P (its __init__).
            targets = [
                f"{target}.{a.name}" if f"{target}.{a.name}" in known else target
                for a in node.names
            ]
        else:
            continue
        for target in targets:
            if target == root_name or target.startswith(root_name + "."):
                if target in known:
                    out.add(target)
    out.discard(name)
    return out


def graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    found = modules(root)
    return {name: imports(path, name, set(found), root.name) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, or of one importing
    itself (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges.get(node, ()):
                    out.append(sorted(component))
    return out


def layer_of(name: str) -> int:
    """The index in LAYERS of the longest layer entry that `name` is or is inside."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                # "hpm_jax" (the package's __init__) holds only itself.
                if prefix == "hpm_jax" and name != "hpm_jax":
                    continue
                best, best_len = i, len(prefix)
    if best is None:
        raise AssertionError(f"{name} is in no layer of README's table (tests/test_imports.py)")
    return best


def test_the_walk_sees_every_module_and_the_known_edges():
    edges = graph()
    assert len(edges) > 100
    assert "hpm_jax.models" in edges["hpm_jax.models.export"]
    assert "hpm_jax.evaluation.robustbench" in edges["hpm_jax.evaluation.inputs"]  # in a function
    assert "hpm_jax.runtime.integrity" in edges["hpm_jax.attacks.resume"]  # from P import module


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, f"import cycles among hpm_jax modules: {found}"


def cli_importers(edges: dict[str, set[str]]) -> dict[str, list[str]]:
    """Library modules (not cli/, not a shim) that import hpm_jax.cli, and what of it."""
    out = {}
    for name, targets in edges.items():
        if name == "hpm_jax.cli" or name.startswith("hpm_jax.cli.") or name in SHIMS:
            continue
        bad = sorted(t for t in targets if t == "hpm_jax.cli" or t.startswith("hpm_jax.cli."))
        if bad:
            out[name] = bad
    return out


def layer_breaches(edges: dict[str, set[str]]) -> list[str]:
    """Imports of a layer below the importer's (README's table, LAYERS here)."""
    wrong = []
    for name, targets in edges.items():
        if name in SHIMS:
            continue
        for target in targets:
            if layer_of(target) > layer_of(name):
                wrong.append(
                    f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} "
                    f"({LAYERS[layer_of(target)][0]})"
                )
    return sorted(wrong)


def test_only_programs_import_the_cli():
    offenders = cli_importers(graph())
    assert not offenders, f"library modules importing hpm_jax.cli: {offenders}"


def test_shims_hold_no_library_code():
    for name in SHIMS:
        path = modules()[name]
        tree = ast.parse(path.read_text())
        body = [n for n in tree.body if not isinstance(n, (ast.Expr, ast.If))]
        assert not body, f"{path}: a python -m shim holds only its docstring and __main__ block"


def test_each_layer_imports_only_itself_and_the_layers_above():
    wrong = layer_breaches(graph())
    assert not wrong, "imports against README's layers:\n" + "\n".join(wrong)


def test_readme_names_the_layers_of_this_test():
    readme = (ROOT.parent / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    layout = layout[: layout.index("\n## ", 1)]
    rows = [line.split("|")[1].strip() for line in layout.splitlines() if line.startswith("| ")]
    assert rows[1:] == [layer for layer, _ in LAYERS], rows


@pytest.mark.parametrize("kind", ["cycle", "cli", "layer"])
def test_the_checks_catch_what_they_forbid(tmp_path, kind):
    """A copy of the package with one bad import added is caught (the checks can fail)."""
    copy = tmp_path / "hpm_jax"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    victim, line = {
        # models imports evaluation, which imports models: a cycle (and a layer broken).
        "cycle": ("models/export.py", "from hpm_jax.evaluation import evaluate\n"),
        "cli": ("evaluation/reports.py", "def f():\n    from hpm_jax import cli\n"),
        "layer": ("attacks/common.py", "def f():\n    from hpm_jax.training import steps\n"),
    }[kind]
    with open(copy / victim, "a") as f:
        f.write(line)
    edges = graph(copy)
    if kind == "cycle":
        assert any("hpm_jax.models.export" in c for c in cycles(edges))
    elif kind == "cli":
        assert cli_importers(edges) == {"hpm_jax.evaluation.reports": ["hpm_jax.cli"]}
    else:
        assert layer_breaches(edges) == [
            "hpm_jax.attacks.common (attacks) imports hpm_jax.training.steps (training)"
        ]


# ---------------------------------------------------------------- the tests' own imports

TESTS = pathlib.Path(__file__).resolve().parent


def imports_of_test_modules(directory: pathlib.Path = TESTS) -> set[tuple[str, str]]:
    """(importer, test module) for every import of a `test_*` module by a module of
    `directory`: `import X`, `from X import ...`, `from . import X`, inside functions too."""
    out = set()
    for path in sorted(directory.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module] if node.module else [a.name for a in node.names]
                if node.module:  # `from tests import test_x`, `from .pkg import test_x`
                    names += [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                if name.rpartition(".")[2].startswith("test_"):
                    out.add((path.stem, name.rpartition(".")[2]))
    return out


def test_no_test_module_imports_another():
    """Shared toy models and helpers live in support modules (tests/toys.py,
    tests/train_support.py, tests/evaluation_support.py, ...), never in a test module another
    one imports: importing a test module runs its module-level setup and collects its tests
    twice under other names."""
    found = sorted(imports_of_test_modules())
    assert not found, (
        "test modules imported by other modules (move what they share into a support module "
        f"such as tests/toys.py): {[f'{a} imports {b}' for a, b in found]}"
    )


@pytest.mark.parametrize(
    "line",
    [
        "from test_fab import MLP\n",
        "import test_square as sq\n",
        "def f():\n    import test_apgd\n",
        "from . import test_apgd\n",
    ],
)
def test_the_test_import_check_catches_one(tmp_path, line):
    (tmp_path / "test_a.py").write_text("x = 1\n")
    (tmp_path / "helper.py").write_text("import numpy\n" + line)
    found = imports_of_test_modules(tmp_path)
    assert len(found) == 1 and next(iter(found))[0] == "helper", found
