"""Stage templates: instantiation, parameter checks with lines, merging, sharing through includes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tunepipe.errors import SpecError
from tunepipe.registry import Registry
from tunepipe.spec import Pipeline, load_pipeline

E = "tp_testplugins:Emit"

SHOUT = f"""
templates:
  shout:
    description: an emit, upper-cased
    params:
      text: {{type: string, description: what to write}}
      times: {{default: 2, type: integer, minimum: 1}}
      tags: [a, b]
    stage:
      uses: {E}
      description: shouts ${{params.text}}
      with: {{text: "${{params.text}}!", repeat: "${{params.times}}", upper: true, tags: "${{params.tags}}"}}
"""


def load(root: Path, text: str, files: dict[str, str] | None = None) -> Pipeline:
    for rel, body in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(body), encoding="utf-8")
    (root / "p.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    return load_pipeline(root / "p.yaml", Registry(search_paths=[root]), display="p.yaml")


def test_a_template_is_instantiated_with_parameters_and_defaults(tmp_path: Path) -> None:
    p = load(tmp_path, SHOUT + """
stages:
  one: {template: shout, params: {text: hi}}
  two: {template: shout, params: {text: yo, times: 5, tags: []}}
""")
    assert p.stages["one"].uses == E
    assert p.stages["one"].params | {} == {**p.stages["one"].params, "text": "hi!", "repeat": 2, "upper": True,
                                           "tags": ["a", "b"]}
    assert p.stages["two"].params["repeat"] == 5 and type(p.stages["two"].params["repeat"]) is int
    assert p.stages["two"].params["tags"] == []


def test_a_stage_s_own_with_and_inputs_merge_over_the_template(tmp_path: Path) -> None:
    (tmp_path / "d.txt").write_text("d")
    p = load(tmp_path, SHOUT + """
stages:
  one:
    template: shout
    params: {text: hi}
    with: {upper: null, mode: fancy}
    inputs: {src: d.txt}
""")
    params = p.stages["one"].params
    assert params["upper"] is False  # removed: the plugin's default
    assert params["mode"] == "fancy" and params["text"] == "hi!"
    assert [r.text for r in p.stages["one"].inputs["src"]] == ["d.txt"]


def test_the_short_form_of_a_parameter_is_its_default(tmp_path: Path) -> None:
    p = load(tmp_path, f"""
templates:
  t:
    params: {{n: 3, cfg: {{default: {{k: v}}}}}}
    stage: {{uses: {E}, with: {{repeat: "${{params.n}}", extra: "${{params.cfg}}"}}}}
stages:
  a: {{template: t}}
""")
    assert p.stages["a"].params["repeat"] == 3 and p.stages["a"].params["extra"] == {"k": "v"}


def test_template_parameters_may_use_vars_and_matrix_values(tmp_path: Path) -> None:
    p = load(tmp_path, SHOUT + """
vars: {word: hey}
stages:
  one: {template: shout, params: {text: "${vars.word}", times: "${vars.n}"}}
  many:
    template: shout
    matrix: {n: [1, 3]}
    params: {text: "n${matrix.n}", times: "${matrix.n}"}
