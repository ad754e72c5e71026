"""The shape of the code, checked: what docs/ARCHITECTURE.md declares about rooms, cycles
and module sizes (the layers themselves are import-linter's contracts in pyproject.toml,
run by `make lint`)."""

from __future__ import annotations

import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 500


def _cycles(graph, package: str) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), lazy imports
    inside functions included."""
    modules = sorted(m for m in graph.modules if m.split(".")[0] == package)
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w.split(".")[0] != package:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for m in modules:
            if m not in index:
                visit(m)
    finally:
        sys.setrecursionlimit(limit)
    return found


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("tagtrain", "pipelines", "manifests")


@pytest.mark.parametrize("package", ["tagtrain", "pipelines", "manifests"])
def test_no_import_cycles(graph, package):
    assert _cycles(graph, package) == []


def test_the_cycle_check_finds_a_cycle():
    """The control: two modules that import each other are one component."""

    class Graph:
        modules = {"tagtrain.a", "tagtrain.b", "tagtrain.c"}

        @staticmethod
        def find_modules_directly_imported_by(m):
            return {"tagtrain.a": {"tagtrain.b"}, "tagtrain.b": {"tagtrain.a"}}.get(m, set())

    assert _cycles(Graph, "tagtrain") == [["tagtrain.a", "tagtrain.b"]]


def test_tagtrain_top_level_holds_only_rooms():
    top = ROOT / "tagtrain"
    modules = sorted(p.name for p in top.glob("*.py"))
    assert modules == ["__init__.py", "__main__.py"]
    rooms = sorted(p.name for p in top.iterdir() if p.is_dir() and p.name != "__pycache__")
    for room in rooms:
        init = top / room / "__init__.py"
        assert init.is_file(), f"tagtrain/{room} is not a package"
        assert init.read_text().lstrip().startswith('"""'), f"tagtrain/{room}: no role line"


@pytest.mark.parametrize("folder", ["tagtrain", "pipelines", "manifests", "bench"])
def test_no_module_over_500_lines(folder):
    long = {
        str(p.relative_to(ROOT)): n
        for p in sorted((ROOT / folder).rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
