"""The package's import graph is a DAG and its layers point down (../shared/ARCHITECTURE.md, "Layers").

Every import counts, the ones inside functions too (they hide cycles, they do not remove them); only imports under
``if TYPE_CHECKING:`` are left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
#: Modules every layer may use: they import nothing of recarena.
BOTTOM = ("recarena.errors", "recarena.schema", "recarena.record", "recarena.paths", "recarena.version",
          "recarena.processes")
#: data/ knows no model, loss or metric.
DATA_MAY_NOT_IMPORT = ("recarena.models", "recarena.losses", "recarena.evaluation")
#: What reads finished runs and reports on them sits above what trains them.
READERS = ("recarena.inspection", "recarena.wandb_report", "recarena.report", "recarena.report_html",
           "recarena.significance", "recarena.benchmark", "recarena.commands")  # fmt: skip
ABOVE = {
    "recarena.build": ("recarena.run", "recarena.inference", *READERS),
    "recarena.run": READERS,
    "recarena.inference": ("recarena.run", *READERS),
}


def import_graph(src: Path, package: str = "recarena") -> dict[str, set[str]]:
    """module -> the modules of ``package`` it imports (``from a import b`` counts ``a.b`` when that is a module)."""
    files = {_module_name(path, src): path for path in (src / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = {id(node) for block in ast.walk(tree) if _is_type_checking(block) for node in ast.walk(block)}
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(tree):
            if id(node) not in skipped:
                targets |= {_owner(t, files) for t in _imported(node, here) if t.split(".")[0] == package}
        graph[name] = targets - {name, ""}
    return graph


def _module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported(node: ast.AST, here: str) -> list[str]:
    """Dotted names an import statement reads: ``import a.b`` -> a.b; ``from a import b, c`` -> a.b, a.c."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: `from . import x`, `from ..a import b`
        anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
    return [f"{base}.{alias.name}" for alias in node.names]


def _owner(name: str, modules: dict[str, Path]) -> str:
    """The longest module prefix of a dotted name (``recarena.run.train`` -> ``recarena.run``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def _within(module: str, packages: tuple[str, ...]) -> bool:
    """Whether ``module`` is one of ``packages`` or inside one (``recarena.run`` holds not ``recarena.rundir``)."""
    return any(module == p or module.startswith(p + ".") for p in packages)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle, as the path around it (``[a, b, a]``), found by depth-first search."""
    found, state, stack = [], dict.fromkeys(graph, 0), []  # state 0: new, 1: on the stack, 2: done

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                found.append([*stack[stack.index(target):], target])
            elif state.get(target) == 0:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if state[module] == 0:
            visit(module)
    return found


def test_the_package_has_no_import_cycle() -> None:
    found = cycles(import_graph(SRC))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_data_imports_no_model_loss_or_metric() -> None:
    graph = import_graph(SRC)
    wrong = {f"{m} -> {t}" for m, targets in graph.items() if _within(m, ("recarena.data",))
             for t in targets if _within(t, DATA_MAY_NOT_IMPORT)}  # fmt: skip
    assert not wrong, sorted(wrong)


@pytest.mark.parametrize("module", sorted(ABOVE))
def test_building_and_training_import_nothing_above_them(module: str) -> None:
    above = {target for target in import_graph(SRC)[module] if _within(target, ABOVE[module])}
    assert not above, f"{module} imports {sorted(above)}"


@pytest.mark.parametrize("module", BOTTOM)
def test_the_bottom_layer_imports_nothing_of_recarena(module: str) -> None:
    assert import_graph(SRC)[module] == set()


def test_the_checks_see_function_level_cycles_and_skip_type_checking(tmp_path: Path) -> None:
    """The walker itself: a cycle through a function-level and a relative import is found; a TYPE_CHECKING
    import is not an edge."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("from .. import a\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"} and graph["pkg.c"] == set()
    assert cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.a"]]