""".replace("vars: {word: hey}", "vars: {word: hey, n: 4}"))
    assert p.stages["one"].params["text"] == "hey!" and p.stages["one"].params["repeat"] == 4
    assert [(n, s.params["repeat"], s.params["text"]) for n, s in p.stages.items() if s.group == "many"] == [
        ("many@n=1", 1, "n1!"), ("many@n=3", 3, "n3!")]


def test_one_template_from_an_include_serves_three_pipelines(project) -> None:
    project.write("shared/templates.yaml", SHOUT)
    for name in ("a", "b", "c"):
        project.write(f"{name}.yaml", f"""
            include: [shared/templates.yaml]
            stages:
              loud: {{template: shout, params: {{text: same}}}}
              own: {{uses: {E}, inputs: {{src: loud.out}}, with: {{text: "{name}"}}}}
        """)
    project.ok("run", "a.yaml")
    assert project.calls() == ["loud", "own"]
    project.ok("run", "b.yaml")
    project.ok("run", "c.yaml")
    assert project.calls() == ["own", "own"]  # the shared stage ran once for all three


BAD = [
    ("unknown-parameter", "  a: {template: shout, params: {text: x, tims: 3}}\n",
     "p.yaml:{line}:42: error: unknown parameter 'tims' in stage 'a' (template shout)",
     "did you mean 'times'? allowed parameters: tags, text, times"),
    ("missing-parameter", "  a: {template: shout, params: {times: 3}}\n",
     "p.yaml:{line}:24: error: stage 'a' (template shout) is missing the required parameter 'text'", "add it"),
    ("wrong-type", "  a: {template: shout, params: {text: x, times: '3'}}\n",
     "p.yaml:{line}:49: error: stage 'a' (template shout) parameter 'times' must be an integer, not a string",
     "without quotes"),
    ("below-minimum", "  a: {template: shout, params: {text: x, times: 0}}\n",
     "p.yaml:{line}:49: error: stage 'a' (template shout) parameter 'times': 0 is less than the minimum of 1", ""),
    ("unknown-template", "  a: {template: shuot, params: {text: x}}\n",
     "p.yaml:{line}:17: error: unknown template 'shuot'", "did you mean 'shout'? templates: shout"),
    ("uses-and-template", f"  a: {{template: shout, uses: {E}}}\n",
     "p.yaml:{line}:7: error: stage 'a' has both `uses` and `template`", "keep one of the two"),
    ("params-without-template", f"  a: {{uses: {E}, params: {{x: 1}}}}\n",
     "p.yaml:{line}:34: error: stage 'a' has `params` but no `template`", "plugin parameters go under `with:`"),
    ("params-outside-a-template", f"  a: {{uses: {E}, with: {{text: '${{params.text}}'}}}}\n",
     "p.yaml:{line}:47: error: '${{params.text}}' is used outside a template", "elsewhere use ${{vars.NAME}}"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_template_mistakes_are_reported_at_the_stage_that_uses_it(project, case) -> None:
    _, stage, message, hint = case
    project.spec(SHOUT + "stages:\n" + stage)
    line = len((SHOUT + "stages:\n").splitlines()) + 1
    for verb in ("validate", "run"):
        result = project.run(verb, "p.yaml")
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert message.format(line=line) in result.stderr, result.stderr
        assert hint.format() in result.stderr


def test_mistakes_inside_a_template_point_at_the_template(project) -> None:
    project.write("shared/t.yaml", f"""\
        templates:
          t:
            params: {{text: {{default: x}}, n: {{type: integr}}, m: {{defualt: 3}}}}
            stage: {{uses: {E}, with: {{text: "${{params.txet}}", repeat: "${{params.text}}"}}}}
          u:
            params: {{text: {{default: x}}}}
            stage: {{uses: {E}, with: {{text: "${{params.txet}}", upper: "${{matrix.x}}"}}}}
    """)
    project.spec("include: [shared/t.yaml]\nstages:\n  a: {template: u}\n  b: {template: u}\n  c: {template: t}\n")
    out = project.run("validate", "p.yaml").stderr
    assert "shared/t.yaml:3:57: error: unknown key 'defualt' in template 't' (params.m)" in out
    assert "did you mean 'default'?" in out
    assert ("shared/t.yaml:3:34: error: template 't' parameter 'n' is not a valid JSON Schema: 'integr' is not "
            "valid under any of the given schemas (at type)") in out
    # one message for what both instances share, at the template's line
    assert out.count("shared/t.yaml:7:53: error: '${params.txet}': template 'u' has no parameter 'txet'") == 1
    assert "did you mean '${params.text}'? parameters: text" in out
    assert "shared/t.yaml:7:78: error: '${matrix.x}' is used where there is no matrix" in out
    assert "included from p.yaml:1:11" in out


def test_an_invalid_parameter_schema_is_reported_at_the_template(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as e:
        load(tmp_path, f"""
templates:
  t:
    params: {{n: {{type: integr}}}}
    stage: {{uses: {E}}}
stages:
  a: {{template: t, params: {{n: 1}}}}
""")
    assert "p.yaml:4:14: error: template 't' parameter 'n' is not a valid JSON Schema" in str(e.value)


def test_an_included_template_stage_can_be_changed_by_one_parameter(tmp_path: Path) -> None:
    p = load(tmp_path, """
include: [shared.yaml]
stages:
  loud: {params: {times: 7}}
""", files={"shared.yaml": SHOUT + "stages:\n  loud: {template: shout, params: {text: shared, times: 3}}\n"})
    assert p.stages["loud"].params["repeat"] == 7 and p.stages["loud"].params["text"] == "shared!"
