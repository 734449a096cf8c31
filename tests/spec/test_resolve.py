"""``${vars...}`` interpolation and ``-S/--set`` overrides, directly and through the CLI."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tunepipe.errors import Position, Problem
from tunepipe.spec.resolve import VarResolver, apply_overrides, parse_override
from tunepipe.spec.yamlpos import Document, load_text

E = "tp_testplugins:Emit"


def resolve(text: str) -> tuple[Any, list[Problem], Document]:
    """Resolve everything under ``stages`` of a YAML text; returns (data, problems, document)."""
    doc = load_text(textwrap.dedent(text), "p.yaml")
    r = VarResolver(doc, doc.data.get("vars") or {})
    out = r.resolve(doc.data["stages"], ("stages",))
    return out, r.problems, doc


def test_a_whole_value_reference_keeps_the_variable_type() -> None:
    out, problems, _ = resolve("""
    vars: {n: 3, lr: 0.001, on: true, none: null, tags: [a, b], cfg: {k: 1}, s: text}
    stages:
      a: {n: "${vars.n}", lr: "${vars.lr}", on: "${vars.on}", none: "${vars.none}",
          tags: "${vars.tags}", cfg: "${vars.cfg}", s: "${vars.s}", spaced: "${ vars.n }"}
    """)
    assert problems == []
    assert out == {"a": {"n": 3, "lr": 0.001, "on": True, "none": None, "tags": ["a", "b"], "cfg": {"k": 1},
                         "s": "text", "spaced": 3}}
    assert type(out["a"]["n"]) is int


def test_references_inside_strings_are_formatted_as_text() -> None:
    out, problems, _ = resolve("""
    vars: {n: 3, lr: 0.001, on: true, none: null, name: marv}
    stages:
      a:
        text: "n=${vars.n} lr=${vars.lr} on=${vars.on} none=${vars.none}"
        two: "${vars.name}-${vars.name}"
        list: ["x ${vars.name}", "${vars.n}"]
    """)
    assert problems == []
    assert out["a"]["text"] == "n=3 lr=0.001 on=true none=null"
    assert out["a"]["two"] == "marv-marv"
    assert out["a"]["list"] == ["x marv", 3]


def test_variables_may_use_other_variables_and_dotted_paths() -> None:
    out, problems, _ = resolve("""
    vars:
      root: data
      file: "${vars.root}/train.jsonl"
      again: "${vars.file}"
      cfg: {lr: 0.5, sizes: [8, 16], inner: {path: "${vars.root}/x"}}
    stages:
      a: {f: "${vars.again}", lr: "${vars.cfg.lr}", second: "${vars.cfg.sizes.1}", p: "${vars.cfg.inner.path}",
          cfg: "${vars.cfg}"}
    """)
    assert problems == []
    assert out["a"] == {"f": "data/train.jsonl", "lr": 0.5, "second": 16, "p": "data/x",
                        "cfg": {"lr": 0.5, "sizes": [8, 16], "inner": {"path": "data/x"}}}


def test_double_dollar_escapes_a_literal_reference() -> None:
    out, problems, _ = resolve("""
    vars: {n: 3}
    stages:
      a:
        whole: "$${vars.n}"
        mixed: "keep $${HOME} but use ${vars.n}"
        bare: "$${"
        dollars: "costs $$5 and $9"
    """)
    assert problems == []
    assert out["a"] == {"whole": "${vars.n}", "mixed": "keep ${HOME} but use 3", "bare": "${",
                        "dollars": "costs $$5 and $9"}


@pytest.mark.parametrize("value, message", [
    ("${vars.nme}", "unknown variable 'nme' in '${vars.nme}'"),
    ("${HOME}", "'${HOME}' is not a variable reference"),
    ("${vars.}", "'${vars.}' is not a variable reference"),
    ("${vars.cfg.zz}", "'${vars.cfg.zz}': variable 'cfg' has no item 'zz'"),
    ("x ${vars.cfg}", "'${vars.cfg}' is a mapping and cannot be placed inside a string"),
    ("x ${vars.tags}", "'${vars.tags}' is a list and cannot be placed inside a string"),
])
def test_bad_references_are_problems_at_their_place(value: str, message: str) -> None:
    _, problems, _ = resolve(f"""
    vars:
      name: x
      cfg: {{k: 1}}
      tags: [a]
    stages:
      a: {{v: "{value}"}}
    """)
    assert [p.message for p in problems] == [message]
    assert problems[0].position == Position("p.yaml", 7, 10)  # the value itself


def test_unknown_variable_suggests_a_close_name() -> None:
    _, problems, _ = resolve("""
    vars: {name: x, other: y}
    stages:
      a: {v: "${vars.nmae}"}
    """)
    (p,) = problems
    assert p.hint == "did you mean '${vars.name}'? defined variables: name, other"


def test_a_loop_between_variables_is_a_problem() -> None:
    _, problems, _ = resolve("""
    vars:
      a: "${vars.b}"
      b: "x${vars.a}"
    stages:
      s: {v: "${vars.a}"}
    """)
    assert any(p.message == "variables refer to each other in a loop: a -> b -> a" for p in problems), problems


# --- overrides ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, parts, value", [
    ("a.b=3", ["a", "b"], 3),
    ("a.b.c=3", ["a", "b", "c"], 3),
    ("a.b=0.5", ["a", "b"], 0.5),
    ("a.b=true", ["a", "b"], True),
    ("a.b=yes", ["a", "b"], "yes"),
    ("a.b=null", ["a", "b"], None),
    ("a.b=[1, x]", ["a", "b"], [1, "x"]),
    ("a.b={k: 1}", ["a", "b"], {"k": 1}),
    ("a.b='3'", ["a", "b"], "3"),
    ("a.b=x=y", ["a", "b"], "x=y"),
    ("a.b=", ["a", "b"], ""),
    ("a.b=#x", ["a", "b"], "#x"),  # not YAML data: taken as text
    ("a.b=[1,", ["a", "b"], "[1,"),
    (" a.b =7", ["a", "b"], 7),
    ("vars.x=hi there", ["vars", "x"], "hi there"),
])
def test_parse_override_reads_the_value_as_yaml(text: str, parts: list[str], value: Any) -> None:
    assert parse_override(text) == (parts, value)


@pytest.mark.parametrize("text", ["foo", "=x", "a.=x", ".a=x", "a..b=1", "a.b", "foo=1"])
def test_malformed_overrides(text: str) -> None:
    problem = parse_override(text)
    assert isinstance(problem, Problem)
    assert problem.position == Position(f"--set {text}")
    assert problem.message == "an override must look like STAGE.PARAM=VALUE or vars.NAME=VALUE"
    assert "-S train.epochs=3" in problem.hint


def _doc(text: str) -> Document:
    return load_text(textwrap.dedent(text), "p.yaml")


def test_override_creates_nested_mappings_and_records_its_position() -> None:
    doc = _doc("""
    stages:
      a:
        uses: x
      b:
        uses: x
        with: {extra: {keep: 1, old: {deep: 2}}}
    """)
    problems = apply_overrides(doc, ("a.extra.b.c=3", "b.extra.old={new: 5}", "b.extra.more=[1]"))
    assert problems == []
    assert doc.data["stages"]["a"]["with"] == {"extra": {"b": {"c": 3}}}
    assert doc.data["stages"]["b"]["with"] == {"extra": {"keep": 1, "old": {"new": 5}, "more": [1]}}
    where = Position("--set a.extra.b.c=3")
    assert doc.position(("stages", "a", "with", "extra", "b", "c")) == where
    assert doc.position(("stages", "a", "with", "extra", "b", "c"), key=True) == where
    # the replaced subtree's old positions now point at the option, not at the file
    assert doc.position(("stages", "b", "with", "extra", "old", "deep")) == Position("--set b.extra.old={new: 5}")
    assert doc.position(("stages", "b", "with", "extra", "old", "new")) == Position("--set b.extra.old={new: 5}")
    assert doc.position(("stages", "b", "with", "extra", "keep")).line == 7  # untouched: still the file


def test_override_of_vars() -> None:
    doc = _doc("vars: {x: 1, cfg: {lr: 0.1}}\nstages:\n  a: {uses: x}\n")
    assert apply_overrides(doc, ("vars.x=5", "vars.cfg.lr=0.5")) == []
    assert doc.data["vars"] == {"x": 5, "cfg": {"lr": 0.5}}
    doc = _doc("vars: {x: 1, s: text}\nstages:\n  a: {uses: x}\n")
    assert apply_overrides(doc, ("vars.x=[1, 2]",)) == []
    assert doc.data["vars"] == {"x": [1, 2], "s": "text"}
    (p,) = apply_overrides(doc, ("vars.s.deep=1",))
    assert p.message == "cannot set 'vars.s.deep': 's' is not a mapping"


def test_override_of_an_unknown_stage_suggests_one() -> None:
    doc = _doc("stages:\n  train: {uses: x}\n  eval: {uses: x}\n")
    (p,) = apply_overrides(doc, ("trian.epochs=3",))
    assert p.message == "the override names no stage 'trian'"
    assert p.hint == "did you mean 'train'? stages: train, eval"
    assert p.position == Position("--set trian.epochs=3")


# --- through the CLI ----------------------------------------------------------------------------


def _params(project, stage: str, *args: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The parameters in the key of the stage's result (with these -S), and ``show --json``."""
    info = json.loads(project.ok("show", "p.yaml", stage, "--json", *args).stdout)
    record = project.cache / "keys" / info["key"][:2] / f"{info['key']}.json"
    return json.loads(record.read_text())["parts"]["params"], info


