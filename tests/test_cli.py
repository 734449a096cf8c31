"""The ``pipeline`` verbs as users see them: status, dag, stages, show, validate, cache, output modes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tunepipe

E = "tp_testplugins:Emit"
SUPPORT = Path(__file__).parent / "support"

# a -> b, c independent; a file input on a.
SPEC = f"""
stages:
  a:
    uses: {E}
    inputs: {{src: data/in.txt}}
    with: {{text: "-a"}}
  b:
    uses: {E}
    inputs: {{src: a.out}}
    with: {{text: "-b"}}
  c:
    uses: {E}
    with: {{text: solo}}
"""


@pytest.fixture
def chain(project):
    project.write("data/in.txt", "in")
    project.spec(SPEC)
    return project


def status_lines(result) -> dict[str, str]:
    """stage -> the rest of its status line."""
    out = {}
    for line in result.stdout.splitlines():
        name, _, rest = line.partition("  ")
        out[name.strip()] = rest.strip()
    return out


# --- status ---------------------------------------------------------------------------------------


def test_status_before_and_after_a_run(chain) -> None:
    before = status_lines(chain.ok("status", "p.yaml"))
    assert before == {"a": "stale    never run in this pipeline",
                      "b": "pending  waits for a: reruns only if that changes its inputs",
                      "c": "stale    never run in this pipeline"}
    assert chain.calls() == []  # status runs nothing
    chain.ok("run", "p.yaml")
    chain.calls()
    assert status_lines(chain.ok("status", "p.yaml")) == {"a": "fresh", "b": "fresh", "c": "fresh"}


def test_status_names_what_changed(chain) -> None:
    chain.ok("run", "p.yaml")
    chain.spec(SPEC.replace('text: "-a"', 'text: "-A"'))
    lines = status_lines(chain.ok("status", "p.yaml"))
    assert lines["a"] == 'stale    parameter text: "-a" -> "-A"'
    assert lines["b"] == "pending  waits for a: reruns only if that changes its inputs"
    assert lines["c"] == "fresh"
    chain.spec(SPEC)
    chain.write("data/in.txt", "other")
    lines = status_lines(chain.ok("status", "p.yaml"))
    assert lines["a"].startswith("stale    input src (data/in.txt) changed (")
    # -S is taken into account like an edit; selecting a stage shows it and what it needs
    lines = status_lines(chain.ok("status", "p.yaml", "c", "-S", "c.repeat=2"))
    assert lines == {"c": "stale    parameter repeat: 1 -> 2"}


def test_status_json_shape(chain) -> None:
    chain.ok("run", "p.yaml", "c")
    data = json.loads(chain.ok("status", "p.yaml", "--json").stdout)
    assert data["pipeline"] == "p"
    by_name = {s["stage"]: s for s in data["stages"]}
    assert [s["stage"] for s in data["stages"]] == ["a", "b", "c"]
    for s in data["stages"]:
        assert set(s) == {"stage", "state", "key", "reasons", "operational_changes", "outputs"}
    assert by_name["a"]["state"] == "stale" and by_name["a"]["reasons"] == ["never run in this pipeline"]
    assert len(by_name["a"]["key"]) == 64 and by_name["a"]["outputs"] is None
    assert by_name["b"] == {"stage": "b", "state": "pending", "key": None,
                            "reasons": ["waits for a: reruns only if that changes its inputs"],
                            "operational_changes": [], "outputs": None}
    c = by_name["c"]
    assert c["state"] == "fresh" and c["reasons"] == [] and set(c["outputs"]) == {"out"}
    assert (chain.cache / "objects" / c["outputs"]["out"][:2] / c["outputs"]["out"]).is_dir()


def test_status_of_an_unknown_stage_is_a_user_error(chain) -> None:
    result = chain.run("status", "p.yaml", "bb")
    assert result.exit_code == 2
    assert "there is no stage 'bb'" in result.stderr and "Did you mean 'b'?" in result.stderr


# --- dag ------------------------------------------------------------------------------------------


def test_dag_text(chain) -> None:
    out = chain.ok("dag", "p.yaml").stdout.splitlines()
    assert out == [
        f"a  [{E}]  <- data/in.txt -> src",
        f"b  [{E}]  <- a.out -> src",
        f"c  [{E}]",
    ]


_DOT_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<id>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>->|[{}\[\];=,]))')


def parse_dot(text: str) -> tuple[str, dict[str, dict[str, str]], list[tuple[str, str, dict[str, str]]]]:
    """A strict parser for the DOT subset tunepipe writes; raises AssertionError on anything else."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _DOT_TOKEN.match(text, pos)
        assert m and m.end() > pos, f"not DOT at {text[pos:pos + 30]!r}"
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "str":
            value = re.sub(r'\\(["\\])', r"\1", value[1:-1])
        tokens.append((kind, value))
        pos = m.end()
    it = iter(tokens + [("end", "")])
    tok = next(it)

    def take(kind: str | None = None, value: str | None = None) -> str:
        nonlocal tok
        k, v = tok
        assert (kind is None or k == kind) and (value is None or v == value), f"expected {kind} {value}, got {tok}"
        tok = next(it, ("eof", ""))
        return v

    def attrs() -> dict[str, str]:
        out: dict[str, str] = {}
        take("op", "[")
        while tok != ("op", "]"):
            k = take("id")
            take("op", "=")
            assert tok[0] in ("id", "str")
            out[k] = take()
            if tok == ("op", ","):
                take()
        take("op", "]")
        return out

    take("id", "digraph")
    assert tok[0] in ("id", "str")
    name = take()
    take("op", "{")
    nodes: dict[str, dict[str, str]] = {}
    edges: list[tuple[str, str, dict[str, str]]] = []
    defaults: dict[str, dict[str, str]] = {}
    while tok != ("op", "}"):
        assert tok[0] in ("id", "str"), tok
        first = take()
        if tok == ("op", "=") and first in ("rankdir",):
            take()
            take()
        elif first in ("node", "edge", "graph") and tok == ("op", "["):
            defaults[first] = attrs()
        elif tok == ("op", "->"):
            take()
            assert tok[0] in ("id", "str")
            second = take()
            edges.append((first, second, attrs() if tok == ("op", "[") else {}))
        else:
            nodes[first] = {**defaults.get("node", {}), **(attrs() if tok == ("op", "[") else {})}
        take("op", ";")
    take("op", "}")
    take("end")
    return name, nodes, edges


