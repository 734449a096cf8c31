"""YAML with positions: 1-based line/column of keys and values, YAML 1.2 core scalars, anchors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tunepipe.errors import Position, SpecError
from tunepipe.spec.yamlpos import Document, load_file, load_text

NESTED = textwrap.dedent("""\
    top:
      inner:
        deep: 1
      items:
        - first
        - name: second
          size: 2
    flow: {a: [x, y], b: z}
    """)


def at(line: int, col: int) -> Position:
    return Position("s.yaml", line, col)


def test_data_of_nested_mappings_and_lists() -> None:
    doc = load_text(NESTED, "s.yaml")
    assert doc.data == {"top": {"inner": {"deep": 1}, "items": ["first", {"name": "second", "size": 2}]},
                        "flow": {"a": ["x", "y"], "b": "z"}}
    assert doc.source == "s.yaml" and doc.text == NESTED


def test_positions_of_keys() -> None:
    doc = load_text(NESTED, "s.yaml")
    assert doc.keys[("top",)] == at(1, 1)
    assert doc.keys[("top", "inner")] == at(2, 3)
    assert doc.keys[("top", "inner", "deep")] == at(3, 5)
    assert doc.keys[("top", "items")] == at(4, 3)
    assert doc.keys[("top", "items", 1, "name")] == at(6, 7)
    assert doc.keys[("top", "items", 1, "size")] == at(7, 7)
    assert doc.keys[("flow", "a")] == at(8, 8)
    assert doc.keys[("flow", "b")] == at(8, 19)
    assert ("top", "items", 0) not in doc.keys  # list items have no key


def test_positions_of_values() -> None:
    doc = load_text(NESTED, "s.yaml")
    assert doc.values[()] == at(1, 1)
    assert doc.values[("top", "inner", "deep")] == at(3, 11)
    assert doc.values[("top", "items")] == at(5, 5)  # a block list starts at its first dash
    assert doc.values[("top", "items", 0)] == at(5, 7)
    assert doc.values[("top", "items", 1)] == at(6, 7)
    assert doc.values[("top", "items", 1, "size")] == at(7, 13)
    assert doc.values[("flow",)] == at(8, 7)
    assert doc.values[("flow", "a", 1)] == at(8, 15)
    assert doc.values[("flow", "b")] == at(8, 22)


def test_position_lookup_prefers_the_node_then_falls_back_to_the_nearest_parent() -> None:
    doc = load_text(NESTED, "s.yaml")
    assert doc.position(("top", "inner", "deep")) == at(3, 11)
    assert doc.position(("top", "inner", "deep"), key=True) == at(3, 5)
    # a list item has no key: its value position is used
    assert doc.position(("top", "items", 0), key=True) == at(5, 7)
    # paths that do not exist (e.g. a default the user never wrote) fall back to the nearest parent
    assert doc.position(("top", "inner", "missing")) == doc.values[("top", "inner")] == at(3, 5)
    assert doc.position(("top", "items", 1, "nope", "deeper"), key=True) == doc.values[("top", "items", 1)]
    assert doc.position(("nowhere", "at", "all")) == at(1, 1)
    assert doc.position(()) == at(1, 1)


def test_position_of_an_empty_document_table_defaults_to_the_start() -> None:
    doc = Document(source="x.yaml", text="", data=None)
    assert doc.position(("a", "b")) == Position("x.yaml", 1, 1)


def test_problem_carries_the_position_and_an_excerpt_with_a_caret() -> None:
    doc = load_text(NESTED, "s.yaml")
    problem = doc.problem(("top", "items", 1, "size"), "too big", "make it smaller", key=True)
    assert problem.position == at(7, 7)
    assert problem.excerpt == ("    7 |       size: 2", "      |       ^")
    assert problem.render().splitlines()[0] == "s.yaml:7:7: error: too big"
    assert problem.render().splitlines()[-1] == "  hint: make it smaller"


SCALARS = textwrap.dedent("""\
    yes_: yes
    no_: no
    on_: on
    off_: off
    y_: y
    date: 2024-01-01
    time: 12:30:00
    octal: 0o17
    hex: 0x1f
    leading_zero: 08
    int: -42
    plus: +7
    underscore: 1_000
    float: 1.5
    exp: 1e3
    dot: .5
    true_: true
    True_: True
    false_: FALSE
    null_: null
    tilde: ~
    empty:
    quoted_int: "12"
    quoted_true: 'true'
    quoted_hex: "0x1f"
    """)


def test_yaml_1_2_core_scalars() -> None:
    d = load_text(SCALARS, "s.yaml").data
    for k in ("yes_", "no_", "on_", "off_", "y_"):
        assert d[k] == k.rstrip("_") and isinstance(d[k], str)  # YAML 1.1 booleans are strings
    assert d["date"] == "2024-01-01" and d["time"] == "12:30:00"  # no dates, no sexagesimal numbers
    assert d["octal"] == 15 and type(d["octal"]) is int
    assert d["hex"] == 31 and type(d["hex"]) is int
    assert d["leading_zero"] == 8 and d["int"] == -42 and d["plus"] == 7
    assert d["underscore"] == "1_000"
    assert d["float"] == 1.5 and d["exp"] == 1000.0 and type(d["exp"]) is float and d["dot"] == 0.5
    assert d["true_"] is True and d["True_"] is True and d["false_"] is False
    assert d["null_"] is None and d["tilde"] is None and d["empty"] is None
    assert d["quoted_int"] == "12" and d["quoted_true"] == "true" and d["quoted_hex"] == "0x1f"


@pytest.mark.parametrize("text", ["0o19", "0X1F", "0x", "0o", "1.2.3", "+.5e"])
def test_near_numbers_stay_strings(text: str) -> None:
    assert load_text(f"v: {text}\n", "s.yaml").data == {"v": text}


def test_anchors_and_aliases() -> None:
    doc = load_text(textwrap.dedent("""\
        base: &cfg
          lr: 0.1
          tags: [a, b]
        copy: *cfg
        word: &w hello
        words: [*w, *w]
        """), "s.yaml")
    assert doc.data == {"base": {"lr": 0.1, "tags": ["a", "b"]}, "copy": {"lr": 0.1, "tags": ["a", "b"]},
                        "word": "hello", "words": ["hello", "hello"]}
    assert doc.data["copy"] is not doc.data["base"]  # built separately: changing one leaves the other
    assert doc.keys[("copy",)] == at(4, 1)
    assert doc.keys[("copy", "lr")] == at(2, 3)  # an alias's inner keys are where the anchor wrote them


@pytest.mark.parametrize("text", ["a: &x [1, *x]\n", "a: &x {b: {c: *x}}\n"])
def test_a_recursive_alias_is_reported(text: str) -> None:
    with pytest.raises(SpecError) as e:
        load_text(text, "s.yaml")
    (problem,) = e.value.problems
    assert problem.message == "a YAML alias refers to itself"
    assert problem.position == at(1, 4)
    assert "recursive alias" in problem.hint


def test_an_undefined_alias_is_a_syntax_error_with_a_position() -> None:
    with pytest.raises(SpecError) as e:
        load_text("a: 1\nb: *nope\n", "s.yaml")
    (problem,) = e.value.problems
    assert "found undefined alias 'nope'" in problem.message and problem.position == at(2, 4)


def test_several_problems_are_collected() -> None:
    with pytest.raises(SpecError) as e:
        load_text("a: 1\na: 2\n3: x\nb: !!binary aGk=\n", "s.yaml")
    messages = [(p.position.line, p.message) for p in e.value.problems]
    assert messages == [(2, "duplicate key 'a' (first defined at line 1, column 1)"),
                        (3, "the key '3' is read as a int, not a string"),
                        (4, "the YAML tag 'tag:yaml.org,2002:binary' is not supported")]


def test_load_file_reads_utf8_with_a_bom_and_names_the_display_source(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_bytes(b"\xef\xbb\xbfname: caf\xc3\xa9\n")
    doc = load_file(f, display="pipelines/x.yaml")
    assert doc.data == {"name": "café"}
    assert doc.keys[("name",)] == Position("pipelines/x.yaml", 1, 1)
    with pytest.raises(SpecError, match="the pipeline file does not exist"):
        load_file(tmp_path / "missing.yaml")
