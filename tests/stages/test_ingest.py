"""The built-in ``ingest`` stage, run through the real CLI on real files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


def chat(user: str, assistant: str = "ok", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], **extra}


def line(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False)


def spec(data: str, on_error: str | None = None) -> str:
    with_ = f"\n    with: {{on_error: {on_error}}}" if on_error else ""
    return f"stages:\n  ingest:\n    uses: ingest\n    inputs:\n      data: {data}{with_}\n"


def output(project, name: str, *args: str) -> list[dict[str, Any]]:
    info = json.loads(project.ok("show", "p.yaml", "ingest", "--json", *args).stdout)
    folder = Path(info["outputs"][name]["path"])
    return [json.loads(x) for x in (folder / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


def summary(project) -> dict[str, Any]:
    return json.loads(project.ok("show", "p.yaml", "ingest", "--json").stdout)["summary"]


def test_reads_chat_examples_and_adds_provenance(project) -> None:
    first = chat("Héllo ☃", "hi")
    second = chat("with meta", meta={"id": 7, "source": "theirs"})
    project.write("data/chat.jsonl", f"{line(first)}\n\n   \n{line(second)}\n")
    project.spec(spec("data/chat.jsonl"))
    result = project.ok("run", "p.yaml")
    assert "files=1  records=2  rejected=0" in result.stderr
    records = output(project, "records")
    assert records == [
        {**first, "meta": {"source": "data/chat.jsonl", "line": 1}},
        {**second, "meta": {"id": 7, "source": "data/chat.jsonl", "line": 4}},  # blank lines still count
    ]
    assert output(project, "rejects") == []
    assert summary(project) == {"records": 2, "rejected": 0, "files": 1}
    assert "cached" in project.ok("run", "p.yaml").stderr


def test_tool_calls_without_content_are_accepted(project) -> None:
    rec = {"messages": [{"role": "user", "content": "weather?"},
                        {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function"}]},
                        {"role": "tool", "content": "sunny"}]}
    project.write("data/chat.jsonl", line(rec) + "\n")
    project.spec(spec("data/chat.jsonl"))
    project.ok("run", "p.yaml")
    assert output(project, "records") == [{**rec, "meta": {"source": "data/chat.jsonl", "line": 1}}]


def test_a_glob_reads_every_matching_file_in_sorted_order(project) -> None:
    project.write("data/b.jsonl", line(chat("b1")) + "\n" + line(chat("b2")) + "\n")
    project.write("data/a.jsonl", line(chat("a1")) + "\n")
    project.write("data/notes.txt", "not chat data\n")
    project.spec(spec('"data/*.jsonl"'))
    project.ok("run", "p.yaml")
    got = [(r["messages"][0]["content"], r["meta"]) for r in output(project, "records")]
    assert got == [("a1", {"source": "data/a.jsonl", "line": 1}), ("b1", {"source": "data/b.jsonl", "line": 1}),
                   ("b2", {"source": "data/b.jsonl", "line": 2})]
    assert summary(project) == {"records": 3, "rejected": 0, "files": 2}
    # a new matching file is a changed input
    project.write("data/c.jsonl", line(chat("c1")) + "\n")
    result = project.ok("run", "p.yaml")
    assert "ingest    done" in result.stderr and summary(project)["records"] == 4


def test_a_list_of_files_is_read_in_the_order_given(project) -> None:
    project.write("data/b.jsonl", line(chat("b1")) + "\n")
    project.write("data/a.jsonl", line(chat("a1")) + "\n")
    project.spec(spec("[data/b.jsonl, data/a.jsonl]"))
    project.ok("run", "p.yaml")
    assert [r["meta"]["source"] for r in output(project, "records")] == ["data/b.jsonl", "data/a.jsonl"]
    assert summary(project)["files"] == 2


def test_a_malformed_line_fails_the_run_as_a_user_error(project) -> None:
    project.write("data/chat.jsonl", f"{line(chat('ok'))}\n{line(chat('ok'))}\n{{\"messages\": [}}\n")
    project.spec(spec("data/chat.jsonl"))  # on_error defaults to fail
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2
    assert "data/chat.jsonl:3: not valid JSON (" in result.stderr  # named as in the pipeline file
    assert "Fix the line, or set `on_error: skip`" in result.stderr
    assert "ingest    failed" in result.stderr
    assert "Traceback" not in result.output
    # nothing was published or recorded, and the stage is still to run
    assert list((project.cache / "objects").glob("*/*")) == []
    assert list((project.cache / "keys").glob("*/*")) == []
    assert list((project.cache / "tmp").iterdir()) == []
    assert project.ok("status", "p.yaml").stdout.split() == ["ingest", "stale", "never", "run", "in", "this",
                                                             "pipeline"]
    assert project.run("show", "p.yaml", "ingest").exit_code == 2


def test_a_non_utf8_line_fails_naming_its_line(project) -> None:
    good = line(chat("ok")).encode()
    (project.root / "data").mkdir()
    (project.root / "data" / "chat.jsonl").write_bytes(good + b"\n" + good.replace(b"ok", b"caf\xe9") + b"\n")
    project.spec(spec("data/chat.jsonl", "fail"))
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2
    assert "chat.jsonl:2: not UTF-8 (byte offset " in result.stderr


def test_skip_sets_bad_lines_aside_with_their_reasons(project) -> None:
    good = line(chat("fine"))
    bad_utf8 = line(chat("ok")).encode().replace(b"ok", b"caf\xe9")
    lines = [
        good.encode(),                                                      # 1 kept
        b'{"messages": [',                                                  # 2 not JSON
        bad_utf8,                                                           # 3 not UTF-8
        line({"prompt": "hi", "completion": "yo"}).encode(),               # 4 no messages
        line({"messages": []}).encode(),                                    # 5 empty messages
        b"[1, 2]",                                                          # 6 not an object
        line({"messages": ["hi"]}).encode(),                                # 7 message not an object
        line({"messages": [{"role": "robot", "content": "x"}]}).encode(),   # 8 bad role
        line({"messages": [{"role": "user", "content": 3}]}).encode(),      # 9 content not a string
        good.encode(),                                                      # 10 kept
    ]
    (project.root / "data").mkdir()
    (project.root / "data" / "chat.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    project.spec(spec("data/chat.jsonl", "skip"))
    result = project.ok("run", "p.yaml")
    assert "files=1  records=2  rejected=8" in result.stderr
    assert summary(project) == {"records": 2, "rejected": 8, "files": 1}
    assert [r["meta"]["line"] for r in output(project, "records")] == [1, 10]
    rejects = output(project, "rejects")
    assert all(r["source"] == "data/chat.jsonl" for r in rejects)
    reasons = {r["line"]: r["reason"] for r in rejects}
    assert reasons[2].startswith("not valid JSON (")
    offset = bad_utf8.index(b"\xe9")
    assert reasons[3] == f"not UTF-8 (byte offset {offset} in the line)"
    assert reasons[4] == "missing a non-empty 'messages' list"
    assert reasons[5] == "missing a non-empty 'messages' list"
    assert reasons[6] == "expected a JSON object, got list"
    assert reasons[7] == "messages[0] is not an object"
    assert reasons[8] == 'messages[0].role must be one of system, user, assistant, tool (got "robot")'
    assert reasons[9] == "messages[0].content must be a string"
    assert sorted(reasons) == list(range(2, 10))


def test_on_error_fail_and_skip_are_different_keys_but_the_same_records(project) -> None:
    project.write("data/chat.jsonl", line(chat("x")) + "\n")
    project.spec(spec("data/chat.jsonl", "fail"))
    project.ok("run", "p.yaml")
    first = output(project, "records")
    project.spec(spec("data/chat.jsonl", "skip"))
    result = project.ok("run", "p.yaml", "--explain")
    assert 'because parameter on_error: "fail" -> "skip"' in result.stderr
    assert output(project, "records") == first


def test_an_unknown_on_error_value_is_a_spec_error(project) -> None:
    project.write("data/chat.jsonl", line(chat("x")) + "\n")
    project.spec(spec("data/chat.jsonl", "ignore"))
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2
    assert "p.yaml:6:22: error: stage 'ingest' (plugin ingest) parameter 'on_error' must be one of: fail, skip" \
        in result.stderr


def test_the_shipped_sarcasm_pipeline_runs(project) -> None:
    shutil.copytree(PIPELINES, project.root / "pipelines", ignore=shutil.ignore_patterns(".tunepipe"))
    result = project.ok("run", "pipelines/sarcasm.yaml")
    assert "pipeline sarcasm: 1 stage" in result.stderr
    assert "ingest    done" in result.stderr and "records=16  rejected=0" in result.stderr
    info = json.loads(project.ok("show", "pipelines/sarcasm.yaml", "ingest", "--json").stdout)
    assert info["summary"] == {"records": 16, "rejected": 0, "files": 1}
    (records_file,) = info["outputs"]["records"]["files"]
    assert records_file["records"] == 16
    records = [json.loads(x) for x in
               (Path(info["outputs"]["records"]["path"]) / "records.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["meta"] for r in records] == [{"source": "data/marv.jsonl", "line": i} for i in range(1, 17)]
    assert all(r["messages"][0]["role"] == "system" for r in records)
    assert Path(info["outputs"]["records"]["path"]).is_relative_to(project.root / "pipelines" / ".tunepipe")


def test_a_record_with_null_meta_does_not_crash_the_stage(project) -> None:
    project.write("data/chat.jsonl", line(chat("a", meta=None)) + "\n" + line(chat("b")) + "\n")
    project.spec(spec("data/chat.jsonl", "skip"))
    result = project.run("run", "p.yaml")
    assert "TypeError" not in result.stderr
    assert result.exit_code == 0


def test_a_utf8_bom_does_not_reject_the_first_line(project) -> None:
    (project.root / "data").mkdir()
    (project.root / "data" / "chat.jsonl").write_bytes(b"\xef\xbb\xbf" + line(chat("x")).encode() + b"\n")
    project.spec(spec("data/chat.jsonl", "fail"))
    result = project.run("run", "p.yaml")
    assert result.exit_code == 0, result.stderr


def test_reading_another_stages_output_names_it_in_the_provenance(project) -> None:
    project.write("data/chat.jsonl", line(chat("hello")) + "\n")
    project.spec(spec("data/chat.jsonl") + "  again:\n    uses: ingest\n    inputs:\n      data: ingest.records\n")
    project.ok("run", "p.yaml")
    info = json.loads(project.ok("show", "p.yaml", "again", "--json").stdout)
    records = (Path(info["outputs"]["records"]["path"]) / "records.jsonl").read_text().splitlines()
    assert json.loads(records[0])["meta"] == {"source": "ingest.records/records.jsonl", "line": 1}
