"""The built-in ``clean`` stage through the real CLI on real files, and its text normalization."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import pytest

from tunepipe.data.normalize import CONTROL, UNICODE, WHITESPACE, TextCleaner, dedupe_form
from tunepipe.plugins import Artifact, StageContext
from tunepipe.spec.schema import with_defaults
from tunepipe.stages.clean import Clean

LONG = ("Paris is the capital of France, obviously. Did you really need to ask me that, or were you just "
        "testing whether I know anything about geography at all?")


def chat(user: str | None, assistant: str | None = "ok", system: str | None = None, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages, **extra}


def dpo(user: str, preferred: str, rejected: str, **extra: Any) -> dict[str, Any]:
    return {"input": {"messages": [{"role": "user", "content": user}]},
            "preferred_output": [{"role": "assistant", "content": preferred}],
            "non_preferred_output": [{"role": "assistant", "content": rejected}], **extra}


def write_jsonl(project, rel: str, records: list[Any]) -> None:
    project.write(rel, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def spec(with_: str = "", records: str = "ingest.records") -> str:
    text = "stages:\n"
    if records == "ingest.records":
        text += "  ingest:\n    uses: ingest\n    inputs: {data: data/chat.jsonl}\n"
    text += f"  clean:\n    uses: clean\n    inputs: {{records: {records}}}\n"
    if with_:
        text += f"    with: {with_}\n"
    return text


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def outputs(project) -> dict[str, Any]:
    info = json.loads(project.ok("show", "p.yaml", "clean", "--json").stdout)
    folders = {name: Path(out["path"]) for name, out in info["outputs"].items()}
    return {"records": read_jsonl(folders["records"] / "records.jsonl"),
            "rejects": read_jsonl(folders["rejects"] / "rejects.jsonl"),
            "report": json.loads((folders["report"] / "report.json").read_text(encoding="utf-8")),
            "changes": read_jsonl(folders["report"] / "changes.jsonl"),
            "summary": info["summary"]}


# --- end to end -----------------------------------------------------------------------------------

def test_cleans_redacts_dedupes_and_accounts_for_every_record(project) -> None:
    tool_chat = {"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "weather", "arguments": "{\"city\": \"Paris\", \"to\": \"me@x.org\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "Sunny. As usual, you could have looked outside."}]}
    write_jsonl(project, "data/chat.jsonl", [
        chat("  Hi  there,\tMarv.  Mail me at bob@example.com  ", "Fine.\n\n\n\nCall +44 20 7946 0958.",
             system="Marv is a factual chatbot that is also sarcastic."),                  # 1 kept, changed
        chat("hi there, marv. mail me at BOB@example.com", "fine.\n\ncall +44 20 7946 0958.",
             system="Another system prompt: not compared."),                              # 2 exact dup of 1
        chat("Capital of France?", LONG),                                                # 3 kept
        chat("Capital of France?", LONG + " Honestly."),                                 # 4 near dup of 3
        chat("Is anybody there?", "  \n\t "),                                            # 5 no assistant reply
        chat(" ", "\u200b"),                                                             # 6 empty conversation
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "\x07"},
                      {"role": "user", "content": "Cafe\u0301?"}, {"role": "assistant", "content": "Yes."}]},  # 7
        tool_chat,                                                                       # 8 kept, redacted args
        chat("Untouched question?", "Untouched answer."),                                # 9 kept as is
    ])
    project.spec(spec())
    result = project.ok("run", "p.yaml")
    assert "clean     done" in result.stdout
    out = outputs(project)
    meta = lambda n: {"source": "data/chat.jsonl", "line": n}  # noqa: E731
    assert out["records"] == [
        {"messages": [{"role": "system", "content": "Marv is a factual chatbot that is also sarcastic."},
                      {"role": "user", "content": "Hi there, Marv. Mail me at [EMAIL]"},
                      {"role": "assistant", "content": "Fine.\n\nCall [PHONE]."}], "meta": meta(1)},
        {**chat("Capital of France?", LONG), "meta": meta(3)},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Café?"},
                      {"role": "assistant", "content": "Yes."}], "meta": meta(7)},
        {"messages": [tool_chat["messages"][0],
                      {**tool_chat["messages"][1], "tool_calls": [{
                          "id": "c1", "type": "function",
                          "function": {"name": "weather", "arguments": "{\"city\": \"Paris\", \"to\": \"[EMAIL]\"}"}}]},
                      *tool_chat["messages"][2:]], "meta": meta(8)},
        {**chat("Untouched question?", "Untouched answer."), "meta": meta(9)},
    ]
    row = {"source": "data/chat.jsonl", "stage": "clean"}  # the layout every stage shares (tunepipe.data.rejects)
    assert out["rejects"] == [
        {**row, "line": 2, "code": "exact_duplicate", "reason": "exact duplicate", "duplicate_of": "data/chat.jsonl:1"},
        {**row, "line": 4, "code": "near_duplicate", "reason": "near duplicate", "duplicate_of": "data/chat.jsonl:3",
         "similarity": out["rejects"][1]["similarity"]},
        {**row, "line": 5, "code": "no_assistant_reply", "reason": "no assistant reply"},
        {**row, "line": 6, "code": "empty_conversation", "reason": "empty conversation"},
    ]
    assert list(out["rejects"][1]) == ["source", "line", "stage", "code", "reason", "duplicate_of", "similarity"]
    assert 0.85 <= out["rejects"][1]["similarity"] < 1
    assert out["changes"] == [
        {**meta(1), "changes": {"whitespace": 2, "email": 1, "phone": 1}},
        {**meta(7), "changes": {"control_chars": 1, "empty_turns": 1, "unicode": 1}},
        {**meta(8), "changes": {"email": 1}},
    ]
    report = out["report"]
    assert {k: report[k] for k in ("records_in", "records_out", "dropped", "changed")} == {
        "records_in": 9, "records_out": 5, "dropped": 4, "changed": 3}
    assert report["dropped_by_reason"] == {"empty conversation": 1, "exact duplicate": 1, "near duplicate": 1,
                                           "no assistant reply": 1}
    assert report["redacted"] == {"email": 2, "phone": 1, "credit_card": 0, "secret": 0}
    assert report["changes"] == {"control_chars": 1, "empty_turns": 1, "redacted": 2, "unicode": 1, "whitespace": 1}
    assert report["dedupe"]["mode"] == "near" and report["dedupe"]["indexed"] == 5
    assert (report["dedupe"]["bands"], report["dedupe"]["rows"]) == (7, 9)
    assert report["tokens"] is None  # no token limits: nothing counted
    assert out["summary"] == {"records_in": 9, "records_out": 5, "dropped": 4, "redacted": 3, "duplicates": 1,
                              "near_duplicates": 1}
    assert "cached" in project.ok("run", "p.yaml").stdout


def test_every_reason_is_counted_for_chat_and_dpo_records(project) -> None:
    write_jsonl(project, "data/mixed.jsonl", [
        chat("Hello world", "Hello world"),                              # 1 kept: 15 tokens
        chat("hi", "ok"),                                                # 2 too few tokens (13)
        chat("Hello world", "Hello world, how are you today?"),          # 3 too many tokens (21)
        chat("Nobody answers", ""),                                      # 4 no assistant reply
        chat("", None),                                                  # 5 empty conversation
        chat("HELLO   world", "hello WORLD"),                            # 6 exact duplicate of 1
        dpo("Pick one", "Sure thing", "No way"),                         # 7 kept
        dpo("Pick one", "sure  thing", "Absolutely not"),                # 8 exact duplicate of 7 (input + preferred)
        dpo(" ", "Sure", "No"),                                          # 9 empty prompt
        dpo("Pick again", "", "No"),                                     # 10 empty preferred output
        dpo("Pick again", "Yes", "\t"),                                  # 11 empty non-preferred output
        dpo("Pick again", "Same answer.", "same   ANSWER."),             # 12 identical outputs
    ])
    project.spec(spec("{min_tokens: 14, max_tokens: 20, dedupe: exact}", records="data/mixed.jsonl"))
    project.ok("run", "p.yaml")
    out = outputs(project)
    # records without meta keep none; their provenance is the input file and line
    assert out["records"] == [chat("Hello world", "Hello world"), dpo("Pick one", "Sure thing", "No way")]
    reasons = {r["line"]: r["reason"] for r in out["rejects"]}
    assert reasons == {
        2: "too few tokens", 3: "too many tokens", 4: "no assistant reply", 5: "empty conversation",
        6: "exact duplicate", 8: "exact duplicate", 9: "empty prompt", 10: "empty preferred output",
        11: "empty non-preferred output", 12: "preferred and non-preferred outputs are identical"}
    assert len(set(reasons.values())) == 9
    by_line = {r["line"]: r for r in out["rejects"]}
    assert by_line[2] == {"source": "data/mixed.jsonl", "line": 2, "stage": "clean", "code": "too_few_tokens",
                          "reason": "too few tokens", "tokens": 13, "min_tokens": 14}
    assert {r["code"] for r in out["rejects"]} == {
        "too_few_tokens", "too_many_tokens", "no_assistant_reply", "empty_conversation", "exact_duplicate",
        "empty_prompt", "empty_preferred_output", "empty_non_preferred_output", "identical_outputs"}
    assert by_line[3]["tokens"] == 21 and by_line[3]["max_tokens"] == 20
    assert by_line[6]["duplicate_of"] == "data/mixed.jsonl:1" and by_line[8]["duplicate_of"] == "data/mixed.jsonl:7"
    report = out["report"]
    assert report["tokens"] == {"encoding": "o200k_base", "min_tokens": 14, "max_tokens": 20}
    assert sum(report["dropped_by_reason"].values()) == report["dropped"] == 10
    assert report["records_in"] == 12 and report["records_out"] == 2
    assert "near_threshold" not in report["dedupe"]


def test_the_token_count_follows_the_model_or_encoding(project) -> None:
    write_jsonl(project, "data/chat.jsonl", [chat("東京は日本の首都です。", "Привет, мир! Как дела?")])
    project.spec(spec("{max_tokens: 30}"))  # o200k_base: 27 tokens
    project.ok("run", "p.yaml")
    assert outputs(project)["report"]["records_out"] == 1
    project.spec(spec("{max_tokens: 30, model: gpt-4, allow_empty: true}"))  # cl100k_base: 34 tokens: dropped
    project.ok("run", "p.yaml")
    out = outputs(project)
    assert out["rejects"][0]["tokens"] == 34 and out["report"]["tokens"]["encoding"] == "cl100k_base"
    project.spec(spec("{max_tokens: 30, encoding: cl100k_base, allow_empty: true}"))
    project.ok("run", "p.yaml")
    assert outputs(project)["rejects"][0]["tokens"] == 34


@pytest.mark.parametrize(("with_", "message"), [
    ("{min_tokens: 50, max_tokens: 10}", "min_tokens (50) is larger than max_tokens (10)"),
    ("{model: gpt-4, encoding: o200k_base, max_tokens: 10}", "model gpt-4 uses the encoding cl100k_base"),
    ("{model: not-a-model, max_tokens: 10}", "tiktoken does not know the model 'not-a-model'"),
])
def test_inconsistent_parameters_are_user_errors(project, with_: str, message: str) -> None:
    write_jsonl(project, "data/chat.jsonl", [chat("a")])
    project.spec(spec(with_))
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert "clean: " + message not in result.stderr  # the runner names the stage, once


def test_schema_errors_are_caught_before_running(project) -> None:
    write_jsonl(project, "data/chat.jsonl", [chat("a")])
    project.spec(spec("{redact: [email, ssn], near_treshold: 0.9}"))
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2
    assert "unknown parameter 'near_treshold'" in result.stderr and "did you mean 'near_threshold'?" in result.stderr
    assert "ssn" in result.stderr


def test_a_record_clean_cannot_read_fails_with_its_line(project) -> None:
    project.write("data/bad.jsonl", json.dumps(chat("fine")) + "\n" + '{"prompt": "hi"}\n')
    project.spec(spec(records="data/bad.jsonl"))
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2
    assert "data/bad.jsonl:2: not a record clean can read (neither a chat record" in result.stderr
    assert "pass ingest.records" in result.stderr and "Traceback" not in result.output


def test_an_input_without_jsonl_files_is_a_user_error(project) -> None:
    project.spec("stages:\n  emit:\n    uses: tp_testplugins:Emit\n"
                 "  clean:\n    uses: clean\n    inputs: {records: emit.out}\n")
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2
    assert "emit.out: holds no .jsonl file; pass the records of ingest" in result.stderr


def test_dedupe_modes_and_prompt_keys(project) -> None:
    write_jsonl(project, "data/chat.jsonl", [
        chat("Capital of France?", LONG),
        chat("Capital of France?", LONG + " Honestly."),        # near duplicate of 1
        chat("capital of  FRANCE?", "Paris. Next question."),   # same prompt, other answer
        chat("Capital of France?", LONG),                       # exact duplicate of 1
    ])
    expected = {
        "none": [],
        "exact": [(4, "exact duplicate")],
        "near": [(2, "near duplicate"), (4, "exact duplicate")],
    }
    for mode, rejects in expected.items():
        project.spec(spec(f"{{dedupe: {mode}}}"))
        project.ok("run", "p.yaml")
        assert [(r["line"], r["reason"]) for r in outputs(project)["rejects"]] == rejects, mode
    project.spec(spec("{dedupe: exact, dedupe_on: prompt}"))
    project.ok("run", "p.yaml")
    rejects = outputs(project)["rejects"]
    assert [(r["line"], r["duplicate_of"]) for r in rejects] == [(n, "data/chat.jsonl:1") for n in (2, 3, 4)]


def test_near_threshold_decides(project) -> None:
    edited = LONG.replace("geography", "maps")  # 3 of 28 shingles differ: similarity about 0.8
    write_jsonl(project, "data/chat.jsonl", [chat("Q?", LONG), chat("Q?", edited)])
    project.spec(spec())
    project.ok("run", "p.yaml")
    assert outputs(project)["rejects"] == []
    project.spec(spec("{near_threshold: 0.6, num_perm: 128, shingle_size: 2}"))
    project.ok("run", "p.yaml")
    (reject,) = outputs(project)["rejects"]
    assert reject["reason"] == "near duplicate" and 0.6 <= reject["similarity"] < 0.95


def test_redaction_kinds_and_normalization_options(project) -> None:
    text = "Ｍａｉｌ bob@example.com,   card 4111 1111 1111 1111,\n\n\n\nkey AKIAIOSFODNN7EXAMPLE"
    write_jsonl(project, "data/chat.jsonl", [chat(text, "ok")])
    project.spec(spec("{redact: [credit_card, secret]}"))
    project.ok("run", "p.yaml")
    out = outputs(project)
    assert out["records"][0]["messages"][0]["content"] == \
        "Ｍａｉｌ bob@example.com, card [CREDIT_CARD],\n\nkey [SECRET]"
    assert out["report"]["redacted"] == {"credit_card": 1, "secret": 1}
    project.spec(spec("{redact: [], unicode_form: NFKC, whitespace: false}"))
    project.ok("run", "p.yaml")
    out = outputs(project)
    assert out["records"][0]["messages"][0]["content"] == text.replace("Ｍａｉｌ", "Mail")
    assert out["report"]["redacted"] == {} and out["summary"]["redacted"] == 0
    project.spec(spec("{max_blank_lines: 0}"))
    project.ok("run", "p.yaml")
    assert outputs(project)["records"][0]["messages"][0]["content"] == \
        "Ｍａｉｌ [EMAIL], card [CREDIT_CARD],\nkey [SECRET]"


def test_provenance_keeps_rows_and_indexes_from_meta(project) -> None:
    write_jsonl(project, "data/recs.jsonl", [
        chat("Same question", "Same answer", meta={"source": "data/qa.csv", "row": 7}),
        chat("same question", "same answer", meta={"source": "data/qa.csv", "row": 9}),
        chat("Same question", "Same answer", meta={"source": "hub", "index": 3}),
        chat("Lonely", "", meta={"source": "hub", "index": 4}),
    ])
    project.spec(spec(records="data/recs.jsonl"))
    project.ok("run", "p.yaml")
    dup = {"stage": "clean", "code": "exact_duplicate", "reason": "exact duplicate",
           "duplicate_of": "data/qa.csv:row 7"}  # a row is named as a row
    assert outputs(project)["rejects"] == [
        {"source": "data/qa.csv", "row": 9, **dup},
        {"source": "hub", "index": 3, **dup},
        {"source": "hub", "index": 4, "stage": "clean", "code": "no_assistant_reply", "reason": "no assistant reply"},
    ]


def test_an_empty_input_gives_empty_outputs_with_allow_empty(project) -> None:
    project.write("data/empty.jsonl", "\n")
    project.spec(spec("{allow_empty: true}", records="data/empty.jsonl"))
    project.ok("run", "p.yaml")
    out = outputs(project)
    assert out["records"] == out["rejects"] == out["changes"] == []
    assert out["summary"] == {"records_in": 0, "records_out": 0, "dropped": 0, "redacted": 0, "duplicates": 0,
                              "near_duplicates": 0}


def test_no_record_left_fails_with_the_count_per_reason_and_the_fix(project) -> None:
    write_jsonl(project, "data/chat.jsonl", [chat("Hello world", "Hello world, how are you today?"),  # 21 tokens
                                            chat("Nobody answers", ""), chat("Hello world", "Hello there, you")])
    project.spec(spec("{max_tokens: 15}"))
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert ("clean dropped all 3 records of ingest.records (too many tokens 2, no assistant reply 1), so nothing is "
            "left. Fix the data or the settings (raise max_tokens), or set `allow_empty: true` on this stage to pass "
            "an empty data set on (the stages after it need records)") in " ".join(result.stderr.split())
    assert project.run("show", "p.yaml", "clean").exit_code == 2  # nothing published
    project.spec(spec("{max_tokens: 15, allow_empty: true}"))
    project.ok("run", "p.yaml")
    out = outputs(project)
    assert out["records"] == [] and len(out["rejects"]) == 3
    assert out["report"]["dropped_by_reason"] == {"no assistant reply": 1, "too many tokens": 2}


def test_an_empty_input_is_a_user_error_in_the_plugin_itself(tmp_path: Path) -> None:
    from tunepipe.errors import UserError

    data = tmp_path / "data.jsonl"
    data.write_text("\n")
    with pytest.raises(UserError, match=r"^data.jsonl holds no records, so clean has nothing to keep: .* set "
                                        r"`allow_empty: true`"):
        run_direct(tmp_path / "run", data, threads=1)
    assert not (tmp_path / "run" / "report" / "report.json").exists()  # no report of a failed run
    data.write_text(json.dumps(chat("same", "answer")) + "\n" + json.dumps(chat(" ", "")) + "\n")
    with pytest.raises(UserError, match=r"dropped all 2 records of data.jsonl \(too many tokens 1, empty "
                                        r"conversation 1\)"):
        run_direct(tmp_path / "again", data, threads=1, max_tokens=3)


def test_max_index_bounds_the_dedupe_index(project) -> None:
    write_jsonl(project, "data/chat.jsonl", [chat("first", "a"), chat("second", "b"), chat("third", "c"),
                                            chat("first", "a"), chat("third", "c")])
    project.spec(spec("{max_index: 2}"))
    project.ok("run", "p.yaml")
    out = outputs(project)
    # the third record was kept but not indexed: its copy stays; the first's copy is still caught
    assert [(r["line"], r["reason"]) for r in out["rejects"]] == [(4, "exact duplicate")]
    assert out["report"]["dedupe"]["indexed"] == 2 and out["report"]["dedupe"]["index_full"] is True


# --- the same output with one worker process or two -----------------------------------------------

def generated(n: int, seed: int = 11) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    words = ("marv sarcastic answer question paris france capital obviously map river mountain ocean planet "
             "physics history poem number seven twelve because however really").split()
    out: list[dict[str, Any]] = []
    for i in range(n):
        roll = rng.random()
        if out and roll < 0.08:
            out.append(rng.choice(out))                                  # exact duplicate
        elif out and roll < 0.14:
            base = rng.choice(out)
            msgs = [dict(m) for m in base["messages"]]
            msgs[-1]["content"] = msgs[-1]["content"] + " Obviously."  # near duplicate
            out.append({"messages": msgs})
        else:
            q = " ".join(rng.choice(words) for _ in range(rng.randint(4, 20)))
            a = " ".join(rng.choice(words) for _ in range(rng.randint(12, 60)))
            if roll > 0.9:
                a += rng.choice([" mail me at ann@example.org", " call +1 (555) 123-4567", "\n\n\n\nbye  now",
                                 " key sk-proj-Zx8f9Qk2LmN4pR7sT1vWaB3c", ""])
            out.append(chat(q + "?", a, system="Marv is a factual chatbot that is also sarcastic."))
    return out


def run_direct(tmp: Path, data: Path, threads: int, **params: Any) -> dict[str, bytes]:
    outs = {name: tmp / name for name in ("records", "rejects", "report")}
    for p in outs.values():
        p.mkdir(parents=True)
    (tmp / "scratch").mkdir()
    ctx = StageContext(stage="clean", key="k", outputs=outs, scratch=tmp / "scratch",
                       log=logging.getLogger("test.clean"), threads=threads)
    plugin = Clean()
    summary = plugin.run(ctx, {"records": Artifact(data, "digest", "data.jsonl")},
                         with_defaults(plugin.params_schema, params))
    files = {f"{p.parent.name}/{p.name}": p.read_bytes() for p in sorted(tmp.glob("*/*.json*"))}
    files["summary"] = json.dumps(summary).encode()
    return files


def test_one_and_two_worker_processes_give_identical_output(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in generated(3000)), encoding="utf-8")
    one = run_direct(tmp_path / "one", data, threads=1, max_tokens=80)
    two = run_direct(tmp_path / "two", data, threads=2, max_tokens=80)
    assert one == two
    summary = json.loads(one["summary"])
    assert summary["records_in"] == 3000
    assert summary["duplicates"] > 100 and summary["near_duplicates"] > 50 and summary["redacted"] > 20
    report = json.loads(one["report/report.json"])
    assert report["dropped_by_reason"]["too many tokens"] > 0
    assert report["records_out"] + report["dropped"] == 3000


def test_two_clean_stages_with_different_settings_run_at_once(project) -> None:
    records = [chat(f"Question {i}: write to ann{i}@example.org", f"Answer {i}.  Sure.") for i in range(1500)]
    write_jsonl(project, "data/chat.jsonl", records)
    project.spec(spec("{redact: [], whitespace: false}")
                 + "  other:\n    uses: clean\n    inputs: {records: ingest.records}\n")
    project.ok("run", "p.yaml", "-j", "2")
    plain = outputs(project)["records"]
    assert [r["messages"] for r in plain] == [r["messages"] for r in records]
    info = json.loads(project.ok("show", "p.yaml", "other", "--json").stdout)
    cleaned = read_jsonl(Path(info["outputs"]["records"]["path"]) / "records.jsonl")
    assert [r["messages"][0]["content"] for r in cleaned] == [f"Question {i}: write to [EMAIL]" for i in range(1500)]
    assert {r["messages"][1]["content"] for r in cleaned[:3]} == {"Answer 0. Sure.", "Answer 1. Sure.",
                                                                  "Answer 2. Sure."}


# --- text normalization (tunepipe.data.normalize) -------------------------------------------------

@pytest.mark.parametrize(("text", "expected", "flags"), [
    ("plain text", "plain text", 0),
    ("  trim me \n", "trim me", WHITESPACE),
    ("a  b\t\tc \t d", "a b c d", WHITESPACE),
    ("line one   \nline two\t", "line one\nline two", WHITESPACE),
    ("para\n\n\n\n\npara", "para\n\npara", WHITESPACE),
    ("keep\n\none blank line", "keep\n\none blank line", 0),
    ("windows\r\nand old mac\rends", "windows\nand old mac\nends", WHITESPACE),
    ("Cafe\u0301", "Café", UNICODE),
    ("bell\x07 and nul\x00 and zero\u200bwidth\ufeff", "bell and nul and zerowidth", CONTROL),
    ("tab\tand\nnewline stay", "tab and\nnewline stay", WHITESPACE),
    ("non\u00a0breaking\u3000space", "non breaking space", WHITESPACE),
    ("emoji 👩\u200d💻 keeps its joiner", "emoji 👩\u200d💻 keeps its joiner", 0),
    ("  - indented list\n    - nested  item", "- indented list\n    - nested item", WHITESPACE),
])
def test_text_cleaner(text: str, expected: str, flags: int) -> None:
    assert TextCleaner().clean(text) == (expected, flags)


def test_code_fences_are_kept_verbatim() -> None:
    text = ("Here:  look\n\n\n\n```python\ndef f(x):\n    return  x  # aligned\n\n\n\n    pass\n```\n"
            "after   fence\n~~~\n  a\t b\n~~~")
    cleaned, _ = TextCleaner().clean(text)
    assert cleaned == ("Here: look\n\n```python\ndef f(x):\n    return  x  # aligned\n\n\n\n    pass\n```\n"
                       "after fence\n~~~\n  a\t b\n~~~")


def test_unicode_forms_and_options() -> None:
    assert TextCleaner("NFKC").clean("ﬁne Ｆｕｌｌ①") == ("fine Full1", UNICODE)
    assert TextCleaner("NFC").clean("ﬁne") == ("ﬁne", 0)
    assert TextCleaner("none").clean("Cafe\u0301") == ("Cafe\u0301", 0)
    assert TextCleaner(whitespace=False).clean(" a  b \x07") == (" a  b ", CONTROL)
    assert TextCleaner(max_blank_lines=2).clean("a\n\n\n\n\nb") == ("a\n\n\nb", WHITESPACE)
    with pytest.raises(ValueError, match="unknown Unicode form"):
        TextCleaner("NFD")


def test_dedupe_form_casefolds_and_collapses_whitespace() -> None:
    assert dedupe_form("  Straße\n\tIS   Big ") == "strasse is big"


# --- the shortcut, the blocks, the staged lines ---------------------------------------------------

ASCII_PIECES = ["Paris", "is", "the", "capital", "OK", "I", "A", "CA", "IA", "Bearer", "eyJ", "AIza", "42", "2024",
                "12345678", "4111 1111 1111 1111", "+44 20 7946 0958", "(555) 123-4567", "bob@example.com", "@",
                "api_key=Zx8f9Qk2LmN4pR7sT1vW", "AKIAIOSFODNN7EXAMPLE", "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
                "token:", "-", "_", ".", "?", "x" * 30, "\n", "\n\n", "\n\n\n", "a \nb", '"quoted"', "```", "\t", "\\"]


def ascii_text(rng: random.Random) -> str:
    if rng.random() < 0.6:  # a tidy text, with a line break at times
        return rng.choice([" ", " ", " ", "\n", "\n\n"]).join(rng.choices(ASCII_PIECES[:5], k=rng.randint(1, 9)))
    words = [rng.choice(ASCII_PIECES) if rng.random() < 0.3 else rng.choice(ASCII_PIECES[:5])
             for _ in range(rng.choice([0, 1, 2, 5, 12]))]
    text = rng.choices([" ", "", "  ", "\n"], weights=[80, 5, 5, 10])[0].join(words)
    edge = ["", " ", "  ", "\n"], [70, 15, 5, 10]
    return rng.choices(*edge)[0] + text + rng.choices(*edge)[0]


def random_message(rng: random.Random) -> Any:
    role = rng.choice(["system", "user", "assistant", "assistant", "tool", "user"])
    roll = rng.random()
    if roll < 0.7:
        return {"role": role, "content": ascii_text(rng)}
    if roll < 0.8:
        return {"role": role, "content": [{"type": "text", "text": ascii_text(rng)},
                                          {"type": "image_url", "image_url": {"url": "x"}},
                                          {"type": "text", "text": ascii_text(rng)}][:rng.randint(0, 3)]}
    if roll < 0.88:
        return {"role": "assistant", "content": rng.choice([None, "", ascii_text(rng)]),
                "tool_calls": [{"id": "c1", "type": "function",
                                "function": {"name": "f", "arguments": '{"to": "%s"}' % rng.choice(ASCII_PIECES)}}]}
    if roll < 0.93:
        return {"role": role, "name": "x", "content": ascii_text(rng)}
    if roll < 0.97:
        return {"role": role}  # no content
    return {"role": role, "content": rng.choice([None, [], 0])}


def random_record(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.15:
        record: dict[str, Any] = {
            "input": {"messages": [random_message(rng) for _ in range(rng.randint(0, 3))]},
            "preferred_output": [random_message(rng) for _ in range(rng.randint(0, 2))],
            "non_preferred_output": [random_message(rng) for _ in range(rng.randint(0, 2))]}
    else:
        record = {"messages": [random_message(rng) for _ in range(rng.randint(0, 4))]}
    if rng.random() < 0.3:
        record["meta"] = {"source": "a.jsonl", "line": 3}
    return record


@pytest.mark.parametrize("params", [{}, {"dedupe": "exact"}, {"dedupe_on": "prompt"}, {"whitespace": False},
                                    {"redact": []}, {"redact": ["phone", "secret"]}, {"redact": ["email"]},
                                    {"max_blank_lines": 0}, {"max_blank_lines": 2, "unicode_form": "none"}])
def test_the_shortcut_gives_what_cleaning_text_by_text_gives(params: dict[str, Any]) -> None:
    """Records of plain lines: the shortcut (a plain line, tidy texts) and the text-by-text path agree on
    the record, the reason, the changes (in their order: changes.jsonl) and the dedupe texts."""
    from tunepipe.data.cleaning import NOT_PLAIN, RecordCleaner, plain_line
    from tunepipe.stages.clean import _config

    cleaner = RecordCleaner(_config(with_defaults(Clean().params_schema, params)))
    rng = random.Random(7)
    shortcut = multiline = 0
    for _ in range(4000):
        line = json.dumps(random_record(rng), ensure_ascii=False).encode()
        plain = plain_line(line)
        if not plain:
            continue
        fast_changes: dict[str, int] = {}
        full_changes: dict[str, int] = {}
        record = json.loads(line)
        fast = cleaner.clean(record, plain, fast_changes)
        full = cleaner.clean(json.loads(line), NOT_PLAIN, full_changes)
        assert fast == full and list(fast_changes.items()) == list(full_changes.items()), line
        if isinstance(fast, dict):
            assert full is not record
            tidy = fast is record  # the shortcut, and no turn dropped
            assert cleaner.dedupe_texts(fast, tidy) == cleaner.dedupe_texts(full, False), line
            shortcut += tidy
            multiline += tidy and b"\\n" in line
    assert shortcut > 200 and multiline > 50


def test_plain_lines() -> None:
    from tunepipe.data.cleaning import NOT_PLAIN, PLAIN, PLAIN_BREAKS, plain_line

    assert plain_line(b'{"a": "b c"}') == PLAIN
    assert plain_line(b'{"a": "b\\nc \\"d\\""}') == PLAIN_BREAKS
    for line in (b'{"a": "tab\\t"}', b'{"a": "\\\\n"}', b'{"a": "\\u00e9"}', '{"a": "é"}'.encode(), b'{"a": "\x7f"}'):
        assert plain_line(line) == NOT_PLAIN, line


def test_bom_crlf_blank_lines_and_blocks_give_the_lines_every_stage_gives(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Records without meta are named by their file and physical line, as jsonl.iter_lines numbers them,
    whatever the block size and number of workers."""
    import tunepipe.stages.clean as clean_module
    from tunepipe.data import jsonl

    lines = [json.dumps(chat(f"question {i}", "" if i % 7 == 3 else f"answer {i}"), separators=(",", ":")).encode()
             for i in range(60)]  # compact: what clean writes
    body = b"\xef\xbb\xbf" + b"\n".join(lines[:10]) + b"\r\n\r\n  \n" + b"\n".join(lines[10:40]) + b"\r\r\n\n"
    body += b"\n".join(lines[40:])  # a last line without a newline
    data = tmp_path / "data.jsonl"
    data.write_bytes(body)
    want = [n for n, raw in jsonl.iter_lines(data) if json.loads(raw)["messages"][1]["content"] == ""]
    results = []
    for size, threads in ((1 << 20, 1), (1, 2), (64, 1), (700, 2)):
        monkeypatch.setattr(clean_module, "BLOCK_BYTES", size)
        got = run_direct(tmp_path / f"{size}-{threads}", data, threads=threads)
        assert [json.loads(x)["line"] for x in got["rejects/rejects.jsonl"].splitlines()] == want
        results.append(got)
    assert all(r == results[0] for r in results)
    assert results[0]["records/records.jsonl"] == b"".join(x + b"\n" for i, x in enumerate(lines) if i % 7 != 3)


