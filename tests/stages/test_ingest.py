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


def spec(data: str, on_error: str | None = None, **params: Any) -> str:
    items = ([f"on_error: {on_error}"] if on_error else []) + [f"{k}: {json.dumps(v)}" for k, v in params.items()]
    with_ = f"\n    with: {{{', '.join(items)}}}" if items else ""
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
    assert "records=2  rejected=0  files=1" in result.stdout
    records = output(project, "records")
    assert records == [
        {**first, "meta": {"source": "data/chat.jsonl", "line": 1}},
        {**second, "meta": {"id": 7, "source": "data/chat.jsonl", "line": 4}},  # blank lines still count
    ]
    assert output(project, "rejects") == []
    assert summary(project) == {"records": 2, "rejected": 0, "files": 1, "rejected_by_reason": {}}
    assert "cached" in project.ok("run", "p.yaml").stdout


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
    assert summary(project) == {"records": 3, "rejected": 0, "files": 2, "rejected_by_reason": {}}
    # a new matching file is a changed input
    project.write("data/c.jsonl", line(chat("c1")) + "\n")
    result = project.ok("run", "p.yaml")
    assert "ingest    done" in result.stdout and summary(project)["records"] == 4


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
    assert "ingest    failed" in result.stdout  # the result line; the error above is on stderr
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
    project.spec(spec("data/chat.jsonl", "skip", max_reject_rate=1))  # 8 of 10 is over the default
    result = project.ok("run", "p.yaml")
    assert "records=2  rejected=8  files=1" in result.stdout
    assert summary(project) == {"records": 2, "rejected": 8, "files": 1, "rejected_by_reason": {
        "bad_content": 1, "bad_json": 1, "bad_message": 1, "no_messages": 1, "not_object": 1, "not_utf8": 1,
        "unknown_role": 1, "unknown_shape": 1}}
    assert [r["meta"]["line"] for r in output(project, "records")] == [1, 10]
    rejects = output(project, "rejects")
    assert all(r["source"] == "data/chat.jsonl" for r in rejects)
    reasons = {r["line"]: r["reason"] for r in rejects}
    assert reasons[2].startswith("not valid JSON (")
    offset = bad_utf8.index(b"\xe9")
    assert reasons[3] == f"not UTF-8 (byte offset {offset} in the line)"
    assert reasons[4].startswith("missing a non-empty 'messages' list, and not a DPO, ShareGPT or Alpaca record "
                                 "either (its fields: prompt, completion)")
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
    # the pipeline and its data belong to the main job and change with it: check what ingest guarantees
    shutil.copytree(PIPELINES, project.root / "pipelines", ignore=shutil.ignore_patterns(".tunepipe"))
    result = project.ok("run", "pipelines/sarcasm.yaml", "ingest")  # the whole job: tests/test_shipped_pipelines.py
    assert "pipeline sarcasm: 1 stage" in result.stdout and "ingest    done" in result.stdout
    info = json.loads(project.ok("show", "pipelines/sarcasm.yaml", "ingest", "--json").stdout)
    folder = Path(info["outputs"]["records"]["path"])
    assert folder.is_relative_to(project.root / "pipelines" / ".tunepipe")
    records = [json.loads(x) for x in (folder / "records.jsonl").read_text(encoding="utf-8").splitlines()]
    rejects = (Path(info["outputs"]["rejects"]["path"]) / "rejects.jsonl").read_text(encoding="utf-8").splitlines()
    summary = info["summary"]
    assert summary["records"] == len(records) >= 16 and summary["rejected"] == len(rejects)
    assert sum(summary["rejected_by_reason"].values()) == len(rejects)
    for r in records:
        assert r["meta"]["source"].startswith("data/marv")
        assert len({"line", "row", "index"} & set(r["meta"])) == 1
        assert r["messages"][0]["role"] == "system" and r["messages"][-1]["role"] == "assistant"


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


# ------------------------------------------------------------------------------------ formats, presets, maps

QA = [("What is the capital of France?", "Paris. Shocking, I know."),
      ("How many legs has a spider?", "Eight, all creepy.")]
MARV = "Marv is a factual chatbot that is also sarcastic."
QA_MAP = {"system": MARV, "user": "{question}", "assistant": "{answer}"}


