"""tunepipe's modules import one another without circles, and the layers of the model side import
only downward: the stages over evaluation over the backends over the engines (hf, openai_ft) over
the contracts (the model reference, replies, the plugin contract). Imports are read statically,
wherever they are in a module (also inside functions, which is where heavy ones go)."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

SRC = Path(__file__).parents[1] / "src"

# package -> the tunepipe packages it must never import (they sit above it)
ABOVE = {
    "tunepipe.modelref": ("tunepipe.hf", "tunepipe.openai_ft", "tunepipe.backends", "tunepipe.evaluation",
                          "tunepipe.stages"),
    "tunepipe.exports": ("tunepipe.hf", "tunepipe.openai_ft", "tunepipe.backends", "tunepipe.evaluation",
                         "tunepipe.stages"),
    "tunepipe.replies": ("tunepipe.hf", "tunepipe.openai_ft", "tunepipe.backends", "tunepipe.evaluation",
                         "tunepipe.stages"),
    "tunepipe.hf": ("tunepipe.openai_ft", "tunepipe.backends", "tunepipe.evaluation", "tunepipe.stages"),
    "tunepipe.openai_ft": ("tunepipe.hf", "tunepipe.backends", "tunepipe.evaluation", "tunepipe.stages"),
    "tunepipe.backends": ("tunepipe.evaluation", "tunepipe.stages"),
    "tunepipe.evaluation": ("tunepipe.stages",),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "tunepipe").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _graph() -> nx.DiGraph:
    modules = _modules()
    g = nx.DiGraph()
    for name, path in modules.items():
        g.add_node(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    g.add_edge(name, target)
    return g


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    return _graph()


def test_no_module_imports_itself_round_a_circle(graph: nx.DiGraph) -> None:
    circles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert circles == []


@pytest.mark.parametrize("lower", sorted(ABOVE))
def test_nothing_below_imports_from_above(graph: nx.DiGraph, lower: str) -> None:
    wrong = sorted(f"{a} -> {b}" for a, b in graph.edges
                   if (a == lower or a.startswith(lower + ".")) and b.startswith(ABOVE[lower]))
    assert wrong == []