def test_set_creates_nested_parameters_and_parses_yaml_values(project) -> None:
    project.spec(f"stages:\n  a:\n    uses: {E}\n")
    args = ("-S", "a.extra.b.c=3", "-S", "a.tags=[x, 'y z']", "-S", "a.upper=true", "-S", "a.repeat=2")
    project.ok("run", "p.yaml", *args)
    assert project.calls() == ["a"]
    params, info = _params(project, "a", *args)
    assert params["extra"] == {"b": {"c": 3}}
    assert params["tags"] == ["x", "y z"] and params["upper"] is True and params["repeat"] == 2
    assert (Path(info["outputs"]["out"]["path"]) / "data.txt").read_text() == "HELLOHELLO"
    _, plain = _params(project, "a")  # without -S the spec's own values apply again
    assert plain["current"] is False
    assert "parameter extra.b.c removed (was 3)" in plain["stale_because"]


def test_set_vars_and_escapes_end_to_end(project) -> None:
    project.spec(f"""
    vars:
      n: 1
      word: hi
    stages:
      a:
        uses: {E}
        with: {{text: "${{vars.word}} $${{HOME}};", repeat: "${{vars.n}}"}}
    """)
    project.ok("run", "p.yaml")
    assert (project.artifact("a") / "data.txt").read_text() == "hi ${HOME};"
    project.ok("run", "p.yaml", "-S", "vars.n=2", "-S", "vars.word=yo")
    info = json.loads(project.ok("show", "p.yaml", "a", "--json", "-S", "vars.n=2", "-S", "vars.word=yo").stdout)
    assert info["current"] is True
    assert (Path(info["outputs"]["out"]["path"]) / "data.txt").read_text() == "yo ${HOME};" * 2


def test_set_a_string_where_a_number_is_wanted_names_the_option(project) -> None:
    project.spec(f"stages:\n  a:\n    uses: {E}\n")
    result = project.run("validate", "p.yaml", "-S", "a.repeat='3'")
    assert result.exit_code == 2
    assert "--set a.repeat='3': error: " in result.stderr
    assert "parameter 'repeat' must be an integer, not a string (\"3\")" in result.stderr


@pytest.mark.parametrize("bad", ["foo", "=x", "a.=x"])
@pytest.mark.parametrize("verb", ["run", "validate", "status", "dag"])
def test_malformed_overrides_through_the_cli_exit_2(project, verb: str, bad: str) -> None:
    project.spec(f"stages:\n  a:\n    uses: {E}\n")
    result = project.run(verb, "p.yaml", "-S", bad)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(
        f"--set {bad}: error: an override must look like STAGE.PARAM=VALUE or vars.NAME=VALUE\n")
    assert "Traceback" not in result.output
    assert project.calls() == []
