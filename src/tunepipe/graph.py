"""The stage graph (networkx): cycles with their full path, topological order, selection, rendering."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from tunepipe.errors import Position, Problem
from tunepipe.spec.model import InputRef, StageSpec

if TYPE_CHECKING:
    import networkx as nx


def build(stages: Mapping[str, StageSpec]) -> nx.MultiDiGraph:
    """One node per stage; one edge per input reference ``upstream -> downstream``.

    Edges carry the input name and the reference, so a cycle can be explained link by link.
    """
    import networkx as nx

    g = nx.MultiDiGraph()
    for name, spec in stages.items():
        g.add_node(name, uses=spec.uses)
    for name, spec in stages.items():
        for input_name, refs in spec.inputs.items():
            for ref in refs:
                if ref.kind == "stage" and ref.stage in stages:
                    g.add_edge(ref.stage, name, input=input_name, ref=ref)
    return g


def cycle_problems(g: nx.MultiDiGraph, excerpt: Callable[[Position], tuple[str, ...]] | None = None) -> list[Problem]:
    """One problem per cycle (one per strongly connected knot), naming every link."""
    import networkx as nx

    problems: list[Problem] = []
    for component in nx.strongly_connected_components(g):
        sub = g.subgraph(component)
        if len(component) == 1:
            (node,) = component
            if not sub.has_edge(node, node):
                continue
        cycle = nx.find_cycle(sub, orientation="original")
        links: list[tuple[str, str, InputRef, str]] = []
        for up, down, k, _ in cycle:
            data = g.edges[up, down, k]
            links.append((up, down, data["ref"], data["input"]))
        first_ref = links[-1][2]
        if len(links) == 1:
            up, _, ref, inp = links[0]
            msg = f"stage '{up}' reads its own output '{ref.output}' (input '{inp}'): a stage cannot depend on itself"
            hint = "read the data from an earlier stage or a file instead"
        else:
            path = " -> ".join([links[0][0]] + [down for _, down, _, _ in links])
            detail = "; ".join(f"'{down}' reads {ref.text} via input '{inp}' (line {ref.position.line})"
                               for _, down, ref, inp in links)
            msg = f"the stages form a cycle: {path} ({detail})"
            hint = "break the cycle: one of these inputs must come from another stage or a file"
        problems.append(Problem(first_ref.position, msg, hint, excerpt(first_ref.position) if excerpt else ()))
    return problems


def topological_order(g: nx.MultiDiGraph, spec_order: Iterable[str]) -> list[str]:
    """A stable topological order: ties are broken by the order stages appear in the file."""
    import networkx as nx

    rank = {name: i for i, name in enumerate(spec_order)}
    return list(nx.lexicographical_topological_sort(g, key=lambda n: rank[n]))


def select(deps: Mapping[str, list[str]], order: list[str], targets: Iterable[str]) -> list[str]:
    """The targets and everything they need, in ``order``.

    Works on the stored dependency lists, so a no-op rerun never imports networkx.
    """
    wanted: set[str] = set()
    todo = list(targets)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(deps[name])
    return [n for n in order if n in wanted]


def descendants(downstream: Mapping[str, list[str]], names: Iterable[str]) -> set[str]:
    """Every stage that reads, directly or not, from one of ``names`` (not the names themselves)."""
    seen: set[str] = set()
    todo = [d for n in names for d in downstream[n]]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(downstream[name])
    return seen


def _edges(stages: Mapping[str, StageSpec]) -> list[tuple[str, str, str]]:
    """(upstream, downstream, label) for each stage-to-stage link; file inputs as 'file:' nodes."""
    out = []
    for name, spec in stages.items():
        for input_name, refs in spec.inputs.items():
            for ref in refs:
                src = ref.stage if ref.kind == "stage" else f"file:{ref.text}"
                label = f"{ref.output}->{input_name}" if ref.kind == "stage" else input_name
                out.append((src, name, label))
    return out


def render_text(stages: Mapping[str, StageSpec]) -> str:
    """Stages in run order, each with what it reads."""
    lines = []
    width = max(len(n) for n in stages)
    for name, spec in stages.items():
        reads = [f"{ref.text} -> {inp}" for inp, refs in spec.inputs.items() for ref in refs]
        lines.append(f"{name:<{width}}  [{spec.uses}]" + (f"  <- {', '.join(reads)}" if reads else ""))
    return "\n".join(lines)


def _quote(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


def _groups(stages: Mapping[str, StageSpec]) -> dict[str, list[str]]:
    """Matrix stages as written -> their branches (in order)."""
    out: dict[str, list[str]] = {}
    for n, spec in stages.items():
        if spec.group:
            out.setdefault(spec.group, []).append(n)
    return out


def _matrix_label(stages: Mapping[str, StageSpec], group: str, members: list[str]) -> str:
    keys: dict[str, None] = {}
    for m in members:
        keys.update(dict.fromkeys(stages[m].matrix))
    return f"{group} (matrix: {', '.join(keys)}; {len(members)} branches)"


def render_dot(stages: Mapping[str, StageSpec], name: str) -> str:
    """Graphviz DOT; the branches of a matrix stage are drawn in a box (a cluster) named after it."""
    lines = [f"digraph {_quote(name)} {{", "  rankdir=LR;", "  node [shape=box];"]
    files = sorted({src for src, _, _ in _edges(stages) if src.startswith("file:")})
    for f in files:
        lines.append(f"  {_quote(f)} [shape=note, label={_quote(f[5:])}];")
    groups = _groups(stages)
    grouped = {m for members in groups.values() for m in members}

    def node(n: str, indent: str = "  ") -> str:
        label = n + "\\n(" + stages[n].uses + ")"
        return f"{indent}{_quote(n)} [label={_quote(label)}];"

    for i, (group, members) in enumerate(groups.items()):
        lines.append(f"  subgraph {_quote(f'cluster_{i}')} {{")
        lines.append(f"    label={_quote(_matrix_label(stages, group, members))};")
        lines.extend(node(m, "    ") for m in members)
        lines.append("  }")
    for n in stages:
        if n not in grouped:
            lines.append(node(n))
    for src, dst, label in _edges(stages):
        lines.append(f"  {_quote(src)} -> {_quote(dst)} [label={_quote(label)}];")
    lines.append("}")
    return "\n".join(lines)


def render_mermaid(stages: Mapping[str, StageSpec]) -> str:
    """A Mermaid flowchart; the branches of a matrix stage are drawn in a subgraph named after it."""
    ids: dict[str, str] = {}

    def node_id(n: str) -> str:
        return ids.setdefault(n, f"n{len(ids)}")

    lines = ["flowchart LR"]
    groups = _groups(stages)
    grouped = {m for members in groups.values() for m in members}
    for i, (group, members) in enumerate(groups.items()):
        lines.append(f'  subgraph g{i}["{_matrix_label(stages, group, members)}"]')
        lines.extend(f'    {node_id(m)}["{m} ({stages[m].uses})"]' for m in members)
        lines.append("  end")
    for n, spec in stages.items():
        if n not in grouped:
            lines.append(f'  {node_id(n)}["{n} ({spec.uses})"]')
    for src, _, _ in _edges(stages):
        if src.startswith("file:") and src not in ids:
            lines.append(f'  {node_id(src)}[/"{src[5:]}"/]')
    for src, dst, label in _edges(stages):
        lines.append(f'  {node_id(src)} -->|"{label}"| {node_id(dst)}')
    return "\n".join(lines)