def test_lines_are_numbered_per_file_of_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tunepipe.stages.clean as clean_module

    folder = tmp_path / "records"
    folder.mkdir()
    for name in ("a.jsonl", "b.jsonl"):
        (folder / name).write_text("".join(json.dumps(chat(f"{name} {i}", "" if i == 5 else "ok")) + "\n"
                                           for i in range(9)), encoding="utf-8")
    monkeypatch.setattr(clean_module, "BLOCK_BYTES", 200)  # a few lines a block
    out = run_direct(tmp_path / "run", folder, threads=2)
    rejects = [json.loads(x) for x in out["rejects/rejects.jsonl"].splitlines()]
    assert [(r["source"], r["line"]) for r in rejects] == [("data.jsonl/a.jsonl", 6), ("data.jsonl/b.jsonl", 6)]


def test_small_blocks_give_the_same_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tunepipe.stages.clean as clean_module

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in generated(600)), encoding="utf-8")
    whole = run_direct(tmp_path / "whole", data, threads=1)
    monkeypatch.setattr(clean_module, "BLOCK_BYTES", 5000)
    small = run_direct(tmp_path / "small", data, threads=2)
    whole_report = json.loads(whole.pop("report/report.json"))
    small_report = json.loads(small.pop("report/report.json"))
    for report in (whole_report, small_report):
        del report["dedupe"]["index_bytes"]  # the index grows by blocks
    assert whole == small and whole_report == small_report


