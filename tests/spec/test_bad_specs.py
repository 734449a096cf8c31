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
    # issue 13: every mistake a clear error
    Bad("control-character-esc", f"stages:\n  a:\n    uses: {E}\n    with: {{text: \"a\x1bb\"}}\n",
        [(4, 20, "the file contains the control character U+001B (ESC), which YAML does not allow")],
        hint='write it as an escape in double quotes: "\\x1b"'),
    Bad("control-character-nul", f"stages:\n  a:\n    uses: {E}\x00\n",
        [(3, 30, "the control character U+0000 (NUL)")]),
    Bad("non-character-uffff", f"stages:\n  a:\n    uses: {E}\n    with: {{text: \uffff}}\n",
        [(4, 18, "a non-character U+FFFF")], hint='"\\uffff"'),
    Bad("control-characters-each-reported", "stages:\n  a\x01:\n    uses: x\x02\n",
        [(2, 4, "U+0001"), (3, 12, "U+0002")]),
    Bad("inputs-as-a-string", f"stages:\n  a:\n    uses: {L}\n    inputs: x.txt\n",
        [(4, 13, "stage 'a' (inputs) must be a mapping, not a string (\"x.txt\")")],
        hint="inputs must be a mapping of input names to files or stage outputs, e.g. `inputs: {data: data.jsonl}`",
        files={"x.txt": "x"}),
    Bad("nesting-too-deep", "stages:\n  a:\n    uses: x\nvars:\n  x: " + "[" * 101 + "]" * 101 + "\n",
        [(5, 104, "the YAML nests more than 100 levels deep here")], hint="flatten this value"),
    Bad("alias-bomb", "vars:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        + "".join(f"  {c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
        + f"stages:\n  s:\n    uses: {E}\n",
        [(6, 22, "the YAML aliases (*name) expand to more than 50000 values")], hint="billion laughs"),
    Bad("unclosed-quote", f"stages:\n  a:\n    uses: {E}\n    with:\n      text: \"hi\n  b:\n    uses: {E}\n",
        [(5, 13, "the quoted value that starts here is not closed (no closing \" before the end of the file)")],
        hint='add the closing "'),
    Bad("unclosed-single-quote", f"stages:\n  a:\n    uses: {E}\n    with: {{text: 'hi}}\n",
        [(4, 18, "the quoted value that starts here is not closed (no closing ' before the end of the file)")]),
    Bad("unclosed-flow-mapping", f"stages:\n  a:\n    uses: {E}\n    with: {{text: hi\n  b:\n    uses: {E}\n",
        [(4, 11, "the '{' that starts here is not closed (YAML noticed at line 5, column 4)")],
        hint="close the mapping with '}' after its last item"),
    Bad("unclosed-flow-mapping-at-the-end", f"stages:\n  a:\n    uses: {E}\n    with: {{text: hi\n",
        [(4, 11, "the '{' that starts here is not closed (YAML noticed at line 5, column 1)")]),
    Bad("unclosed-flow-list", f"stages:\n  a:\n    uses: {E}\n    with:\n      tags: [x, y\n",
        [(5, 13, "the '[' that starts here is not closed")], hint="close the list with ']'"),
    Bad("missing-comma-in-a-flow-mapping-over-lines", f"stages:\n  a:\n    uses: {E}\n    with: {{text: x,\n"
                                                      "           repeat: 2\n           upper: true}\n",
        [(6, 17, "expected ',' or '}'")], hint="separate the items with ','"),
    Bad("quoted-number-for-integer-or-null", "stages:\n  c:\n    uses: clean\n    inputs: {records: r.jsonl}\n"
                                             "    with:\n      max_tokens: \"4096\"\n",
        [(6, 19, "parameter 'max_tokens' must be an integer or null, not a string (\"4096\")")],
        hint="write the number without quotes", files={"r.jsonl": "{}\n"}),
    Bad("empty-stages-and-the-includes-define-none", "include: base.yaml\nstages: {}\n",
        [(2, 9, "'stages' is empty, and the included files define no stage")], hint="add at least one stage",
        files={"base.yaml": "vars: {x: 1}\n"}),
    Bad("override-of-an-undefined-variable", f"vars:\n  name: x\nstages:\n  a:\n    uses: {E}\n",
        [(None, None, "the override sets the variable 'nme', which the pipeline does not define")],
        hint="did you mean 'vars.name'? defined variables: name", args=("-S", "vars.nme=1")),
    Bad("override-of-a-variable-when-there-are-none", f"stages:\n  a:\n    uses: {E}\n",
        [(None, None, "the override sets the variable 'x', which the pipeline does not define")],
        hint="the pipeline defines no variables", args=("-S", "vars.x=1")),
    Bad("override-too-deep", f"stages:\n  a:\n    uses: {E}\n",
        [(None, None, "the override names 1001 nested keys (at most 20)")], args=("-S", "a" + ".x" * 1000 + "=1")),
    Bad("variables-chained-too-deep", "vars:\n" + "".join(f"  v{i}: ${{vars.v{i + 1}}}\n" for i in range(300))
        + f"  v300: hi\nstages:\n  a:\n    uses: {E}\n    with: {{text: '${{vars.v0}}'}}\n",
        [(2, 7, "variables refer to each other more than 50 levels deep (v0 -> v1 -> v2 -> ... -> v50)")]),
    Bad("input-from-a-variable-that-is-a-mapping", f"vars:\n  x: {{a: 1}}\nstages:\n  a:\n    uses: {L}\n"
                                                   "    inputs: {src: '${vars.x}'}\n",
        [(6, 19, "input 'src' of stage 'a' must be a file path or 'stage.output', not a mapping")],
        hint="used as an input must hold a string, or a list of strings"),
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


# --- issue 13: hints and rules that a catalogue entry cannot show ---------------------------------


def test_a_word_for_a_number_gets_no_hint_to_drop_quotes(project) -> None:
    project.spec(f"stages:\n  a:\n    uses: {E}\n    with:\n      sleep: fifteen\n")
    out = project.run("validate", "p.yaml").stderr
    assert "parameter 'sleep' must be a number, not a string (\"fifteen\")" in out
    assert "without quotes" not in out
    project.spec(f"stages:\n  a:\n    uses: {E}\n    with:\n      sleep: \"1.5e-1\"\n")
    assert "hint: write the number without quotes" in project.run("validate", "p.yaml").stderr
    project.spec(f"stages:\n  a:\n    uses: {E}\n    with:\n      repeat: \"1.5\"\n")  # no integer either way
    assert "without quotes" not in project.run("validate", "p.yaml").stderr


def test_empty_stages_in_a_file_that_includes_stages_is_fine(project) -> None:
    project.write("base.yaml", f"stages:\n  a:\n    uses: {E}\n")
    project.spec("include: base.yaml\nstages: {}\n")
    assert "is valid (1 stage: a)" in project.ok("validate", "p.yaml").stdout
    project.write("vars.yaml", "vars: {x: 1}\nstages: {}\n")  # an included fragment without stages
    project.spec(f"include: vars.yaml\nstages:\n  b:\n    uses: {E}\n")
    assert "is valid (1 stage: b)" in project.ok("validate", "p.yaml").stdout


def test_removing_every_included_stage_is_an_error(project) -> None:
    project.write("base.yaml", f"stages:\n  a:\n    uses: {E}\n")
    project.spec("include: base.yaml\nstages:\n  a: null\n")
    result = project.run("validate", "p.yaml")
    assert result.exit_code == 2
    assert "p.yaml:2:1: error: no stage is left: every included stage is removed (null)" in result.stderr


def test_an_escaped_var_in_an_ingest_template_names_both_escapes(project) -> None:
    """`$${vars.q}` reaches ingest as `${vars.q}`, a field `vars.q`: the error says which escape is which."""
    project.write("r.csv", "q,a\nhi,yo\n")
    project.write("r.jsonl", '{"q": "hi", "a": "yo"}\n')
    for data in ("r.csv", "r.jsonl"):
        project.spec(f"stages:\n  ingest:\n    uses: ingest\n    inputs: {{data: {data}}}\n"
                     "    with:\n      map: {user: \"$${vars.q} {q}\", assistant: \"{a}\"}\n")
        result = project.run("run", "p.yaml")
        assert result.exit_code == 2, result.output
        assert "'vars.q'" in result.stderr
        assert "`$${` escapes only pipeline variables" in result.stderr
        assert "write `{{` and `}}`" in result.stderr
    project.spec("stages:\n  ingest:\n    uses: ingest\n    inputs: {data: r.jsonl}\n"
                 "    with:\n      map: {user: \"$${{vars.q}} {q}\", assistant: \"{a}\"}\n")
    project.ok("run", "p.yaml")
    out = project.artifact("ingest", "records") / "records.jsonl"
    assert '"content":"${vars.q} hi"' in out.read_text(encoding="utf-8")
