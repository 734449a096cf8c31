"""The stage graph: order, selection, descendants, cycles and the three renderings, on real specs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tunepipe import graph
from tunepipe.errors import Position, SpecError
from tunepipe.registry import Registry
from tunepipe.spec import InputRef, Pipeline, StageSpec, load_pipeline

E = "tp_testplugins:Emit"
L = "tp_testplugins:Length"

# A diamond prep -> {left, right} -> join, plus an independent stage; written out of order.
DIAMOND = f"""
name: diamond
stages:
  join:
    uses: {E}
    inputs: {{src: [left.out, right.out]}}
  lone:
    uses: {E}
  right:
    uses: {L}
    inputs: {{src: prep.out}}
  left:
    uses: {E}
    inputs: {{src: prep.out}}
  prep:
    uses: {E}
    inputs: {{src: [data/a.txt, "data/*.csv"]}}
"""


def load(root: Path, text: str) -> Pipeline:
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "a.txt").write_text("a")
    (root / "data" / "b.csv").write_text("b")
    spec = root / "p.yaml"
    spec.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_pipeline(spec, Registry(search_paths=[root]), display="p.yaml")


@pytest.fixture
def diamond(tmp_path: Path) -> Pipeline:
    return load(tmp_path, DIAMOND)


def test_stages_are_in_topological_order_ties_broken_by_file_order(diamond: Pipeline) -> None:
    # lone and prep are ready first (lone is written first); right is written before left.
    assert diamond.order == ["lone", "prep", "right", "left", "join"]
    assert diamond.deps() == {"lone": [], "prep": [], "right": ["prep"], "left": ["prep"],
                              "join": ["left", "right"]}


def test_build_has_one_edge_per_stage_reference(tmp_path: Path) -> None:
    p = load(tmp_path, f"""
    stages:
      a:
        uses: {E}
      b:
        uses: {E}
        inputs: {{src: [a.out, a.out, data/a.txt]}}
    """)
    g = graph.build(p.stages)
    assert set(g.nodes) == {"a", "b"} and g.nodes["b"]["uses"] == E
    edges = list(g.edges(keys=True, data=True))
    assert len(edges) == 2  # two references to a.out; the file is not a node
    assert all(u == "a" and v == "b" and d["input"] == "src" and d["ref"].text == "a.out" for u, v, _, d in edges)


def test_select_returns_targets_and_their_ancestors_in_order(diamond: Pipeline) -> None:
    deps, order = diamond.deps(), diamond.order
    assert graph.select(deps, order, ["left"]) == ["prep", "left"]
    assert graph.select(deps, order, ["join"]) == ["prep", "right", "left", "join"]
    assert graph.select(deps, order, ["join", "lone"]) == order
    assert graph.select(deps, order, ["left", "lone", "left"]) == ["lone", "prep", "left"]
    assert graph.select(deps, order, ["prep"]) == ["prep"]
    assert graph.select(deps, order, []) == []


def test_select_works_on_plain_dependency_lists() -> None:
    deps = {"x": [], "y": ["x"], "z": ["y"], "w": ["x", "z"]}
    assert graph.select(deps, ["x", "y", "z", "w"], ["w"]) == ["x", "y", "z", "w"]
    assert graph.select(deps, ["x", "y", "z", "w"], ["z"]) == ["x", "y", "z"]


def test_descendants(diamond: Pipeline) -> None:
    down = diamond.downstream()
    assert down == {"lone": [], "prep": ["right", "left"], "right": ["join"], "left": ["join"], "join": []}
    assert graph.descendants(down, ["prep"]) == {"left", "right", "join"}
    assert graph.descendants(down, ["left"]) == {"join"}
    assert graph.descendants(down, ["left", "right"]) == {"join"}
    assert graph.descendants(down, ["join"]) == set()
    assert graph.descendants(down, ["lone"]) == set()


def test_render_text(diamond: Pipeline) -> None:
    assert graph.render_text(diamond.stages).splitlines() == [
        f"lone   [{E}]",
        f"prep   [{E}]  <- data/a.txt -> src, data/*.csv -> src",
        f"right  [{L}]  <- prep.out -> src",
        f"left   [{E}]  <- prep.out -> src",
        f"join   [{E}]  <- left.out -> src, right.out -> src",
    ]


def test_render_dot(diamond: Pipeline) -> None:
    lines = graph.render_dot(diamond.stages, diamond.name).splitlines()
    assert lines[:3] == ['digraph "diamond" {', "  rankdir=LR;", "  node [shape=box];"]
    assert lines[-1] == "}"
    body = set(lines[3:-1])
    assert '  "file:data/*.csv" [shape=note, label="data/*.csv"];' in body
    assert '  "file:data/a.txt" [shape=note, label="data/a.txt"];' in body
    assert f'  "right" [label="right\\n({L})"];' in body
    edges = sorted(line for line in body if " -> " in line)
    assert edges == sorted([
        '  "file:data/a.txt" -> "prep" [label="src"];',
        '  "file:data/*.csv" -> "prep" [label="src"];',
        '  "prep" -> "right" [label="out->src"];',
        '  "prep" -> "left" [label="out->src"];',
        '  "left" -> "join" [label="out->src"];',
        '  "right" -> "join" [label="out->src"];',
    ])
    assert len(body) == 2 + 5 + 6  # two file notes, five stages, six edges


def test_render_dot_escapes_quotes_in_names() -> None:
    spec = StageSpec("s", E, {}, {"src": [InputRef("file", 'say "hi".txt', Position("p.yaml", 1, 1))]},
                     {"src": True}, ("out",), Position("p.yaml", 1, 1))
    out = graph.render_dot({"s": spec}, 'my "pipe"')
    assert out.startswith('digraph "my \\"pipe\\"" {')
    assert '  "file:say \\"hi\\".txt" [shape=note, label="say \\"hi\\".txt"];' in out.splitlines()


def test_render_mermaid(diamond: Pipeline) -> None:
    assert graph.render_mermaid(diamond.stages).splitlines() == [
        "flowchart LR",
        f'  n0["lone ({E})"]',
        f'  n1["prep ({E})"]',
        f'  n2["right ({L})"]',
        f'  n3["left ({E})"]',
        f'  n4["join ({E})"]',
        '  n5[/"data/a.txt"/]',
        '  n6[/"data/*.csv"/]',
        # one edge per input reference, in stage order
        '  n5 -->|"src"| n1',
        '  n6 -->|"src"| n1',
        '  n1 -->|"out->src"| n2',
        '  n1 -->|"out->src"| n3',
        '  n3 -->|"out->src"| n4',
        '  n2 -->|"out->src"| n4',
    ]


def _stage(name: str, *reads: str) -> StageSpec:
    refs = [InputRef("stage", r, Position("p.yaml", i + 1, 5), stage=r.split(".")[0], output="out")
            for i, r in enumerate(reads)]
    return StageSpec(name, E, {}, {"src": refs} if refs else {}, {"src": True}, ("out",), Position("p.yaml", 1, 1))


def test_cycle_problems_name_every_link() -> None:
    stages = {"a": _stage("a", "c.out"), "b": _stage("b", "a.out"), "c": _stage("c", "b.out"),
              "ok": _stage("ok", "a.out")}
    problems = graph.cycle_problems(graph.build(stages))
    assert len(problems) == 1
    msg = problems[0].message
    assert msg.startswith("the stages form a cycle: ")
    path = msg.split(": ", 1)[1].split(" (")[0].split(" -> ")
    assert len(path) == 4 and path[0] == path[-1] and set(path) == {"a", "b", "c"}
    assert "break the cycle" in problems[0].hint
    assert graph.cycle_problems(graph.build({"x": _stage("x"), "y": _stage("y", "x.out")})) == []


def test_self_loop_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as e:
        load(tmp_path, f"stages:\n  a:\n    uses: {E}\n    inputs: {{src: a.out}}\n")
    assert "stage 'a' reads its own output 'out' (input 'src')" in str(e.value)