def test_kept_lines_are_copied_around_the_duplicates(tmp_path: Path) -> None:
    from tunepipe.data.clean_passes import copy_kept
    from tunepipe.data.outfile import OutputFile

    lines = [b'{"a":1}', b'{"b":22}', b"{}", b'{"d":4444}', b'{"e":5}']
    staged = tmp_path / "staged.jsonl"
    staged.write_bytes(b"".join(x + b"\n" for x in lines))
    for n, dups in enumerate(([], [0], [4], [1, 2], [0, 1, 2, 3, 4], [0, 2, 4], [3])):
        out = tmp_path / f"out{n}"
        for source in (staged, staged.read_bytes()):  # staged by a worker, or handed over by this process
            with OutputFile(out) as f:
                f.write(b"before\n")
                assert copy_kept(f, source, [len(x) for x in lines], dups) == len(lines) - len(dups)
            assert out.read_bytes() == b"before\n" + b"".join(x + b"\n" for i, x in enumerate(lines) if i not in dups)
    with OutputFile(tmp_path / "empty") as f:
        assert copy_kept(f, tmp_path / "none", [], []) == 0  # nothing staged: nothing read


def test_a_bad_line_in_a_later_block_is_named_by_its_file_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tunepipe.stages.clean as clean_module
    from tunepipe.errors import UserError

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(chat(f"q{i}")) + "\n" for i in range(40)) + "\n{not json\n", encoding="utf-8")
    monkeypatch.setattr(clean_module, "BLOCK_BYTES", 300)
    with pytest.raises(UserError, match=r"^data.jsonl:42: not a record clean can read \(unexpected"):
        run_direct(tmp_path / "run", data, threads=2)
    assert not list((tmp_path / "run" / "scratch").iterdir())  # the staged lines are gone
