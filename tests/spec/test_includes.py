"""``include:``: nested files, package resources, merge rules, cycles, errors through includes,
relative paths, and the compiled-spec cache covering every included file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tunepipe.errors import SpecError
from tunepipe.registry import Registry
from tunepipe.spec import Pipeline, load_pipeline

E = "tp_testplugins:Emit"
L = "tp_testplugins:Length"
SUPPORT = Path(__file__).parents[1] / "support"


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


def load(root: Path, files: dict[str, str], main: str = "p.yaml", overrides: tuple[str, ...] = ()) -> Pipeline:
    write(root, files)
    return load_pipeline(root / main, Registry(search_paths=[root]), overrides, display=main)


def problems(root: Path, files: dict[str, str], main: str = "p.yaml") -> str:
    with pytest.raises(SpecError) as e:
        load(root, files, main)
    return str(e.value)


# --- merging --------------------------------------------------------------------------------------


def test_nested_includes_merge_with_the_including_file_on_top(tmp_path: Path) -> None:
    p = load(tmp_path, {
        "lib/c.yaml": f"""
            vars: {{who: c, shout: false}}
            stages:
              x: {{uses: {E}, with: {{text: "c-${{vars.who}}", repeat: 2, tags: [c1, c2], extra: {{a: 1, b: 2}}}}}}
        """,
        "lib/b.yaml": f"""
            include: c.yaml
            vars: {{who: b}}
            stages:
              x: {{with: {{text: "b-${{vars.who}}", extra: {{b: 20, c: 30}}}}}}
              y: {{uses: {E}, inputs: {{src: x.out}}}}
        """,
        "p.yaml": """
            include: [lib/b.yaml]
            vars: {shout: true}
            stages:
              x: {with: {tags: [p], upper: "${vars.shout}"}}
              y: {with: {text: local}}
        """,
    })
    x, y = p.stages["x"].params, p.stages["y"].params
    assert x["text"] == "b-b"  # b's text over c's; the var as merged (b over c)
    assert x["repeat"] == 2 and x["upper"] is True  # inherited; a local var
    assert x["tags"] == ["p"]  # lists replace
    assert x["extra"] == {"a": 1, "b": 20, "c": 30}  # mappings merge key by key
    assert y["text"] == "local" and p.stages["y"].upstream() == ["x"]
    assert p.name == "p"  # the name is never inherited


def test_a_later_include_overrides_an_earlier_one(tmp_path: Path) -> None:
    p = load(tmp_path, {
        "one.yaml": f"vars: {{v: one}}\nstages:\n  a: {{uses: {E}, with: {{text: one, repeat: 3}}}}\n",
        "two.yaml": f"vars: {{v: two}}\nstages:\n  a: {{uses: {E}, with: {{text: two}}}}\n",
        "p.yaml": f"include: [one.yaml, two.yaml]\nstages:\n  b: {{uses: {E}, with: {{text: '${{vars.v}}'}}}}\n",
    })
    assert p.stages["a"].params["text"] == "two" and p.stages["a"].params["repeat"] == 3
    assert p.stages["b"].params["text"] == "two"


def test_null_removes_an_inherited_parameter_or_stage_but_is_a_value_in_vars(tmp_path: Path) -> None:
    p = load(tmp_path, {
        "base.yaml": f"""
            vars: {{maybe: 5}}
            stages:
              a: {{uses: {E}, with: {{text: base, repeat: 4}}}}
              gone: {{uses: {E}}}
        """,
        "p.yaml": f"""
            include: [base.yaml]
            vars: {{maybe: null}}
            stages:
              a: {{with: {{repeat: null, extra: {{k: "${{vars.maybe}}"}}}}}}
              gone: null
              new: {{uses: {E}, with: {{extra: {{n: null}}}}}}
        """,
    })
    assert list(p.stages) == ["a", "new"]
    assert p.stages["a"].params["repeat"] == 1  # back to the plugin's default
    assert p.stages["a"].params["text"] == "base"
    assert p.stages["a"].params["extra"] == {"k": None}  # the var is null, not removed
    assert p.stages["new"].params["extra"] == {"n": None}  # nothing inherited: null is a value


def test_a_stage_with_another_plugin_replaces_the_inherited_one_whole(tmp_path: Path) -> None:
    p = load(tmp_path, {
        "base.yaml": f"stages:\n  a: {{uses: {E}, with: {{text: base}}}}\n",
        "p.yaml": f"include: [base.yaml]\nstages:\n  a: {{uses: {L}, inputs: {{src: d.txt}}}}\n",
        "d.txt": "x",
    })
    assert p.stages["a"].uses == L and p.stages["a"].params == {}


def test_templates_from_an_include_are_replaced_whole(tmp_path: Path) -> None:
    p = load(tmp_path, {
        "base.yaml": f"""
            templates:
              t:
                params: {{text: {{default: base}}, n: {{default: 2}}}}
                stage: {{uses: {E}, with: {{text: "${{params.text}}", repeat: "${{params.n}}"}}}}
        """,
        "p.yaml": f"""
            include: [base.yaml]
            templates:
              t:
                params: {{text: {{default: mine}}}}
                stage: {{uses: {E}, with: {{text: "${{params.text}}"}}}}
            stages:
              a: {{template: t}}
        """,
    })
    assert p.stages["a"].params["text"] == "mine" and p.stages["a"].params["repeat"] == 1


def test_a_partial_stage_that_matches_no_included_stage_is_an_error(project) -> None:
    project.write("base.yaml", f"stages:\n  a: {{uses: {E}}}\n")
    project.spec("include: [base.yaml]\nstages:\n  b:\n    with: {text: x}\n  c: null\n")
    out = project.run("validate", "p.yaml").stderr
    assert "p.yaml:3:3: error: stage 'b' is missing the required key 'uses'" in out
    assert "no included file defines 'b'" in out
    assert "p.yaml:5:3: error: stage 'c' is empty (null)" in out
    assert "removes a stage of that name that an included file defines, and none does" in out


def test_a_file_of_includes_and_vars_only_is_a_pipeline(tmp_path: Path) -> None:
    p = load(tmp_path, {
        "base.yaml": f"vars: {{t: base}}\nstages:\n  a: {{uses: {E}, with: {{text: '${{vars.t}}'}}}}\n",
        "p.yaml": "include: base.yaml\nvars: {t: mine}\n",
    })
    assert p.stages["a"].params["text"] == "mine"


def test_overrides_apply_after_merging(tmp_path: Path) -> None:
    p = load(tmp_path, {
        "base.yaml": f"stages:\n  a: {{uses: {E}, with: {{text: base}}}}\n",
        "p.yaml": "include: base.yaml\nvars: {x: 1}\n",
    }, overrides=("a.repeat=3",))
    assert p.stages["a"].params["repeat"] == 3 and p.stages["a"].params["text"] == "base"


# --- relative paths and package resources ---------------------------------------------------------


def test_relative_inputs_are_relative_to_the_file_that_writes_them(project) -> None:
    project.write("shared/data.txt", "SHARED")
    project.write("data.txt", "LOCAL")
    project.write("shared/base.yaml", f"""
        stages:
          a: {{uses: {E}, inputs: {{src: data.txt}}, with: {{text: ""}}}}
          g: {{uses: {E}, inputs: {{src: "*.txt"}}, with: {{text: ""}}}}
    """)
    project.spec(f"include: [shared/base.yaml]\nstages:\n"
                 f"  b: {{uses: {E}, inputs: {{src: data.txt}}, with: {{text: ''}}}}\n")
    dag = project.ok("dag", "p.yaml").stdout
    assert "a  [tp_testplugins:Emit]  <- shared/data.txt -> src" in dag
    assert "g  [tp_testplugins:Emit]  <- shared/*.txt -> src" in dag
    assert "b  [tp_testplugins:Emit]  <- data.txt -> src" in dag
    project.ok("run", "p.yaml")
    assert (project.artifact("a") / "data.txt").read_text() == "SHARED"
    assert (project.artifact("b") / "data.txt").read_text() == "LOCAL"
    (project.root / "shared" / "data.txt").unlink()
    out = project.run("run", "p.yaml").stderr
    assert "shared/base.yaml:3:48: error: input 'src' of stage 'a': the file does not exist 'shared/data.txt'" in out


def test_a_missing_relative_input_in_an_included_file_names_the_file_as_written(project) -> None:
    project.write("shared/base.yaml", f"stages:\n  a: {{uses: {E}, inputs: {{src: nothere.txt}}}}\n")
    project.spec("include: [shared/base.yaml]\n")
    out = project.run("validate", "p.yaml").stderr
    assert "shared/base.yaml:2:48: error: input 'src' of stage 'a': the file does not exist 'nothere.txt'" in out
    assert f"(looked in {project.root / 'shared'})" in out
    assert "included from p.yaml:1:11" in out
    assert "paths are relative to the file they are written in" in out


def _package(root: Path) -> None:
    write(root, {
        "tp_frag_pkg/__init__.py": "",
        "tp_frag_pkg/fragments/base.yaml": f"""
            include: [more/extra.yaml]
            templates:
              echo:
                params: {{text: {{default: from-package}}}}
                stage: {{uses: {E}, inputs: {{src: note.txt}}, with: {{text: "${{params.text}}"}}}}
        """,
        "tp_frag_pkg/fragments/note.txt": "NOTE:",
        "tp_frag_pkg/fragments/more/extra.yaml": f"stages:\n  extra: {{uses: {E}, with: {{text: extra}}}}\n",
    })


def test_a_package_resource_is_included_with_its_own_relative_paths(project) -> None:
    _package(project.root)
    project.spec("include: [tp_frag_pkg:fragments/base.yaml]\nstages:\n  mine: {template: echo}\n")
    dag = project.ok("dag", "p.yaml").stdout
    note = project.root / "tp_frag_pkg" / "fragments" / "note.txt"
    assert f"mine   [tp_testplugins:Emit]  <- {note} -> src" in dag  # the package's file, by its path
    assert dag.splitlines()[0].startswith("extra")
    project.ok("run", "p.yaml")
    assert (project.artifact("mine") / "data.txt").read_text() == "NOTE:from-package"


def test_include_errors_are_at_the_include_line_with_the_fix(project) -> None:
    _package(project.root)
    project.write("shared/base.yaml", "vars: {}\n")
    project.spec(textwrap.dedent(f"""\
        include:
          - shared/bse.yaml
          - tp_no_such_pkg:x.yaml
          - tp_frag_pkg:fragments/bse.yaml
          - tp_testplugins:x.yaml
          - shared
        stages:
          a: {{uses: {E}}}
    """))
    out = project.run("validate", "p.yaml").stderr
    assert out.startswith("5 problems in the pipeline spec:")
    assert "p.yaml:2:5: error: the included file 'shared/bse.yaml' does not exist" in out
    assert "did you mean 'base.yaml'? paths in `include:` are relative to the file that includes them" in out
    assert "p.yaml:3:5: error: the include 'tp_no_such_pkg:x.yaml' names the package 'tp_no_such_pkg', which " \
           "is not installed" in out
    assert "p.yaml:4:5: error: the package 'tp_frag_pkg' has no file 'fragments/bse.yaml'" in out
    assert "did you mean 'tp_frag_pkg:fragments/base.yaml'? YAML files there: base.yaml" in out
    assert "p.yaml:5:5: error: the include 'tp_testplugins:x.yaml': 'tp_testplugins' is a module, not a package" in out
    assert "p.yaml:6:5: error: the include 'shared' is a folder, not a pipeline file" in out


def test_an_include_cycle_names_the_whole_chain_at_the_include_line(project) -> None:
    project.write("a.yaml", f"include: [lib/b.yaml]\nstages:\n  s: {{uses: {E}}}\n")
    project.write("lib/b.yaml", "vars: {x: 1}\ninclude:\n  - c.yaml\n")
    project.write("lib/c.yaml", "include: [../a.yaml]\n")
    for verb in ("validate", "run"):
        result = project.run(verb, "a.yaml")
        assert result.exit_code == 2 and "Traceback" not in result.output
        out = result.stderr
        assert "lib/c.yaml:1:11: error: include cycle: a.yaml → lib/b.yaml → lib/c.yaml → a.yaml" in out
        assert "  included from lib/b.yaml:3:5\n  included from a.yaml:1:11\n" in out


def test_a_file_including_itself_is_a_cycle(project) -> None:
    project.spec(f"include: [p.yaml]\nstages:\n  s: {{uses: {E}}}\n")
    assert "p.yaml:1:11: error: include cycle: p.yaml → p.yaml" in project.run("validate", "p.yaml").stderr


def test_the_same_file_included_twice_is_not_a_cycle(tmp_path: Path) -> None:
    p = load(tmp_path, {
        "common.yaml": "vars: {t: common}\n",
        "a.yaml": "include: [common.yaml]\n",
        "b.yaml": "include: [common.yaml]\n",
        "p.yaml": f"include: [a.yaml, b.yaml]\nstages:\n  s: {{uses: {E}, with: {{text: '${{vars.t}}'}}}}\n",
    })
    assert p.stages["s"].params["text"] == "common"


def test_problems_in_included_files_name_their_file_line_and_the_include_chain(project) -> None:
    project.write("lib/deep.yaml", f"stages:\n  d:\n    uses: {E}\n    with:\n      txt: 1\n")
    project.write("lib/mid.yaml", "include: [deep.yaml]\nvarz: {}\n")
    project.spec(f"include:\n  - lib/mid.yaml\nstages:\n  a: {{uses: {E}, with: {{repeat: 0}}}}\n")
    out = project.run("validate", "p.yaml").stderr
    assert out.startswith("3 problems in the pipeline spec:")
    assert ("lib/deep.yaml:5:7: error: unknown parameter 'txt' in stage 'd' (plugin tp_testplugins:Emit)\n"
            "    5 |       txt: 1\n"
            "      |       ^\n"
            "  included from lib/mid.yaml:1:11\n"
            "  included from p.yaml:2:5\n"
            "  hint: did you mean 'text'?") in out
    assert "lib/mid.yaml:2:1: error: unknown key 'varz' in the pipeline\n" in out
    assert "  included from p.yaml:2:5\n  hint: did you mean 'vars'?" in out
    assert "p.yaml:4:49: error: stage 'a' (plugin tp_testplugins:Emit) parameter 'repeat'" in out


def test_a_yaml_error_in_an_included_file_names_that_file(project) -> None:
    project.write("lib/bad.yaml", "stages:\n  a: {uses: x, with: [1, 2}\n")
    project.spec("include: [lib/bad.yaml]\n")
    out = project.run("validate", "p.yaml").stderr
    assert "lib/bad.yaml:2:27: error: YAML syntax error" in out
    assert "  included from p.yaml:1:11" in out


def test_an_included_file_without_stages_and_a_main_file_without_any(project) -> None:
    project.write("lib/vars.yaml", "vars: {a: 1}\n")
    project.spec("include: [lib/vars.yaml]\n")
    out = project.run("validate", "p.yaml").stderr
    assert "p.yaml:1:1: error: the pipeline is missing the required key 'stages'" in out
    assert "the included files define none" in out


# --- the compiled-spec cache ----------------------------------------------------------------------

PROBE = ("import sys\nfrom tunepipe.cli import cli\ntry:\n    cli(['run', '-q', 'p.yaml'])\n"
         "except SystemExit as e:\n    assert e.code == 0, e.code\n"
         "print(sorted(m for m in ('jsonschema', 'networkx', 'yaml') if m in sys.modules))")


def _probe(root: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(SUPPORT)}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()[-1]  # the probe's line, after the run's result line (-q)


def test_the_validated_spec_is_reused_until_an_included_file_changes(project) -> None:
    project.write("lib/base.yaml", f"stages:\n  a: {{uses: {E}, with: {{text: one}}}}\n")
    project.write("lib/more.yaml", "include: [base.yaml]\n")
    project.spec("include: [lib/more.yaml]\n")
    heavy = "['jsonschema', 'networkx', 'yaml']"
    assert _probe(project.root) == heavy
    assert _probe(project.root) == "[]"  # reused: nothing parsed
    base = project.root / "lib" / "base.yaml"
    os.utime(base, ns=(base.stat().st_atime_ns, base.stat().st_mtime_ns + 10**9))  # touched, same bytes
    assert _probe(project.root) == "[]"
    base.write_text(f"stages:\n  a: {{uses: {E}, with: {{text: two}}}}\n")  # same size, new content
    assert _probe(project.root) == heavy
    assert (project.artifact("a") / "data.txt").read_text() == "two"
    base.write_text(f"stages:\n  a: {{uses: {E}, with: {{txt: two}}}}\n")
    out = project.run("run", "p.yaml")
    assert out.exit_code == 2 and "lib/base.yaml:2:41: error: unknown parameter 'txt'" in out.stderr


def test_a_deleted_include_is_noticed_by_a_cached_rerun(project) -> None:
    project.write("lib/base.yaml", f"stages:\n  a: {{uses: {E}}}\n")
    project.spec("include: [lib/base.yaml]\n")
    project.ok("run", "p.yaml")
    (project.root / "lib" / "base.yaml").unlink()
    out = project.run("run", "p.yaml")
    assert out.exit_code == 2 and "the included file 'lib/base.yaml' does not exist" in out.stderr


def test_the_stored_spec_lists_the_included_files(project) -> None:
    project.write("lib/base.yaml", f"stages:\n  a: {{uses: {E}}}\n")
    project.spec("include: [lib/base.yaml]\n")
    project.ok("run", "p.yaml")
    (stored,) = (project.cache / "compiled").glob("*.json")
    sources = json.loads(stored.read_text())["pipeline"]["sources"]
    assert [Path(s[0]) for s in sources] == [project.root / "lib" / "base.yaml"]


def test_a_package_include_reads_its_file_without_running_the_package(tmp_path: Path) -> None:
    """`include: pkg:file.yaml` reads package data: the package's __init__ (any code) never runs."""
    pkg = tmp_path / "frags" / "inner"
    pkg.mkdir(parents=True)
    marker = tmp_path / "ran.txt"
    for folder in (tmp_path / "frags", pkg):
        (folder / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    (pkg / "stage.yaml").write_text("stages:\n  a: {uses: tp_testplugins:Emit, with: {text: hi}}\n")
    (tmp_path / "p.yaml").write_text("name: p\ninclude: [frags.inner:stage.yaml]\n")
    result = subprocess.run([sys.executable, "-m", "tunepipe", "validate", "p.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    (tmp_path / "q.yaml").write_text("name: q\ninclude: [os:x.yaml]\nstages: {}\n")
    module = subprocess.run([sys.executable, "-m", "tunepipe", "validate", "q.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert module.returncode == 2 and "'os' is a module, not a package" in module.stderr