def marv(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": MARV}, {"role": "user", "content": question},
            {"role": "assistant", "content": answer}]


def put(project, rel: str, data: bytes | str) -> Path:
    path = project.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def write_parquet(path: Path, columns: dict[str, list[Any]]) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def by_source(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r["meta"]["source"], []).append(r)
    return out


def test_every_reader_and_gzip_variant_with_provenance(project) -> None:
    import gzip

    jsonl = "".join(line({"messages": marv(q, a)}) + "\n" for q, a in QA)
    array = json.dumps([{"messages": marv(q, a)} for q, a in QA], indent=2)
    csv_text = "question,answer\r\n" + "".join(f'"{q}","{a}"\r\n' for q, a in QA)
    tsv_text = "question\tanswer\n" + "".join(f"{q}\t{a}\n" for q, a in QA)
    files = {"chat.jsonl": jsonl, "chat.json": array, "qa.csv": csv_text, "qa.tsv": tsv_text}
    for name, text in files.items():
        put(project, f"data/{name}", text)
        put(project, f"data/{name}.gz", gzip.compress(text.encode()))
    put(project, "data/zipped.jsonl", gzip.compress(jsonl.encode()))  # gzip found by its magic bytes
    write_parquet(project.root / "data/qa.parquet", {"question": [q for q, _ in QA], "answer": [a for _, a in QA]})
    project.spec(spec('"data/*"', sources=[{"match": "qa.*", "map": QA_MAP}]))
    result = project.ok("run", "p.yaml")
    assert "records=20  rejected=0  files=10" in result.stdout
    got = by_source(output(project, "records"))
    position = {"jsonl": ("line", [1, 2]), "json": ("index", [0, 1]), "csv": ("row", [1, 2]), "tsv": ("row", [1, 2]),
                "parquet": ("row", [1, 2])}
    assert sorted(got) == sorted([f"data/{n}" for n in files] + [f"data/{n}.gz" for n in files]
                                 + ["data/zipped.jsonl", "data/qa.parquet"])
    for source, records in got.items():
        kind = source.removesuffix(".gz").rsplit(".", 1)[1]
        key, numbers = position[kind]
        assert [r["messages"] for r in records] == [marv(q, a) for q, a in QA], source
        assert [r["meta"] for r in records] == [{"source": source, key: n} for n in numbers], source