def test_dag_dot_is_valid_dot_with_file_inputs_as_notes(chain) -> None:
    chain.write("data/more.txt", "m")
    chain.spec(SPEC.replace("{src: data/in.txt}", "{src: [data/in.txt, data/m*.txt]}"))
    name, nodes, edges = parse_dot(chain.ok("dag", "p.yaml", "--dot").stdout)
    assert name == "p"
    assert nodes["file:data/in.txt"] == {"shape": "note", "label": "data/in.txt"}
    assert nodes["file:data/m*.txt"] == {"shape": "note", "label": "data/m*.txt"}
    for stage in ("a", "b", "c"):
        assert nodes[stage] == {"shape": "box", "label": f"{stage}\\n({E})"}
    assert sorted((s, d, a["label"]) for s, d, a in edges) == [
        ("a", "b", "out->src"), ("file:data/in.txt", "a", "src"), ("file:data/m*.txt", "a", "src")]
    assert all(s in nodes and d in nodes for s, d, _ in edges)  # no edge to an undeclared node


def test_dag_mermaid_has_an_edge_per_input(chain) -> None:
    chain.spec(SPEC + f"""
  d:
    uses: {E}
    inputs: {{src: [a.out, b.out, data/in.txt]}}
""")
    lines = chain.ok("dag", "p.yaml", "--mermaid").stdout.splitlines()
    assert lines[0] == "flowchart LR"
    ids = {}
    for line in lines[1:]:
        m = re.fullmatch(r'  (n\d+)\["(\w+) \((.+)\)"\]', line) or re.fullmatch(r'  (n\d+)\[/"(.+)"/\]', line)
        if m:
            ids[m.group(1)] = m.group(2)
    assert sorted(ids.values()) == ["a", "b", "c", "d", "data/in.txt"]
    edges = []
    for line in lines[1:]:
        m = re.fullmatch(r'  (n\d+) -->\|"([^"]+)"\| (n\d+)', line)
        if m:
            edges.append((ids[m.group(1)], ids[m.group(3)], m.group(2)))
    # a<-file, b<-a, d<-a, d<-b, d<-file: one edge per input reference
    assert sorted(edges) == [("a", "b", "out->src"), ("a", "d", "out->src"), ("b", "d", "out->src"),
                             ("data/in.txt", "a", "src"), ("data/in.txt", "d", "src")]
    assert len(lines) == 1 + 5 + 5


