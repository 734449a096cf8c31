"""The catalog of bad pipeline specs: each gives exit 2, no traceback, the message and the position."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

E = "tp_testplugins:Emit"
L = "tp_testplugins:Length"


@dataclass
class Bad:
    id: str
    spec: str | bytes
    # (line, column, fragment of the message) for every problem we expect
    expect: list[tuple[int | None, int | None, str]]
    hint: str = ""
    args: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)


CATALOG = [
    Bad("yaml-syntax-unclosed-flow", "stages:\n  a: {uses: x, with: [1, 2}\n",
        [(2, 27, "YAML syntax error")]),
    Bad("tab-indentation", f"stages:\n  a:\n\tuses: {E}\n",
        [(3, 1, "a tab character is used for indentation")], hint="replace the tab with spaces"),
    Bad("duplicate-stage", f"stages:\n  a:\n    uses: {E}\n  a:\n    uses: {E}\n",
        [(4, 3, "duplicate key 'a' (first defined at line 2, column 3)")]),
    Bad("duplicate-param", f"stages:\n  a:\n    uses: {E}\n    with:\n      text: x\n      text: y\n",
        [(6, 7, "duplicate key 'text'")]),
    Bad("unknown-top-level-key", f"stages:\n  a:\n    uses: {E}\nvarz:\n  x: 1\n",
        [(4, 1, "unknown key 'varz' in the pipeline")], hint="did you mean 'vars'?"),
    Bad("misspelt-stages-and-missing", f"stagse:\n  a:\n    uses: {E}\n",
        [(1, 1, "unknown key 'stagse'"), (1, 1, "missing the required key 'stages'")], hint="did you mean 'stages'?"),
    Bad("unknown-stage-param", f"stages:\n  a:\n    uses: {E}\n    with:\n      txt: hi\n",
        [(5, 7, "unknown parameter 'txt' in stage 'a' (plugin tp_testplugins:Emit)")], hint="did you mean 'text'?"),
    Bad("unknown-stage-key", f"stages:\n  a:\n    uses: {E}\n    width:\n      text: hi\n",
        [(4, 5, "unknown key 'width' in stage 'a'")], hint="did you mean 'with'?"),
    Bad("wrong-type-string-for-int", f"stages:\n  a:\n    uses: {E}\n    with:\n      repeat: '3'\n",
        [(5, 15, "parameter 'repeat' must be an integer, not a string (\"3\")")],
        hint="write the number without quotes"),
    Bad("wrong-type-yes-for-bool", f"stages:\n  a:\n    uses: {E}\n    with:\n      upper: yes\n",
        [(5, 14, "parameter 'upper' must be a boolean, not a string (\"yes\")")], hint="YAML 1.2"),
    Bad("enum-typo", f"stages:\n  a:\n    uses: {E}\n    with:\n      mode: fancyy\n",
        [(5, 13, "parameter 'mode' must be one of: plain, fancy")], hint="did you mean 'fancy'?"),
    Bad("minimum", f"stages:\n  a:\n    uses: {E}\n    with:\n      repeat: 0\n",
        [(5, 15, "0 is less than the minimum of 1")]),
    Bad("unknown-builtin-plugin", "stages:\n  a:\n    uses: ingset\n",
        [(3, 11, "unknown plugin 'ingset'. did you mean 'ingest'?")]),
    Bad("unknown-plugin-attribute", "stages:\n  a:\n    uses: tp_testplugins:Emitt\n",
        [(3, 11, "has no attribute 'Emitt'. Did you mean 'tp_testplugins:Emit'?")]),
    Bad("unknown-plugin-module", "stages:\n  a:\n    uses: no_such_mod:Thing\n",
        [(3, 11, "no module named 'no_such_mod'")]),
    Bad("plugin-from-the-standard-library", "stages:\n  a:\n    uses: subprocess:Popen\n",
        [(3, 11, "plugin 'subprocess:Popen': not importing 'subprocess', found at ")],
        hint="add its folder to TUNEPIPE_PLUGIN_PATH"),
    Bad("plugin-import-raises", "stages:\n  a:\n    uses: bad_spec_broken_plugin:P\n",
        [(3, 11, "importing 'bad_spec_broken_plugin' failed: KeyError: 'MY_TOKEN' (at ")],
        files={"bad_spec_broken_plugin.py": "import os\nTOKEN = os.environ['MY_TOKEN']\n"}),
    Bad("plugin-class-needs-arguments", "stages:\n  a:\n    uses: bad_spec_args_plugin:P\n",
        [(3, 11, "plugin 'bad_spec_args_plugin:P': creating P() failed: TypeError")],
        hint="tunepipe creates a plugin class with no arguments",
        files={"bad_spec_args_plugin.py": "class P:\n    def __init__(self, size):\n        self.size = size\n"}),
    Bad("plugin-breaks-contract", "stages:\n  a:\n    uses: tp_testplugins:NotAPlugin\n",
        [(3, 11, "does not follow the plugin contract: 'version' must be a string")]),
    Bad("plugin-with-invalid-params-schema", "stages:\n  a:\n    uses: tp_testplugins:BadSchema\n",
        [(3, 11, "plugin 'tp_testplugins:BadSchema' publishes an invalid params_schema")],
        hint="a bug in the plugin"),
    Bad("missing-uses", "stages:\n  a:\n    with: {text: x}\n",
        [(2, 3, "stage 'a' is missing the required key 'uses'")]),
    Bad("input-names-missing-stage", f"stages:\n  emit:\n    uses: {E}\n  b:\n    uses: {E}\n    inputs:\n      src: emitt.out\n",
        [(7, 12, "there is no stage 'emitt' and no such file")], hint="did you mean stage 'emit'?"),
    Bad("input-names-missing-output", f"stages:\n  a:\n    uses: {E}\n  b:\n    uses: {E}\n    inputs:\n      src: a.outt\n",
        [(7, 12, "but stage 'a' has no output 'outt'")], hint="did you mean 'a.out'?"),
    Bad("input-file-missing", f"stages:\n  a:\n    uses: {E}\n    inputs:\n      src: data/none.jsonl\n",
        [(5, 12, "the file does not exist 'data/none.jsonl'")]),
    Bad("glob-matches-nothing", f"stages:\n  a:\n    uses: {E}\n    inputs:\n      src: data/*.csv\n",
        [(5, 12, "no file matches the pattern 'data/*.csv'")]),
    Bad("unknown-input-name", f"stages:\n  a:\n    uses: {E}\n    inputs:\n      source: x.txt\n",
        [(5, 7, "stage 'a' has no input 'source'")], hint="did you mean 'src'?", files={"x.txt": "x"}),
    Bad("missing-required-input", f"stages:\n  a:\n    uses: {L}\n",
        [(2, 3, "stage 'a' is missing its required input 'src'")]),
    Bad("too-many-refs-for-single-input", f"stages:\n  a:\n    uses: {E}\n  b:\n    uses: {L}\n    inputs:\n      src: [a.out, a.out]\n",
        [(7, 12, "input 'src' of stage 'b' takes one reference, not 2")]),
    Bad("cycle-three", f"stages:\n  a:\n    uses: {E}\n    inputs: {{src: c.out}}\n  b:\n    uses: {E}\n    inputs: {{src: a.out}}\n"
                       f"  c:\n    uses: {E}\n    inputs: {{src: b.out}}\n",
        [(None, None, "the stages form a cycle: ")],
        hint="break the cycle"),
    Bad("self-loop", f"stages:\n  a:\n    uses: {E}\n    inputs: {{src: a.out}}\n",
        [(4, 19, "stage 'a' reads its own output 'out' (input 'src'): a stage cannot depend on itself")]),
    Bad("empty-file", "", [(1, 1, "the pipeline file is empty")]),
    Bad("only-comments", "# nothing here\n\n", [(1, 1, "the pipeline file is empty")]),
    Bad("not-utf8", b"stages:\n  a:\n    uses: \xff\xfe\n", [(3, 11, "the file is not valid UTF-8 (byte 0xff")]),
    Bad("dot-inf", f"stages:\n  a:\n    uses: {E}\n    with:\n      sleep: .inf\n",
        [(5, 14, "'.inf' is a YAML-only number")], hint="use a finite number"),
    Bad("dot-nan", f"stages:\n  a:\n    uses: {E}\n    with:\n      sleep: .NaN\n",
        [(5, 14, "'.NaN' is a YAML-only number")]),
    Bad("binary-tag", f"stages:\n  a:\n    uses: {E}\n    with:\n      text: !!binary aGVsbG8=\n",
        [(5, 13, "the YAML tag 'tag:yaml.org,2002:binary' is not supported")]),
    Bad("custom-tag", f"stages:\n  a:\n    uses: {E}\n    with:\n      text: !env HOME\n",
        [(5, 13, "the YAML tag '!env' is not supported")]),
    Bad("merge-key", f"base: &b {{uses: {E}}}\nstages:\n  a:\n    <<: *b\n",
        [(4, 5, "YAML merge keys (<<) are not supported")]),
    Bad("non-string-key", f"stages:\n  1:\n    uses: {E}\n", [(2, 3, "the key '1' is read as a int")]),
    Bad("top-level-list", "- stages\n- a\n", [(1, 1, "the pipeline must be a mapping, not a list")]),
    Bad("empty-stages", "stages: {}\n", [(1, 9, "'stages' is empty")]),
    Bad("stage-name-with-dot", f"stages:\n  a.b:\n    uses: {E}\n", [(2, 3, "'a.b' is not a valid name in 'stages'")], hint="no dots or spaces"),
    Bad("unknown-variable", f"vars:\n  name: x\nstages:\n  a:\n    uses: {E}\n    with:\n      text: hi ${{vars.nme}}\n",
        [(7, 13, "unknown variable 'nme'")], hint="did you mean '${vars.name}'?"),
    Bad("variable-loop", f"vars:\n  a: ${{vars.b}}\n  b: ${{vars.a}}\nstages:\n  s:\n    uses: {E}\n    with:\n      text: ${{vars.a}}\n",
        [(None, None, "variables refer to each other in a loop")]),
    Bad("not-a-variable-reference", f"stages:\n  a:\n    uses: {E}\n    with:\n      text: ${{HOME}}\n",
        [(5, 13, "'${HOME}' is not a variable reference")]),
    Bad("two-documents", f"stages:\n  a:\n    uses: {E}\n---\nstages: {{}}\n", [(4, 1, "expected a single document")]),
    Bad("override-unknown-stage", f"stages:\n  a:\n    uses: {E}\n",
        [(None, None, "the override names no stage 'aa'")], hint="did you mean 'a'?", args=("-S", "aa.text=x")),
    Bad("override-bad-type", f"stages:\n  a:\n    uses: {E}\n",
        [(None, None, "parameter 'repeat' must be an integer, not a string")], args=("-S", "a.repeat=many")),
    Bad("many-problems-at-once", f"stages:\n  a:\n    uses: {E}\n    with:\n      txt: x\n  b:\n    uses: {E}\n"
                                 f"    with:\n      repeat: x\n  c:\n    uses: nope\n",
        [(5, 7, "unknown parameter 'txt'"), (9, 15, "must be an integer"), (11, 11, "unknown plugin 'nope'")]),
]


@pytest.mark.parametrize("case", CATALOG, ids=[c.id for c in CATALOG])
def test_bad_spec(project, case: Bad) -> None:
    spec = project.root / "p.yaml"
    spec.write_bytes(case.spec if isinstance(case.spec, bytes) else case.spec.encode())
    for rel, text in case.files.items():
        project.write(rel, text)
    for verb in ("validate", "run"):
        result = project.run(verb, "p.yaml", *case.args)
        out = result.stderr
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        for line, col, fragment in case.expect:
            assert fragment in out, out
            if line is not None:
                assert f"p.yaml:{line}:{col}: error: " in out, out
        if case.hint:
            assert case.hint in out, out
    # A bad spec never creates artifacts.
    assert not list((project.root / ".tunepipe" / "objects").glob("*/*")) if (project.root / ".tunepipe").exists() else True


def test_catalog_is_large_enough() -> None:
    assert len(CATALOG) >= 20


def test_cycle_message_names_every_link(project) -> None:
    spec = next(c for c in CATALOG if c.id == "cycle-three").spec
    project.spec(spec)
    out = project.run("validate", "p.yaml").stderr
    assert "the stages form a cycle: a -> b -> c -> a" in out or "b -> c -> a -> b" in out or "c -> a -> b -> c" in out
    assert "'b' reads a.out via input 'src' (line 7)" in out
    assert "'c' reads b.out via input 'src' (line 10)" in out
    assert "'a' reads c.out via input 'src' (line 4)" in out


def test_problems_show_the_offending_line_with_a_caret(project) -> None:
    project.spec(f"stages:\n  a:\n    uses: {E}\n    with:\n      txt: hi\n")
    out = project.run("validate", "p.yaml").stderr
    assert "    5 |       txt: hi\n      |       ^" in out


def test_all_problems_are_counted_in_the_header(project) -> None:
    project.spec(next(c for c in CATALOG if c.id == "many-problems-at-once").spec)
    out = project.run("validate", "p.yaml").stderr
    assert out.startswith("3 problems in the pipeline spec:")
