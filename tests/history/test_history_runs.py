"""``pipeline runs``: the runs of one pipeline, newest first, with what changed and the headline
metrics; records of older versions, damaged records and runs that never finished."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from history_helpers import BETTER, E, dead_pid, ids, records, runs_dir, tree, write_record

from tunepipe.history.ids import short_ids
from tunepipe.history.runs import History, read_run


def test_runs_newest_first_with_changes_outcomes_and_metrics(hist) -> None:
    hist.ok("run", "p.yaml")
    hist.ok("run", "p.yaml", "-S", "a.text=-x", "-S", "a.extra.depth.n=2")
    hist.write("data/in.txt", "changed")
    hist.ok("run", "p.yaml", "-S", "a.text=-x", "-S", "a.extra.depth.n=2", "-S", BETTER)
    hist.spec(hist.root.joinpath("p.yaml").read_text() + "  f:\n    uses: tp_testplugins:Fail\n")
    assert hist.run("run", "p.yaml", "-S", "a.text=-x", "-S", "a.extra.depth.n=2", "-S", BETTER).exit_code == 1

    out = hist.ok("runs", "p.yaml").stdout
    lines = out.splitlines()
    assert len(ids(out)) == 4 and len(set(ids(out))) == 4 and all(len(i) == 7 for i in ids(out))
    failed, better, param, first = [lines[i:i + 3] for i in (0, 3, 6, 9)]
    assert " failed " in failed[0] and failed[0].endswith("3 cached, 1 failed (f)")
    assert failed[1].split() == ["changed", "f:", "new", "stage"]
    assert better[0].endswith("3 done") and " ok " in better[0]
    assert better[1].split("changed  ")[1] == "a: data/in.txt; ev: tuned [0.2,0.3,0.4,0.…→[0.5,0.6,0.7,0.…"
    assert better[2].split("metrics  ")[1] == "ev (base→tuned): rouge_l 0.238→0.650"
    assert param[1].split("changed  ")[1] == "a: text -a→-x, extra.depth.n 1→2"
    assert param[2].endswith("rouge_l 0.238→0.350")
    assert first[1].endswith("changed  first run")


def test_runs_json(hist) -> None:
    hist.ok("run", "p.yaml")
    hist.ok("run", "p.yaml", "-S", "b.text=-y")
    doc = json.loads(hist.ok("runs", "p.yaml", "--json").stdout)
    assert doc["pipeline"] == "p.yaml" and doc["total"] == 2 and doc["unreadable"] == []
    new, old = doc["runs"]
    assert new["status"] == "ok" and new["stages"] == {"done": 2, "cached": 1, "failed": 0}
    assert new["changes"][0] == {"stage": "b", "kind": "param", "what": "text", "old": "-b", "new": "-y"}
    assert [c for c in new["changes"] if c["kind"] == "input"] == [
        {"stage": "ev", "kind": "input", "what": "b.out", "old": old_digest(old, "b"), "new": old_digest(new, "b"),
         "upstream": True}]
    assert old["changes"] is None and isinstance(new["argv"], list)
    assert new["metrics"] == [{"stage": "ev", "metric": "rouge_l", "base": pytest.approx(0.2375),
                               "tuned": pytest.approx(0.35), "failed_stage": False}]
    assert Path(new["record"]).is_file() and new["duration_s"] >= 0 and new["started"] > old["started"]


def old_digest(run: dict, stage: str) -> str:
    return json.loads(Path(run["record"]).read_text())["stages"][stage]["outputs"]["out"]


def test_limit_shows_the_newest_and_says_how_many_there_are(hist) -> None:
    for text in ("t1", "t2", "t3"):
        hist.ok("run", "p.yaml", "-S", f"b.text={text}")
    every = ids(hist.ok("runs", "p.yaml").stdout)
    result = hist.ok("runs", "p.yaml", "--limit", "2")
    assert ids(result.stdout) == every[:2]
    assert "(2 newest of 3 runs; --limit 0 shows all)" in result.stderr
    assert ids(hist.ok("runs", "p.yaml", "-n", "0").stdout) == every


def test_two_pipelines_in_one_shared_cache_keep_their_runs_apart(project, tmp_path: Path) -> None:
    shared = tmp_path / "shared-cache"
    for folder, text in (("one", "x"), ("two", "y")):  # the same pipeline name, two files
        project.spec(f"name: same\nstages:\n  a:\n    uses: {E}\n    with: {{text: {text}}}\n", f"{folder}/p.yaml")
    project.ok("run", "one/p.yaml", "--cache-dir", str(shared))
    project.ok("run", "one/p.yaml", "--cache-dir", str(shared), "-S", "a.text=z")
    project.ok("run", "two/p.yaml", "--cache-dir", str(shared))
    one = json.loads(project.ok("runs", "one/p.yaml", "--cache-dir", str(shared), "--json").stdout)
    two = json.loads(project.ok("runs", "two/p.yaml", "--cache-dir", str(shared), "--json").stdout)
    assert (one["total"], two["total"]) == (2, 1)
    assert {Path(r["record"]).parent for r in one["runs"]}.isdisjoint({Path(r["record"]).parent for r in two["runs"]})
    assert one["runs"][0]["changes"][0]["new"] == "z" and two["runs"][0]["changes"] is None
    result = project.run("runs", "one/p.yaml")  # its own cache has no runs
    assert result.exit_code == 2
    assert result.stderr == (f"error: no runs of one/p.yaml are recorded in {project.root / 'one' / '.tunepipe'} "
                             "yet: run `pipeline run one/p.yaml` first\n")


def test_records_of_older_versions_damaged_ones_and_runs_that_never_ended(hist) -> None:
    hist.ok("run", "p.yaml")
    folder = runs_dir(hist)
    parts = json.loads(records(hist)[0].read_text())["stages"]["a"]["parts"]  # key format 1: no input names
    write_record(folder, "20200101T000000-1", {  # an early format: no parts, no end, no executor; no run_id
        "pipeline": "p", "started": 1577836800.0, "status": "ok",
        "stages": {"a": {"status": "done", "key": "k" * 64}, "b": {"status": "cached"}, "odd": "not a mapping"}})
    parts.update(format=1, code="c1", params={**parts["params"], "text": "-old"}, inputs={"src": ["d" * 64]})
    write_record(folder, "20200102T000000-2", {"run_id": "20200102T000000-2", "started": 1577923200.0,
                                                "status": "ok", "stages": {"a": {"status": "done", "parts": parts}}})
    write_record(folder, f"20200103T000000-{dead_pid()}", {"started": 1578009600.0, "status": "running",
                                                            "finished": None, "stages": {}})
    write_record(folder, "20200104T000000-3", '{"run_id": "20200104T000000-3", "stages": {"a": {"sta')  # cut short
    write_record(folder, "20200105T000000-4", "")
    write_record(folder, "20200106T000000-5", "[1, 2]")
    result = hist.ok("runs", "p.yaml")
    warnings = result.stderr.splitlines()
    assert len(warnings) == 3 and all(w.startswith("warning: skipped the run record ") for w in warnings)
    assert any(w.endswith("20200104T000000-3.json: it is not valid JSON (cut short?): Unterminated string "
                          "starting at: line 1 column 50 (char 49)") for w in warnings)
    assert any(w.endswith("20200105T000000-4.json: it is empty") for w in warnings)
    assert any(w.endswith("20200106T000000-5.json: it holds a JSON list, not a run record") for w in warnings)
    lines = result.stdout.splitlines()
    heads = [line for line in lines if not line.startswith(" ")]
    assert len(heads) == 4
    assert " crashed " in heads[1] and heads[1].split()[3] == "-"  # never finished: no duration
    assert heads[3].endswith("1 done, 1 cached")  # the early record: the odd stage is left out
    current = lines[1].split("changed  ")[1]
    assert current == "a: code, text -old→-a, data/in.txt; b: new stage; ev: new stage"  # against format 1
    doc = json.loads(hist.ok("runs", "p.yaml", "--json").stdout)
    assert sorted(Path(u["file"]).name for u in doc["unreadable"]) == [
        "20200104T000000-3.json", "20200105T000000-4.json", "20200106T000000-5.json"]
    assert [r["status"] for r in doc["runs"]] == ["ok", "crashed", "ok", "ok"]


def test_no_runs_and_no_file_are_user_errors(project) -> None:
    result = project.run("runs", "nothing.yaml")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: nothing.yaml: no such pipeline file, and no runs of it are recorded")
    project.spec(f"stages:\n  a: {{uses: '{E}'}}\n")
    for verb in (("runs",), ("diff",), ("logs", "a")):
        result = project.run(verb[0], "p.yaml", *verb[1:])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert result.stderr.endswith("yet: run `pipeline run p.yaml` first\n")
    assert not project.cache.exists()  # reading the history creates no cache


def test_history_commands_write_nothing(hist) -> None:
    hist.ok("run", "p.yaml")
    hist.ok("run", "p.yaml", "-S", BETTER)
    before = tree(hist.cache)
    hist.ok("runs", "p.yaml")
    hist.ok("runs", "p.yaml", "--json")
    hist.ok("diff", "p.yaml")
    hist.ok("diff", "p.yaml", "--md")
    hist.ok("logs", "p.yaml", "ev")
    assert tree(hist.cache) == before


def test_short_ids_grow_until_unique_and_prefixes_resolve(tmp_path: Path) -> None:
    from tunepipe.errors import UserError

    names = [f"20261207T000000-{i}" for i in range(3000)]
    found = short_ids(names, minimum=2)
    assert len(set(found.values())) == 3000 and len({len(v) for v in found.values()}) == 1
    assert len(next(iter(found.values()))) > 2  # 3,000 runs in 256 two-digit prefixes: they grow
    folder = tmp_path / "runs"
    for i, name in enumerate(names[:40]):
        write_record(folder, name, {"run_id": name, "started": float(i), "status": "ok", "stages": {}})
    history = read_history_of(folder, tmp_path)
    target = history.runs[7]
    assert len(target.short) == 7
    assert history.run(target.short) is target
    assert history.run(target.run_id) is target  # the full run id, as in the record's file name
    assert history.run(target.short.upper()) is target
    common = Counter(r.short[0] for r in history.runs).most_common(1)[0][0]  # 40 runs, 16 hex digits
    sharing = [r for r in history.runs if r.short.startswith(common)]
    with pytest.raises(UserError) as e:
        history.run(common)
    assert str(e.value).startswith(f"run id '{common}' is ambiguous: it starts ")
    assert all(r.short in str(e.value) for r in sharing) and str(e.value).endswith("; give more characters")
    with pytest.raises(UserError, match="no run of p.yaml has the id 'zzz': `pipeline runs p.yaml` lists them"):
        history.run("zzz")


def read_history_of(folder: Path, root: Path) -> History:
    runs = sorted((r for r in (read_run(f) for f in folder.glob("*.json"))), key=lambda r: -r.started)
    ident = short_ids(r.run_id for r in runs)
    return History("p.yaml", root, [replace(r, short=ident[r.run_id]) for r in runs])