# --- stages ---------------------------------------------------------------------------------------


def test_stages_lists_ingest_with_its_parameters(project) -> None:
    out = project.ok("stages").stdout
    names = [block.split()[0] for block in out.split("\n\n")]
    assert names == ["clean", "evaluate", "export", "format", "ingest", "split", "train"]  # every built-in, sorted
    ingest = out.split("\n\n")[names.index("ingest")]
    assert ingest.startswith("ingest  (version 0.2.0, tunepipe.stages.ingest:Ingest)")
    assert "  input  data (list): " in ingest
    assert "  output records: " in ingest and "  output rejects: " in ingest
    assert '  param  on_error: one of fail, skip = "fail"' in ingest


def test_stages_json_includes_the_parameter_schema(project) -> None:
    data = json.loads(project.ok("stages", "--json").stdout)
    ingest = next(p for p in data if p["name"] == "ingest")
    assert ingest["uses"] == "ingest" and ingest["identity"] == "tunepipe.stages.ingest:Ingest"
    on_error = ingest["params_schema"]["properties"]["on_error"]
    assert on_error["enum"] == ["fail", "skip"] and on_error["default"] == "fail" and on_error["description"]
    assert ingest["inputs"]["data"]["multiple"] is True
    assert set(ingest["outputs"]) == {"records", "rejects"}


def test_stages_by_name_and_unknown_name(project) -> None:
    out = project.ok("stages", E).stdout
    assert out.startswith(f"{E}  (version 1, {E})")
    assert "  param  repeat: integer = 1" in out
    assert '  param  mode: one of plain, fancy = "plain"' in out
    result = project.run("stages", "ingset")
    assert result.exit_code == 2 and "unknown plugin 'ingset'. did you mean 'ingest'?" in result.stderr


# --- show -----------------------------------------------------------------------------------------

INGEST = """
stages:
  ingest:
    uses: ingest
    inputs: {data: data/chat.jsonl}
    with: {on_error: skip}
"""
GOOD = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})


def test_show_lists_artifact_files_with_sizes_and_record_counts(project) -> None:
    project.write("data/chat.jsonl", f"{GOOD}\n{GOOD}\nnot json\n")
    project.spec(INGEST)
    project.ok("run", "p.yaml")
    out = project.ok("show", "p.yaml", "ingest").stdout.splitlines()
    assert out[0] == "stage ingest: fresh"
    assert out[2] == '  summary: records=2, rejected=1, files=1, rejected_by_reason={"bad_json": 1}'
    info = json.loads(project.ok("show", "p.yaml", "ingest", "--json").stdout)
    assert info["stage"] == "ingest" and info["current"] is True and info["stale_because"] == []
    assert out[1] == f"  key {info['key']}"
    records = info["outputs"]["records"]
    folder = Path(records["path"])
    assert folder.is_dir() and folder.name == records["digest"]
    size = (folder / "records.jsonl").stat().st_size
    assert records["files"] == [{"path": "records.jsonl", "bytes": size, "records": 2}]
    assert f"  output records: {folder}" in out
    assert f"    records.jsonl  ({size:,} bytes, 2 records)" in out
    rejects = info["outputs"]["rejects"]["files"]
    assert rejects[0]["path"] == "rejects.jsonl" and rejects[0]["records"] == 1
    assert info["summary"] == {"records": 2, "rejected": 1, "files": 1, "rejected_by_reason": {"bad_json": 1}}


def test_show_prints_the_plugin_s_own_account_of_its_results(project) -> None:
    project.write("in.txt", "four")
    project.spec("stages:\n  a: {uses: 'tp_testplugins:Length', inputs: {src: in.txt}}\n")
    project.ok("run", "p.yaml")
    out = project.ok("show", "p.yaml", "a").stdout.splitlines()
    folder = json.loads(project.ok("show", "p.yaml", "a", "--json").stdout)["outputs"]["out"]["path"]
    assert out[2:6] == ["  summary: length=4", "  length table:", "  | chars | 4 |", f"  report: {folder}/len.txt"]
    assert json.loads(project.ok("show", "p.yaml", "a", "--json").stdout)["details"].startswith("length table:")