def test_presets_sharegpt_alpaca_dpo_and_openai_with_tools(project) -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    openai = {"messages": [{"role": "user", "content": "Weather?"},
                           {"role": "assistant", "content": None,
                            "tool_calls": [{"id": "c1", "type": "function",
                                            "function": {"name": "weather", "arguments": "{}"}}]},
                           {"role": "tool", "tool_call_id": "c1", "content": "rain"},
                           {"role": "assistant", "content": "Rain. Bring the umbrella you never bring.", "weight": 1}],
              "tools": tools, "parallel_tool_calls": False, "id": "x1", "meta": {"lang": "en"}}
    dpo = {"input": {"messages": [{"role": "user", "content": "2+2?"}], "tools": tools},
           "preferred_output": [{"role": "assistant", "content": "4, obviously."}],
           "non_preferred_output": [{"role": "assistant", "content": "5"}], "id": "x2"}
    sharegpt = {"system": MARV, "tools": json.dumps([{"name": "weather", "parameters": {"type": "object"}}]),
                "conversations": [{"from": "human", "value": "Weather in Oslo?"},
                                  {"from": "function_call",
                                   "value": '{"name": "weather", "arguments": {"city": "Oslo"}}'},
                                  {"from": "observation", "value": "snow"},
                                  {"from": "gpt", "value": "Snow. In Oslo. Who knew."}], "id": "x3"}
    alpaca = [{"instruction": "Add the numbers", "input": "2 and 3", "output": "5. A calculator would agree.",
               "system": MARV, "history": [["Hi", "Oh, hello."]], "id": "x4"},
              {"instruction": "Name a colour", "input": "", "output": "Beige, the colour of enthusiasm.", "id": "x5"}]
    put(project, "data/mixed.jsonl", "".join(line(r) + "\n" for r in (openai, dpo, sharegpt)))
    put(project, "data/alpaca.json", json.dumps(alpaca))
    put(project, "data/sharegpt.jsonl", line({"conversations": [{"from": "user", "value": "a"},
                                                                {"from": "assistant", "value": "b"}]}) + "\n")
    project.spec(spec("[data/mixed.jsonl, data/alpaca.json, data/sharegpt.jsonl]", keep_fields=["id"],
                      sources=[{"match": "data/sharegpt.jsonl", "preset": "sharegpt"}]))
    project.ok("run", "p.yaml")
    records = output(project, "records")
    assert records[0] == {"messages": openai["messages"], "tools": tools, "parallel_tool_calls": False,
                          "meta": {"lang": "en", "id": "x1", "source": "data/mixed.jsonl", "line": 1}}
    assert records[1] == {"input": dpo["input"], "preferred_output": dpo["preferred_output"],
                          "non_preferred_output": dpo["non_preferred_output"],
                          "meta": {"id": "x2", "source": "data/mixed.jsonl", "line": 2}}
    assert records[2] == {
        "messages": [{"role": "system", "content": MARV}, {"role": "user", "content": "Weather in Oslo?"},
                     {"role": "assistant", "content": None, "tool_calls": [
                         {"id": "call_1", "type": "function",
                          "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]},
                     {"role": "tool", "tool_call_id": "call_1", "content": "snow"},
                     {"role": "assistant", "content": "Snow. In Oslo. Who knew."}],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
        "meta": {"id": "x3", "source": "data/mixed.jsonl", "line": 3}}
    assert records[3] == {"messages": [{"role": "system", "content": MARV}, {"role": "user", "content": "Hi"},
                                       {"role": "assistant", "content": "Oh, hello."},
                                       {"role": "user", "content": "Add the numbers\n\n2 and 3"},
                                       {"role": "assistant", "content": "5. A calculator would agree."}],
                          "meta": {"id": "x4", "source": "data/alpaca.json", "index": 0}}
    assert records[4]["messages"] == [{"role": "user", "content": "Name a colour"},
                                      {"role": "assistant", "content": "Beige, the colour of enthusiasm."}]
    assert records[5] == {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                          "meta": {"source": "data/sharegpt.jsonl", "line": 1}}


def test_templates_with_nested_fields_braces_multi_turn_and_dpo(project) -> None:
    put(project, "data/nested.jsonl", line({"meta": {"q": "Is water wet?"}, "answer": {"text": "Yes."}, "n": 2,
                                            "tags": ["science"], "id": 9}) + "\n")
    put(project, "data/turns.jsonl", line({"q1": "Hi", "a1": "What now?", "q2": "Bye", "a2": "Finally."}) + "\n")
    put(project, "data/prefs.csv", "prompt,chosen,rejected\nSky colour?,\"Blue, as always.\",Green\n")
    project.spec(spec("[data/nested.jsonl, data/turns.jsonl, data/prefs.csv]", sources=[
        {"match": "*nested*", "keep_fields": ["id", "tags.0"],
         "map": {"system": "Marv {{sarcastic}} #{n}", "user": "{meta.q}", "assistant": "{answer.text}"}},
        {"match": "*turns*", "map": {"messages": [{"role": "user", "content": "{q1}"},
                                                  {"role": "assistant", "content": "{a1}"},
                                                  {"role": "user", "content": "{q2}"},
                                                  {"role": "assistant", "content": "{a2}"}]}},
        {"match": "*.csv", "map": {"user": "{prompt}", "preferred": "{chosen}", "non_preferred": "{rejected}"}}]))
    project.ok("run", "p.yaml")
    nested, turns, prefs = output(project, "records")
    assert nested == {"messages": [{"role": "system", "content": "Marv {sarcastic} #2"},
                                   {"role": "user", "content": "Is water wet?"},
                                   {"role": "assistant", "content": "Yes."}],
                      "meta": {"id": 9, "tags.0": "science", "source": "data/nested.jsonl", "line": 1}}
    assert [m["content"] for m in turns["messages"]] == ["Hi", "What now?", "Bye", "Finally."]
    assert prefs == {"input": {"messages": [{"role": "user", "content": "Sky colour?"}]},
                     "preferred_output": [{"role": "assistant", "content": "Blue, as always."}],
                     "non_preferred_output": [{"role": "assistant", "content": "Green"}],
                     "meta": {"source": "data/prefs.csv", "row": 1}}


def test_per_source_mapping_merges_a_jsonl_of_messages_and_a_csv_of_questions(project) -> None:
    put(project, "data/marv.jsonl", "".join(line({"messages": marv(q, a)}) + "\n" for q, a in QA))
    put(project, "data/marv.csv", "question,answer,topic\n"
        "What is the boiling point of water?,\"100 °C at sea level. Riveting.\",physics\n"
        "Who painted the Mona Lisa?,Leonardo da Vinci. You may have heard.,art\n")
    project.write("p.yaml", f"""\
        stages:
          ingest:
            uses: ingest
            inputs:
              data: [data/marv.jsonl, data/marv.csv]
            with:
              keep_fields: [topic]
              sources:
                - match: "*.csv"
                  map:
                    system: {MARV}
                    user: "{{question}}"
                    assistant: "{{answer}}"
        """)
    result = project.ok("run", "p.yaml")
    assert "records=4  rejected=0  files=2" in result.stdout
    records = output(project, "records")
    assert [r["messages"] for r in records] == [marv(q, a) for q, a in QA] + [
        marv("What is the boiling point of water?", "100 °C at sea level. Riveting."),
        marv("Who painted the Mona Lisa?", "Leonardo da Vinci. You may have heard.")]
    assert [r["meta"] for r in records] == [
        {"source": "data/marv.jsonl", "line": 1}, {"source": "data/marv.jsonl", "line": 2},
        {"topic": "physics", "source": "data/marv.csv", "row": 1},
        {"topic": "art", "source": "data/marv.csv", "row": 2}]
    # editing the mapping is a changed parameter, named in --explain
    no_system = "ingest.sources=[{match: '*.csv', map: {user: '{question}', assistant: '{answer}'}}]"
    assert "because parameter sources" in project.ok("run", "p.yaml", "--explain", "-S", no_system).stderr
    assert output(project, "records", "-S", no_system)[2]["messages"][0] == {
        "role": "user", "content": "What is the boiling point of water?"}


# ------------------------------------------------------------------------------------------- errors, rejects

def failure(project, *args: str) -> str:
    result = project.run("run", "p.yaml", *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return " ".join(result.stderr.split())  # the terminal view may wrap long lines


@pytest.mark.parametrize(("params", "message"), [
    ({"sources": [{"match": "*.csv", "map": QA_MAP}]},
     "ingest parameter sources[0].match '*.csv' matches none of the inputs (data/chat.jsonl); fix the pattern"),
    ({"map": {"user": "{question", "assistant": "{answer}"}},
     "ingest parameter map.user: the '{' at character 1 is not closed; write {{ for a literal brace"),
    ({"preset": "openai", "map": QA_MAP}, "ingest parameters map and preset: openai do not go together"),
    ({"preset": "map"}, "ingest parameter preset is `map` but no `map` is given"),
    ({"sources": [{"match": "*", "map": {"assistant": "{a}"}}]}, "ingest parameter sources[0].map needs `user`"),
])
def test_settings_that_cannot_work_fail_before_reading(project, params: dict[str, Any], message: str) -> None:
    put(project, "data/chat.jsonl", line(chat("x")) + "\n")
    project.spec(spec("data/chat.jsonl", "skip", **params))
    assert message in failure(project)


def test_unknown_parameters_and_values_are_spec_errors_with_suggestions(project) -> None:
    put(project, "data/chat.jsonl", line(chat("x")) + "\n")
    project.spec(spec("data/chat.jsonl", sources=[{"match": "*", "mapp": {}}], preset="sharegtp"))
    text = failure(project)
    assert "unknown parameter 'mapp'" in text and "did you mean 'map'?" in text
    assert "parameter 'preset' must be one of: auto, openai, dpo, sharegpt, alpaca, map" in text


@pytest.mark.parametrize(("files", "params", "message"), [
    ({"qa.csv": "question,answer\nq,a\n"}, {"map": {"user": "{question}", "assistant": "{answr}"}},
     "data/qa.csv: map.assistant uses the field 'answr', but the file has no column 'answr' (did you mean {answer}? "
     "columns: 'question', 'answer'); fix the template or the header"),
    ({"qa.csv": "question,answer\nq,a\n"}, {},
     "data/qa.csv: its columns ('question', 'answer') are not a known record shape; map them to messages with `map`"),
    ({"qa.csv": "q,q\n1,2\n"}, {}, "data/qa.csv: the header names column 'q' twice; rename one of them"),
    ({"notes.txt": "hello\n"}, {}, "data/notes.txt: cannot tell the file's format from its name"),
    ({"arr.json": '[{"messages": []}, {"a": 1}}'}, {},
     "data/arr.json: unexpected '}' at byte 27 after element 1 (unbalanced brackets?)"),
    ({"arr.json": '[{"a": 1}'}, {}, "data/arr.json: the JSON array is not closed: the file ends after element 0"),
    ({"chat.jsonl.gz": b"\x1f\x8b\x08\x00garbage"}, {}, "data/chat.jsonl.gz: cannot decompress it"),
])
def test_a_file_that_cannot_be_read_fails_even_with_skip(project, files: dict[str, Any], params: dict[str, Any],
                                                        message: str) -> None:
    for name, body in files.items():
        put(project, f"data/{name}", body)
    project.spec(spec('"data/*"', "skip", **params))
    assert message in failure(project)


def test_on_error_fail_names_the_place_in_each_kind_of_file(project) -> None:
    put(project, "data/qa.csv", 'question,answer\nq1,a1\nq2,"two\nlines"\nq3,\n')
    project.spec(spec("data/qa.csv", map=QA_MAP))
    assert ("data/qa.csv:5 (row 3): map.assistant renders empty text (from 'answer'). Fix the row, or set "
            "`on_error: skip` to set such rows aside in the rejects artifact") in failure(project)
    put(project, "data/arr.json", '[{"messages": [{"role": "user", "content": "x"}]}, {"messages": "x"}]')
    project.spec(spec("data/arr.json"))
    assert "data/arr.json[1]: missing a non-empty 'messages' list. Fix the element, or set `on_error: skip`" \
        in failure(project)
    write_parquet(project.root / "data/t.parquet", {"question": ["q", "q"], "answer": ["a", None]})
    project.spec(spec("data/t.parquet", map=QA_MAP))
    assert "data/t.parquet row 2: field 'answer' is null (used in map.assistant). Fix the row" in failure(project)


def test_max_reject_rate_fails_a_run_that_rejects_too_much(project) -> None:
    put(project, "data/chat.jsonl", "\n".join([line(chat("ok")), "{", line({"q": 1}), line({"q": 2})]) + "\n")
    project.spec(spec("data/chat.jsonl", "skip"))  # 3 of 4 is over the default 0.5
    text = failure(project)
    assert ("3 of 4 records were rejected (75%), more than max_reject_rate 0.5: the format or the mapping is "
            "probably wrong. Most common: unknown_shape ×2 (first: data/chat.jsonl:3: missing a non-empty "
            "'messages' list") in text
    assert "; bad_json ×1 (first: data/chat.jsonl:2: not valid JSON (" in text
    assert "raise max_reject_rate" in text
    assert list((project.cache / "objects").glob("*/*")) == []  # nothing published
    project.spec(spec("data/chat.jsonl", "skip", max_reject_rate=0.75))  # the limit itself is allowed
    project.ok("run", "p.yaml")
    assert summary(project) == {"records": 1, "rejected": 3, "files": 1,
                                "rejected_by_reason": {"bad_json": 1, "unknown_shape": 2}}
    put(project, "data/chat.jsonl", "\n".join([line(chat("ok")), "{"]) + "\n")
    project.spec(spec("data/chat.jsonl", "skip"))  # exactly half is not more than 0.5
    project.ok("run", "p.yaml")


# A catalog of malformed records and the reason each gets: (file, record, expected reason).
SHARE = "conversations"
MALFORMED_JSONL: list[tuple[bytes, str, str]] = [
    (b'{"messages": [', "bad_json", "not valid JSON ("),
    (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', "not_utf8", "not UTF-8 (byte offset 46 in the line)"),
    (b"[1, 2]", "not_object", "expected a JSON object, got list"),
    (b'"just text"', "not_object", "expected a JSON object, got string"),
    (b'{"messages": "hi"}', "no_messages", "missing a non-empty 'messages' list"),
    (b'{"messages": [{"role": "user", "content": "x"}], "meta": 5}', "bad_meta",
     "'meta' must be an object when present (got number)"),
    (b'{"messages": [{"role": "user", "content": "x"}], "tools": {"a": 1}}', "bad_tools",
     "'tools' must be a list of objects"),
    (b'{"messages": [{"role": "user", "content": "x"}], "parallel_tool_calls": "yes"}', "bad_tools",
     "'parallel_tool_calls' must be true or false"),
    (b'{"messages": [{"role": "assistant", "content": null, "tool_calls": {"id": 1}}]}', "bad_message",
     "messages[0].tool_calls must be a list of objects"),
    (b'{"messages": [{"role": "user"}]}', "bad_content", "messages[0].content must be a string"),
    (b'{"messages": [{"role": "narrator", "content": "x"}]}', "unknown_role",
     'messages[0].role must be one of system, user, assistant, tool (got "narrator")'),
    (b'{"input": "hi", "preferred_output": [], "non_preferred_output": []}', "bad_dpo",
     "a DPO record needs 'input': {\"messages\": [...]} (got string)"),
    (b'{"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": [{"role": "user", '
     b'"content": "a"}], "non_preferred_output": [{"role": "assistant", "content": "b"}]}', "bad_dpo",
     'preferred_output[0].role must be assistant (got "user")'),
    (b'{"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": [{"role": "assistant", '
     b'"content": "a"}]}', "no_messages", "missing a non-empty 'non_preferred_output' list"),
    (b'{"prompt": "hi", "completion": "yo"}', "unknown_shape",
     "missing a non-empty 'messages' list, and not a DPO, ShareGPT or Alpaca record either (its fields: prompt, "
     "completion); set `preset`, or `map` to build messages from fields"),
    (b'{"conversations": [{"from": "robot", "value": "x"}]}', "unknown_role",
     "conversations[0].from must be one of system, human, user, gpt, assistant, function_call, observation, tool "
     '(got "robot")'),
    (b'{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}]}', "empty_content",
     "conversations[1].value is empty"),
    (b'{"conversations": [{"from": "human", "value": 3}]}', "bad_content",
     "conversations[0].value must be a string (got number)"),
    (b'{"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "weather(Oslo)"}]}',
     "bad_function_call", "conversations[1]: a function_call value must be JSON"),
    (b'{"conversations": [{"from": "human", "value": "q"}, {"from": "observation", "value": "snow"}]}',
     "bad_function_call", "conversations[1] is a 'observation' turn with no function_call before it to answer"),
    (b'{"conversations": []}', "no_messages", "missing a non-empty 'conversations' list"),
    (b'{"instruction": "Add 2 and 2"}', "missing_field", "missing field 'output'"),
    (b'{"instruction": " ", "output": "4"}', "empty_content", "'instruction' is empty"),
    (b'{"instruction": "Add", "output": 4}', "bad_field", "'output' must be a string (got number)"),
    (b'{"instruction": "Add", "output": "4", "history": [["only one"]]}', "bad_field",
     "'history' must be a list of [instruction, response] pairs of non-empty text"),
]
MALFORMED_NESTED: list[tuple[str, str, str]] = [
    (line({"answer": "a"}), "missing_field", "missing field 'meta.q' (used in sources[1].map.user)"),
    (line({"meta": {"q": "q"}, "answer": None}), "missing_field",
     "field 'answer' is null (used in sources[1].map.assistant)"),
    (line({"meta": {"q": "q"}, "answer": {"text": "a"}}), "bad_field",
     "field 'answer' is an object, not text (used in sources[1].map.assistant); name a value inside it, such as "
     "{answer.KEY}"),
    (line({"meta": {"q": "  "}, "answer": "a"}), "empty_content",
     "sources[1].map.user renders empty text (from 'meta.q')"),
]
MALFORMED_CSV: list[tuple[bytes, str, str]] = [
    (b"q,a,extra", "field_count", "the row has 3 fields but the header has 2; quote fields that contain the delimiter"),
    (b'q,"a"b', "bad_csv", "not valid CSV (',' expected after '\"'); quote fields that hold the delimiter"),
    (b"q,", "empty_content", "sources[0].map.assistant renders empty text (from 'answer')"),
    (b"q,caf\xe9", "not_utf8", "not UTF-8 (in column 'answer')"),
]


def test_malformed_records_go_to_rejects_with_their_reasons(project) -> None:
    good = line(chat("fine")).encode()
    put(project, "data/chat.jsonl", b"\n".join([good, *(r for r, _, _ in MALFORMED_JSONL), good]) + b"\n")
    put(project, "data/nested.jsonl", "\n".join([line({"meta": {"q": "q"}, "answer": "a"}),
                                                 *(r for r, _, _ in MALFORMED_NESTED)]) + "\n")
    put(project, "data/qa.csv", b"question,answer\n" + b"\n".join([b"q,a", *(r for r, _, _ in MALFORMED_CSV)]) + b"\n")
    put(project, "data/arr.json", '[{"messages": tru}, ' + line(chat("ok")) + ",]")
    project.spec(spec('"data/*"', "skip", max_reject_rate=1, sources=[
        {"match": "*.csv", "map": {"user": "{question}", "assistant": "{answer}"}},
        {"match": "*nested*", "map": {"user": "{meta.q}", "assistant": "{answer}"}}]))
    project.ok("run", "p.yaml")
    rejects = output(project, "rejects")
    got = {(r["source"], r.get("line", r.get("row", r.get("index")))): (r["code"], r["reason"]) for r in rejects}
    expected = {("data/chat.jsonl", i + 2): (code, reason) for i, (_, code, reason) in enumerate(MALFORMED_JSONL)}
    expected |= {("data/nested.jsonl", i + 2): (code, reason) for i, (_, code, reason) in enumerate(MALFORMED_NESTED)}
    expected |= {("data/qa.csv", i + 2): (code, reason) for i, (_, code, reason) in enumerate(MALFORMED_CSV)}
    expected |= {("data/arr.json", 0): ("bad_json", "not valid JSON ("),
                 ("data/arr.json", 2): ("bad_json", "empty element (a stray comma?)")}
    assert sorted(got) == sorted(expected)
    for where, (code, reason) in expected.items():
        assert got[where][0] == code, (where, got[where])
        assert got[where][1].startswith(reason), (where, got[where])
    assert len(expected) >= 30
    records = output(project, "records")
    assert [(r["meta"]["source"], r["meta"].get("line", r["meta"].get("row", r["meta"].get("index"))))
            for r in records] == [("data/arr.json", 1), ("data/chat.jsonl", 1),
                                  ("data/chat.jsonl", len(MALFORMED_JSONL) + 2), ("data/nested.jsonl", 1),
                                  ("data/qa.csv", 1)]
    counts: dict[str, int] = {}
    for code, _ in expected.values():
        counts[code] = counts.get(code, 0) + 1
    assert summary(project) == {"records": 5, "rejected": len(expected), "files": 4, "rejected_by_reason": counts}


# ------------------------------------------------------------------------------------------- workers, order

def test_output_is_identical_with_one_or_two_workers(project) -> None:
    import gzip
    import random

    rng = random.Random(7)
    lines = []
    for i in range(6000):
        if i % 97 == 5:
            lines.append('{"messages": [')  # a reject now and then, to check their order too
        else:
            lines.append(line(chat(f"question {i} " + "word " * rng.randint(0, 40), f"answer {i}")))
    put(project, "data/a.jsonl", "\n".join(lines) + "\n")
    put(project, "data/b.jsonl.gz", gzip.compress(("\n".join(lines[:2500]) + "\n").encode()))
    put(project, "data/c.csv", "question,answer\n" + "".join(
        f"q{i},{'' if i % 89 == 3 else f'a{i}'}\n" for i in range(3000)))
    project.spec(spec('"data/*"', "skip", workers=1, sources=[{"match": "*.csv", "map": QA_MAP}]))
    project.ok("run", "p.yaml")

    def artifacts(*args: str) -> dict[str, Any]:
        info = json.loads(project.ok("show", "p.yaml", "ingest", "--json", *args).stdout)
        return {name: (info["outputs"][name]["path"], info["outputs"][name]["digest"]) for name in info["outputs"]}

    one = artifacts()
    records = output(project, "records")
    assert len(records) == 6000 + 2500 + 3000 - summary(project)["rejected"]
    assert [r["meta"]["line"] for r in records if r["meta"]["source"] == "data/a.jsonl"] == \
        [i + 1 for i in range(6000) if i % 97 != 5]
    for workers in ("2", "0"):  # operational: not in the key, so --force makes it run again
        result = project.ok("run", "p.yaml", "--force", "-S", f"ingest.workers={workers}")
        assert "ingest    done" in result.stdout  # it ran again
        # the same bytes are the same artifact, and the same key
        assert artifacts("-S", f"ingest.workers={workers}") == one
        assert json.loads(project.ok("show", "p.yaml", "ingest", "--json", "-S", f"ingest.workers={workers}")
                          .stdout)["key"] == json.loads(project.ok("show", "p.yaml", "ingest", "--json").stdout)["key"]


def test_empty_files_give_no_records_and_no_error_with_allow_empty(project) -> None:
    empty = {"a.jsonl": "", "b.csv": "", "c.csv": "question,answer\n", "d.json": " [ ] ", "e.tsv": "\n"}
    for name, body in empty.items():
        put(project, f"data/{name}", body)
    project.spec(spec('"data/*"', "skip", sources=[{"match": "*sv", "map": QA_MAP}], allow_empty=True))
    project.ok("run", "p.yaml")
    assert summary(project) == {"records": 0, "rejected": 0, "files": 5, "rejected_by_reason": {}}
    assert output(project, "records") == []


# ------------------------------------------------------------------------------------------- no records at all

def test_no_records_at_all_fails_naming_the_files_and_the_fix(project) -> None:
    put(project, "data/only.jsonl", "\n  \n")
    project.spec(spec("data/only.jsonl"))
    assert ("no records read from data/only.jsonl: the file holds no records (empty, only blank lines, or a header "
            "without rows). Check the input paths and the files' contents, or set `allow_empty: true` on this "
            "stage to pass an empty data set on (the stages after it need records)") in failure(project)
    assert list((project.cache / "objects").glob("*/*")) == []  # nothing published
    for i in range(7):
        put(project, f"data/part{i}.jsonl", "")
    project.spec(spec('"data/part*.jsonl"'))
    assert ("no records read from data/part0.jsonl, data/part1.jsonl, data/part2.jsonl, data/part3.jsonl, "
            "data/part4.jsonl and 2 more files: the files hold no records") in failure(project)


def test_every_record_rejected_fails_with_the_reasons_unless_allow_empty(project) -> None:
    put(project, "data/chat.jsonl", "\n".join(["{", line({"q": 1}), line({"q": 2})]) + "\n")
    project.spec(spec("data/chat.jsonl", "skip", max_reject_rate=1))  # the rate alone lets it through
    text = failure(project)
    assert ("no records read from data/chat.jsonl: all 3 records were rejected (unknown_shape ×2 (first: "
            "data/chat.jsonl:2: missing a non-empty 'messages' list") in text
    assert "; bad_json ×1 (first: data/chat.jsonl:1: not valid JSON (" in text
    assert "Fix the data or the reading settings (format, preset, map), or set `allow_empty: true`" in text
    project.spec(spec("data/chat.jsonl", "skip", max_reject_rate=1, allow_empty=True))
    project.ok("run", "p.yaml")
    assert summary(project) == {"records": 0, "rejected": 3, "files": 1,
                                "rejected_by_reason": {"bad_json": 1, "unknown_shape": 2}}
    assert len(output(project, "rejects")) == 3


def test_allow_empty_is_a_documented_parameter() -> None:
    from tunepipe.stages.ingest import Ingest

    param = Ingest.params_schema["properties"]["allow_empty"]
    assert param["type"] == "boolean" and param["default"] is False and "empty" in param["description"]
