"""The package's import structure, read from the source with ``ast`` (nothing is imported).

Every ``import`` and ``from ... import`` in every module under ``src/deepdiag`` counts, at module level
and inside functions alike, except those under ``if TYPE_CHECKING:`` (annotations only) and those of
third-party packages. ``from . import x`` counts as an import of the module ``x`` when ``x`` is one.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "deepdiag"

# The layers, lowest first: a module may import modules of its own layer or of a lower one. An import of a
# higher layer points up. Building blocks (models, data, train, theory, ...) and helpers are layer 0.
LAYERS = [
    ("measure", ("measure", "tensorboard")),
    ("rules", ("rules",)),
    ("surgery", ("surgery", "fixes")),  # model edits and the fixes they perform (use measure's layer discovery)
    ("ways in", ("checkup", "monitor", "runreport")),  # runreport: a Monitor's run saved and drawn
    ("runs", ("runs", "probes")),  # the run nouns, and the measurements taken on a trained run
    ("engines", ("engines",)),
    ("store", ("store",)),
    ("sweep", ("sweep",)),  # the driver: engines -> store
    ("repair", ("candidates", "repair")),  # ranked remedies, trained and verified (stores its trials)
    ("figures", ("figspec", "plots")),
    ("studies", ("study", "studies", "demo")),
    ("reports", ("results", "report")),  # read back and render what the studies and sweeps wrote
    ("public API", ("",)),  # deepdiag/__init__.py
    ("cli", ("cli",)),
    ("integrations", ("integrations",)),  # framework callbacks around the Monitor (optional extras)
]
MAX_UPWARD = 2  # imports pointing up the layering that are allowed to remain


def modules() -> dict[str, Path]:
    """{dotted module name: file} for every module of the package."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported package module, line) for each import in the module `name` at `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not _type_checking_only(node, parents):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.append((target if target in known else base, node.lineno))
        elif isinstance(node, ast.Import) and not _type_checking_only(node, parents):
            found += [(alias.name, node.lineno) for alias in node.names]
    return [(t, line) for t, line in found if t in known and t != name]


def graph() -> dict[str, dict[str, int]]:
    """{module: {imported module: first line}} over the package's own modules."""
    mods = modules()
    known = set(mods)
    g = {}
    for name, path in mods.items():
        g[name] = {}
        for target, line in imports(name, path, known):
            g[name].setdefault(target, line)
    return g


def find_cycle(g: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    colour, stack = dict.fromkeys(g, 0), []

    def visit(node):
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(g[node]):
            if colour[nxt] == 1:
                return stack[stack.index(nxt):] + [nxt]
            if colour[nxt] == 0 and (cycle := visit(nxt)):
                return cycle
        colour[node] = 2
        stack.pop()
        return None

    for start in sorted(g):
        if colour[start] == 0 and (cycle := visit(start)):
            return cycle
    return None


def layer(module: str) -> int:
    """Index of the module's layer (0: building blocks and helpers, below every listed layer)."""
    first = (module.split(".")[1:] or [""])[0]
    for i, (_, names) in enumerate(LAYERS, start=1):
        if first in names:
            return i
    return 0


def upward(g: dict[str, dict[str, int]]) -> list[str]:
    return [f"{a}:{line} imports {b}" for a, targets in g.items() for b, line in targets.items()
            if layer(b) > layer(a)]


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    g = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {}}
    assert find_cycle(g) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_the_graph_sees_function_level_and_relative_imports():
    g = graph()
    assert "deepdiag.runs" in g["deepdiag.engines.local"]
    assert "deepdiag.engines.base" in g["deepdiag.engines.local"]
    assert "deepdiag.study" in g["deepdiag.cli"]  # imported inside the commands
    assert "deepdiag.plots" in g["deepdiag.studies.depth"]  # from .. import plots: the module


def test_few_imports_point_up_the_layers():
    up = upward(graph())
    assert len(up) <= MAX_UPWARD, "imports pointing up the layering:\n" + "\n".join(up)


def test_import_deepdiag_is_light():
    """``import deepdiag`` selects no matplotlib backend and loads neither pyplot, pandas, scipy nor plotly:
    they load when a figure, a table or a theory function is asked for."""
    heavy = ["matplotlib", "matplotlib.pyplot", "pandas", "scipy", "plotly", "sklearn"]
    code = (f"import sys, deepdiag; print(','.join(m for m in {heavy!r} if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "", f"import deepdiag loaded {out.stdout.strip()}"
    code = "import deepdiag as dd, sys; dd.plots; print('matplotlib.pyplot' in sys.modules, dd.sweep.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False", "deepdiag.sweep"]  # lazy attributes still resolve


def test_figures_leave_the_users_backend_alone(tmp_path):
    """Writing a study figure neither switches the backend the user chose nor needs pyplot."""
    code = ("import matplotlib; matplotlib.use('svg'); import deepdiag as dd, sys; "
            "fig, (ax,) = dd.plots.figure(); dd.plots.measured(ax, [1, 2], [3, 4]); "
            f"dd.plots.save(fig, {str(tmp_path)!r}, 'f'); "
            "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["svg", "False"]
    assert (tmp_path / "f.png").stat().st_size > 0 and (tmp_path / "f.json").exists()


# the import name of each distribution whose import name differs from it
IMPORT_NAMES = {"scikit-learn": "sklearn", "dask[distributed]": "distributed"}
OPTIONAL = {"pyarrow"}  # imported only when installed (results.write_tables: Parquet files)


def test_every_imported_package_is_declared():
    """Each third-party package the source imports is a dependency or an optional extra of pyproject.toml."""
    import re
    import tomllib

    project = tomllib.loads((SRC.parent / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [s for extra in project["optional-dependencies"].values() for s in extra]
    declared = {IMPORT_NAMES.get(n, n) for n in (re.match(r"[A-Za-z0-9_.\-\[\]]+", s)[0] for s in specs)}
    declared = {re.sub(r"\[.*\]", "", n) for n in declared} | OPTIONAL | {PACKAGE}
    imported = set()
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    missing = sorted(m for m in imported - declared if m not in sys.stdlib_module_names)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