def test_show_of_a_stale_stage_says_why(chain) -> None:
    chain.ok("run", "p.yaml")
    chain.spec(SPEC.replace('text: "-a"', 'text: "-x"'))
    info = json.loads(chain.ok("show", "p.yaml", "a", "--json").stdout)
    assert info["current"] is False
    assert info["stale_because"] == ['parameter text: "-a" -> "-x"']
    assert (Path(info["outputs"]["out"]["path"]) / "data.txt").read_text() == "in-a"  # the last result
    assert chain.ok("show", "p.yaml", "a").stdout.startswith('stage a: stale (parameter text: "-a" -> "-x")')


def test_show_of_a_stage_never_run_is_a_user_error_with_a_hint(chain) -> None:
    result = chain.run("show", "p.yaml", "c")
    assert result.exit_code == 2
    assert "stage 'c' has no results in" in result.stderr
    assert "run `pipeline run p.yaml c` first" in result.stderr
    assert "Traceback" not in result.output


def test_show_hint_names_the_spec_as_given(project) -> None:
    project.spec(f"stages:\n  a:\n    uses: {E}\n", name="sub/p.yaml")
    result = project.run("show", "sub/p.yaml", "a")
    assert result.exit_code == 2
    assert "run `pipeline run sub/p.yaml a` first" in result.stderr


# --- validate, version, python -m ---------------------------------------------------------------


def test_validate_success_message(chain) -> None:
    result = chain.ok("validate", "p.yaml")
    assert result.stdout == "ok: p.yaml is valid (3 stages: a, b, c)\n"
    chain.spec(f"stages:\n  only:\n    uses: {E}\n")
    assert chain.ok("validate", "p.yaml").stdout == "ok: p.yaml is valid (1 stage: only)\n"
    assert not chain.cache.exists()  # validating writes no cache


def test_version(project) -> None:
    assert project.ok("--version").stdout.strip() == f"tunepipe, version {tunepipe.__version__}"


def _python(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SUPPORT), "NO_COLOR": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_importing_the_cli_imports_no_heavy_module(tmp_path: Path) -> None:
    heavy = ("jsonschema", "networkx", "yaml", "torch", "transformers", "openai")
    code = ("import sys, json\nimport tunepipe.cli\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    proc = _python("-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout))
    assert "tunepipe" in loaded and "click" in loaded  # the probe saw the import
    assert loaded.isdisjoint(heavy), sorted(loaded & set(heavy))


def test_python_dash_m_tunepipe_help(tmp_path: Path) -> None:
    proc = _python("-m", "tunepipe", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: " in proc.stdout
    for verb in ("run", "status", "dag", "stages", "show", "validate", "cache"):
        assert re.search(rf"^  {verb}\s", proc.stdout, re.M), verb


def test_python_dash_m_help_names_a_usable_program(tmp_path: Path) -> None:
    proc = _python("-m", "tunepipe", "--help", cwd=tmp_path)
    assert "__main__.py" not in proc.stdout


# --- output modes -------------------------------------------------------------------------------


def test_quiet_prints_only_the_result_line(chain) -> None:
    result = chain.ok("run", "p.yaml", "-q")
    assert result.stderr == ""  # no running lines, no progress
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and re.fullmatch(r"ok: 3 done in \d+\.\d\ds", lines[0]), lines
    assert sorted(chain.calls()) == ["a", "b", "c"]


def test_verbose_prints_reasons_and_the_cache_folder(chain) -> None:
    result = chain.ok("run", "p.yaml", "-v")
    assert f"(cache {chain.cache})" in result.stdout.splitlines()[0]  # the header is part of the result
    assert result.stderr.count("because never run in this pipeline") == 3  # reasons are diagnostics
    assert "because" not in result.stdout
    chain.spec(SPEC.replace("text: solo", "text: SOLO"))
    err = chain.ok("run", "p.yaml", "-v").stderr
    assert 'because parameter text: "solo" -> "SOLO"' in err
    assert "because" not in chain.ok("run", "p.yaml").output  # default: no reasons


def test_no_colour_when_not_a_terminal_even_without_no_color(chain, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    chain.spec(SPEC + "  f:\n    uses: tp_testplugins:Fail\n")
    results = [chain.run("run", "p.yaml", "-k"), chain.run("run", "p.yaml", "-n"),
               chain.run("status", "p.yaml"), chain.run("run", "p.yaml", "-v", "-k")]
    assert [r.exit_code for r in results] == [1, 0, 0, 1]
    assert "✓ a" in results[0].stdout and "✗ f" in results[0].stdout  # the marks are there, uncoloured
    for r in results:
        assert "\x1b[" not in r.output


# --- cache verify / gc --------------------------------------------------------------------------


def test_cache_verify_detects_and_repairs_a_corrupt_artifact(chain) -> None:
    chain.ok("run", "p.yaml")
    chain.calls()
    result = chain.ok("cache", "verify", "p.yaml")
    assert result.stdout.splitlines() == [f"checked 3 artifacts and 3 records in {chain.cache}",
                                          "ok: the cache is consistent"]
    art = chain.artifact("a")
    victim = art / "data.txt"
    victim.chmod(0o644)
    victim.write_text("tampered")
    result = chain.run("cache", "verify", "p.yaml")
    assert result.exit_code == 1
    assert f"corrupt: artifact {art.name} no longer matches its digest" in result.stdout
    assert "pipeline cache verify --repair" in result.stdout
    assert art.is_dir()  # without --repair nothing is removed

    result = chain.ok("cache", "verify", "p.yaml", "--repair")
    assert f"corrupt: artifact {art.name} no longer matches its digest (removed)" in result.stdout
    assert not art.exists()
    assert status_lines(chain.ok("status", "p.yaml"))["a"] == "stale    its outputs are no longer in the cache"
    chain.ok("run", "p.yaml")
    assert chain.calls() == ["a", "b"]  # b read the corrupt artifact: --repair dropped its result too
    assert (chain.artifact("a") / "data.txt").read_text() == "in-a"
    assert chain.ok("cache", "verify", "p.yaml").stdout.endswith("ok: the cache is consistent\n")


def test_cache_verify_reports_a_missing_artifact(chain) -> None:
    chain.ok("run", "p.yaml", "c")
    art = chain.artifact("c")
    for f in art.iterdir():
        f.chmod(0o644)
        f.unlink()
    art.rmdir()
    result = chain.run("cache", "verify", "p.yaml")
    assert result.exit_code == 1
    assert f"needs artifact {art.name[:16]}, which is gone" in result.stdout


def _state(project) -> dict[str, dict]:
    return {s["stage"]: s for s in json.loads(project.ok("status", "p.yaml", "--json").stdout)["stages"]}


def test_cache_gc_removes_what_the_latest_run_does_not_use(chain) -> None:
    chain.ok("run", "p.yaml")
    old = _state(chain)
    chain.spec(SPEC.replace('text: "-a"', 'text: "-A"'))
    chain.ok("run", "p.yaml")
    chain.calls()
    new = _state(chain)
    gone = [old["a"], old["b"]]
    kept = [new["a"], new["b"], new["c"]]
    assert new["c"]["key"] == old["c"]["key"]

    def record(s: dict) -> Path:
        return chain.cache / "keys" / s["key"][:2] / f"{s['key']}.json"

    def obj(s: dict) -> Path:
        d = s["outputs"]["out"]
        return chain.cache / "objects" / d[:2] / d

    result = chain.ok("cache", "gc", "p.yaml", "--dry-run")
    listed = result.stdout.splitlines()
    assert sum(line.startswith("  would remove record ") for line in listed) == 2
    assert sum(line.startswith("  would remove artifact ") for line in listed) == 2
    assert listed[-1].startswith("would remove 2 stage records, 2 artifacts")
    assert all(record(s).exists() and obj(s).is_dir() for s in gone + kept)  # dry run: nothing removed

    result = chain.ok("cache", "gc", "p.yaml")
    assert result.stdout.startswith("removed 2 stage records, 2 artifacts")
    assert not any(record(s).exists() or obj(s).exists() for s in gone)
    assert all(record(s).exists() and obj(s).is_dir() for s in kept)
    assert chain.ok("cache", "gc", "p.yaml").stdout.startswith("removed 0 stage records, 0 artifacts")
    chain.ok("run", "p.yaml")
    assert chain.calls() == []  # the latest results survived
    assert chain.ok("cache", "verify", "p.yaml").stdout.endswith("ok: the cache is consistent\n")


def test_cache_maintenance_never_creates_a_cache(project) -> None:
    for verb in ("verify", "gc"):
        result = project.run("cache", verb)
        assert result.exit_code == 2
        assert "there is no tunepipe cache at" in result.stderr and "--cache-dir" in result.stderr
    assert not (project.root / ".tunepipe").exists()
