"""The built-in ``format`` stage, run through the real CLI on real files with real tokenizers."""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Any

import pytest

from tunepipe.data import models
from tunepipe.data.report import Distribution, default_epochs, estimate_cost
from tunepipe.plugins import Artifact, StageContext
from tunepipe.stages.format import Format

SYSTEM = {"role": "system", "content": "You are Marv."}
# 34 tokens as the cookbook counts them, in o200k_base and cl100k_base (see tests/data/test_tokens.py);
# the assistant reply "Four, obviously." is 4 tokens.
MARV = [SYSTEM, {"role": "user", "content": "What is 2+2?", "name": "marv"},
        {"role": "assistant", "content": "Four, obviously.", "weight": 1}]
SHORT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]  # 14 tokens, o200k_base
USER = {"role": "user", "content": "Is water wet?"}
REPLY = {"role": "assistant", "content": "Obviously."}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
TOOL_CHAT = {"messages": [SYSTEM, {"role": "user", "content": "Weather in Paris?"},
                          {"role": "assistant", "content": None, "tool_calls": [CALL]},
                          {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
                          {"role": "assistant", "content": "Rain. Shocking.", "weight": 1}],
             "tools": TOOLS, "parallel_tool_calls": False}


def line(record: Any) -> str:
    return record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)


def spec(params: dict[str, Any] | None = None, *, stage: str = "format", tokenizer: str | None = None) -> str:
    text = f"stages:\n  {stage}:\n    uses: format\n    inputs:\n      records: data/records.jsonl\n"
    if tokenizer:
        text += f"      tokenizer: {tokenizer}\n"
    if params:
        text += f"    with: {json.dumps(params)}\n"
    return text


def setup(project, records: list[Any], params: dict[str, Any] | None = None, **kw: Any) -> None:
    project.write("data/records.jsonl", "".join(line(r) + "\n" for r in records))
    project.spec(spec(params, **kw))


def with_meta(records: list[dict[str, Any]], offset: int = 0) -> list[dict[str, Any]]:
    """Records as ingest writes them: provenance in meta (here: line = record number + offset)."""
    return [{**r, "meta": {"source": "data/chat.jsonl", "line": i + offset}} for i, r in enumerate(records, start=1)]


def show(project, stage: str = "format") -> dict[str, Any]:
    return json.loads(project.ok("show", "p.yaml", stage, "--json").stdout)


def read_jsonl(project, output: str, name: str, stage: str = "format") -> list[Any]:
    path = Path(show(project, stage)["outputs"][output]["path"]) / name
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def report(project, stage: str = "format") -> tuple[dict[str, Any], str]:
    folder = Path(show(project, stage)["outputs"]["report"]["path"])
    return json.loads((folder / "report.json").read_text()), (folder / "report.md").read_text()


# ------------------------------------------------------------------------------------------------
# openai-chat


def test_openai_chat_keeps_meta_counts_tokens_and_reports_the_headline(project) -> None:
    setup(project, with_meta([{"messages": MARV}] * 10))
    result = project.ok("run", "p.yaml")
    assert "format    done" in result.stdout
    # 10 examples x 34 tokens; 10 examples -> the cookbook's rule gives min(25, 100 // 10) = 10 epochs;
    # gpt-4o-mini-2024-07-18 at $3.00 per 1M training tokens (the built-in estimate)
    headline = {"examples": 10, "invalid": 0, "warnings": 0, "tokens_p50": 34, "billable_tokens": 3400,
                "epochs": 10, "est_cost_usd": 0.0102}
    assert show(project)["summary"] == headline
    examples = read_jsonl(project, "examples", "examples.jsonl")
    assert examples == [{"messages": MARV, "meta": {"source": "data/chat.jsonl", "line": i}} for i in range(1, 11)]
    assert read_jsonl(project, "rejects", "rejects.jsonl") == []
    rep, md = report(project)
    assert rep["headline"] == {**headline, "records": 10}
    assert rep["model"] == "gpt-4o-mini-2024-07-18" and rep["token_counter"] == "tiktoken o200k_base"
    assert rep["stats"]["tokens_per_example"] == {"count": 10, "min": 34, "max": 34, "mean": 34.0,
                                                  "p5": 34, "p50": 34, "p95": 34}
    assert rep["stats"]["assistant_tokens_per_example"]["p50"] == 4
    assert rep["stats"]["messages_per_example"]["max"] == 3
    assert rep["token_limit"] == {"model": "gpt-4o-mini-2024-07-18", "limit": 65536, "source": "table",
                                  "over_limit": 0, "note": None}
    assert rep["cost"]["price_per_1m_tokens"] == 3.0 and "estimate as of 2026-11-25" in rep["cost"]["price_source"]
    assert rep["errors"] == {} and rep["warnings"] == {} and rep["problems"]["total"] == 0
    for text in ("| examples written | 10 |", "| invalid examples | 0 |", "| tokens per example (p50) | 34 |",
                 "| billable tokens | 3,400 |", "| epochs | 10 |", "| estimated cost (USD) | 0.0102 |",
                 "Training context of `gpt-4o-mini-2024-07-18`: 65,536 tokens", "$0.0102 at $3.00 per 1M"):
        assert text in md, text
    assert "format    cached" in project.ok("run", "p.yaml").stdout


def test_tool_calling_and_weights_are_written_as_given(project) -> None:
    weighted = {"messages": [SYSTEM, USER, {**REPLY, "weight": 0}, USER, {**REPLY, "weight": 1}]}
    records = [TOOL_CHAT, weighted] + [{"messages": MARV}] * 8
    setup(project, records)
    project.ok("run", "p.yaml")
    assert read_jsonl(project, "examples", "examples.jsonl") == records  # no meta in, none out
    assert show(project)["summary"]["invalid"] == 0


def test_formatted_examples_read_from_another_stage_come_out_unchanged(project) -> None:
    records = with_meta([TOOL_CHAT] + [{"messages": MARV}] * 9)
    setup(project, records)
    project.write("p.yaml", spec() + "  again:\n    uses: format\n    inputs: {records: format.examples}\n")
    project.ok("run", "p.yaml")
    assert read_jsonl(project, "examples", "examples.jsonl", stage="again") == \
        read_jsonl(project, "examples", "examples.jsonl") == records
    rep, _ = report(project, "again")
    assert rep["input"] == "format.examples" and show(project, "again")["summary"] == show(project)["summary"]


def test_invalid_examples_fail_the_stage_with_record_numbers_and_provenance(project) -> None:
    records = [{"messages": MARV}] * 12
    records[2] = {"messages": [SYSTEM, USER, {**REPLY, "weight": 2}]}
    records[6] = {"messages": [SYSTEM, USER]}
    records[8] = {"messages": [SYSTEM, {**USER, "weight": 1}, USER, REPLY]}
    setup(project, with_meta(records, offset=1))  # provenance differs from the record number
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2, result.output
    err = result.stderr
    assert "3 of 12 examples in data/records.jsonl are invalid (" in err
    for count in ("invalid_weight 2", "example_missing_assistant_message 1", "consecutive_user_messages 1"):
        assert count in err
    assert "record 3 (data/chat.jsonl:4): error invalid_weight: messages[2].weight must be 0 or 1 (got 2)" in err
    assert "record 7 (data/chat.jsonl:8): error example_missing_assistant_message: no assistant message" in err
    assert ("record 9 (data/chat.jsonl:10): error invalid_weight: messages[1]: 'weight' is allowed only on "
            "assistant messages (found on a user message)") in err
    assert "record 9 (data/chat.jsonl:10): error consecutive_user_messages: messages[2]: two user messages" in err
    assert "set `on_invalid: skip`" in err and "Traceback" not in result.output
    assert project.run("show", "p.yaml", "format").exit_code == 2  # nothing published


def test_skip_sets_every_invalid_example_aside_with_its_reasons(project) -> None:
    user = {"role": "user", "content": "hi"}
    lines: list[Any] = [
        {"messages": MARV},                                                                  # 1 valid
        '{"messages": [',                                                                    # 2
        [1, 2],                                                                              # 3
        {"prompt": "hi", "completion": "yo"},                                                # 4
        {"messages": [SYSTEM, {"content": "hi"}, REPLY]},                                    # 5
        {"messages": [SYSTEM, {**user, "mood": "bad"}, REPLY]},                              # 6
        {"messages": [SYSTEM, {"role": "human", "content": "hi"}, REPLY]},                   # 7
        {"messages": [SYSTEM, {"role": "user", "content": ""}, REPLY]},                      # 8
        {"messages": [SYSTEM, user]},                                                        # 9
        {"messages": [SYSTEM, {**user, "weight": 0}, REPLY]},                                # 10
        {"messages": [SYSTEM, user, {**REPLY, "weight": 2}]},                                # 11
        {**TOOL_CHAT, "messages": [SYSTEM, user, {"role": "assistant", "tool_calls": [
            {**CALL, "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}]},  # 12
        {**TOOL_CHAT, "messages": [SYSTEM, user, {"role": "assistant", "tool_calls": [CALL]},
                                   {"role": "tool", "tool_call_id": "call_2", "content": "x"}, REPLY]},  # 13
        {"messages": [user, SYSTEM, REPLY]},                                                 # 14
        {"messages": [SYSTEM, user, user, REPLY]},                                           # 15
        {"input": {"messages": [user]}, "preferred_output": [REPLY], "non_preferred_output": [REPLY]},  # 16
        TOOL_CHAT,                                                                           # 17 valid
        {"messages": SHORT},                                                                 # 18 valid, a warning
    ]
    setup(project, lines, {"on_invalid": "skip", "min_examples": 3})  # 3 valid: the report still warns
    result = project.ok("run", "p.yaml")
    assert "format    done" in result.stdout
    rejects = read_jsonl(project, "rejects", "rejects.jsonl")
    # one row layout for every stage (tunepipe.data.rejects): the first error is the code and reason
    assert list(rejects[0]) == ["source", "line", "stage", "code", "reason", "example"]
    assert {(r["source"], r["stage"]) for r in rejects} == {("data/records.jsonl", "format")}
    reasons = {r["line"]: [r["code"]] + [x["code"] for x in r.get("more_errors", [])] for r in rejects}
    assert reasons == {
        2: ["invalid_json"], 3: ["data_type"], 4: ["missing_messages_list"], 5: ["message_missing_key"],
        6: ["message_unrecognized_key"], 7: ["unrecognized_role"], 8: ["missing_content"],
        9: ["example_missing_assistant_message"], 10: ["invalid_weight"], 11: ["invalid_weight"],
        12: ["invalid_tool_calls"], 13: ["invalid_tool_message", "unanswered_tool_call"],
        14: ["misplaced_system_message"],
        15: ["consecutive_user_messages"], 16: ["wrong_example_kind"],
    }
    messages = {r["line"]: r["reason"] for r in rejects}
    assert messages[11] == "messages[2].weight must be 0 or 1 (got 2)"
    assert messages[10] == "messages[1]: 'weight' is allowed only on assistant messages (found on a user message)"
    assert messages[13] == "messages[3].tool_call_id 'call_2' matches no call of messages[2] (call_1)"
    assert messages[2].startswith("not valid JSON (")
    assert next(r for r in rejects if r["line"] == 3)["example"] == [1, 2]  # the original, to fix it
    assert next(r for r in rejects if r["line"] == 2)["example"] == '{"messages": ['
    assert next(r for r in rejects if r["line"] == 13)["more_errors"] == [  # the other errors, in order
        {"code": "unanswered_tool_call",
         "reason": "messages[2]: tool call 'call_1' gets no tool message before messages[4]"}]
    assert [e.get("messages") for e in read_jsonl(project, "examples", "examples.jsonl")] == \
        [MARV, TOOL_CHAT["messages"], SHORT]
    summary = show(project)["summary"]
    assert (summary["examples"], summary["invalid"]) == (3, 15)
    problems = read_jsonl(project, "report", "problems.jsonl")
    assert {"record": 18, "source": None, "severity": "warning", "category": "missing_system_message",
            "message": "no system message"} in problems
    assert problems[-1]["category"] == "too_few_examples" and problems[-1]["record"] is None
    rep, md = report(project)
    assert rep["errors"]["invalid_weight"] == 2 and rep["warnings"]["too_few_examples"] == 1
    assert sum(rep["errors"].values()) + sum(rep["warnings"].values()) == rep["problems"]["total"] == len(problems)
    assert summary["warnings"] == sum(rep["warnings"].values())
    assert len(rep["problems"]["first"]) == 20  # list_problems
    assert "| `invalid_weight` | 2 |" in md and "| `too_few_examples` | 1 |" in md
    assert "- record 2: error invalid_json: not valid JSON (" in md
    assert "## Data set\n\n- warning `too_few_examples`: 3 valid example(s); OpenAI needs at least 10" in md


def test_fewer_examples_than_openai_accepts_fail_unless_min_examples_relaxes_it(project) -> None:
    setup(project, with_meta([{"messages": MARV}] * 9))
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert ("format wrote 9 valid examples (of 9 records in data/records.jsonl): fewer than 10, OpenAI's minimum for "
            "a fine-tuning file (openai-chat): the job would be refused. Add or fix examples (50-100 good ones "
            "usually show clear gains), or set `min_examples: 9` on this stage to go on anyway") \
        in " ".join(result.stderr.split())
    assert project.run("show", "p.yaml", "format").exit_code == 2  # nothing published
    setup(project, with_meta([{"messages": MARV}] * 9), {"min_examples": 9})
    project.ok("run", "p.yaml")
    rep, md = report(project)
    assert rep["warnings"] == {"too_few_examples": 1}  # the cookbook check's verdict stays in the report
    assert "## Data set\n\n- warning `too_few_examples`: 9 valid example(s); OpenAI needs at least 10" in md
    setup(project, with_meta([{"messages": MARV}] * 12), {"min_examples": 20})
    text = " ".join(project.run("run", "p.yaml").stderr.split())
    assert "format wrote 12 valid examples (of 12 records in data/records.jsonl): fewer than min_examples: 20." in text


def test_the_dpo_target_has_the_same_minimum(project) -> None:
    good = {"input": {"messages": [SYSTEM, USER]}, "preferred_output": [REPLY],
            "non_preferred_output": [{"role": "assistant", "content": "Yes."}]}
    setup(project, [good] * 3 + [{"messages": MARV}], {"target": "openai-dpo", "on_invalid": "skip"})
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2
    assert ("format wrote 3 valid examples (of 4 records in data/records.jsonl; 1 invalid, set aside: "
            "wrong_example_kind 1): fewer than 10, OpenAI's minimum for a fine-tuning file (openai-dpo)") \
        in " ".join(result.stderr.split())


def test_the_minimum_follows_the_target_and_zero_allows_an_empty_result(tmp_path) -> None:
    from tunepipe.errors import UserError
    from tunepipe.stages.format import min_examples

    assert min_examples({"target": "openai-chat"}) == min_examples({"target": "openai-dpo", "min_examples": None}) == 10
    assert min_examples({"target": "hf-chat-template"}) == 1
    assert min_examples({"target": "openai-chat", "min_examples": 0}) == 0
    records = tmp_path / "records.jsonl"
    records.write_text('{"messages": [\n' + json.dumps({"messages": [SYSTEM, USER]}) + "\n")
    with pytest.raises(UserError, match=r"^format wrote no valid example \(of 2 records in records.jsonl; 2 invalid, "
                                        r"set aside: invalid_json 1, example_missing_assistant_message 1\): fewer "
                                        r"than 10, .* or set `min_examples: 0` on this stage"):
        run_plugin(tmp_path / "default", records, threads=1)
    # the report is written only when the stage succeeds: never half of one
    assert sorted(p.name for p in (tmp_path / "default" / "report").iterdir()) == ["problems.jsonl"]
    out = run_plugin(tmp_path / "zero", records, threads=1, min_examples=0)
    assert json.loads(out["summary"])["examples"] == 0 and json.loads(out["report/report.json"])["warnings"] == {
        "too_few_examples": 1}


def test_the_report_is_written_whole_or_not_at_all(tmp_path, monkeypatch) -> None:
    from tunepipe.data import report as report_module

    def broken(_: Any) -> str:
        raise RuntimeError("rendering failed")

    monkeypatch.setattr(report_module, "render_markdown", broken)
    with pytest.raises(RuntimeError):
        report_module.write_report(tmp_path, {"headline": {}})
    assert list(tmp_path.iterdir()) == []


def test_over_limit_examples_user_tables_epochs_and_cost(project) -> None:
    records = [{"messages": SHORT}] * 10
    records[1] = records[4] = {"messages": MARV}
    params = {"model": "my-model", "encoding": "o200k_base", "context_limits": {"my-model": 30},
              "prices": {"my-model": 2.0}}
    setup(project, records, params)
    project.ok("run", "p.yaml")
    # per epoch: 8 x 14 + 2 x min(30, 34) = 172; 10 examples -> 10 epochs; 1,720 tokens at $2 per 1M
    # warnings: 2 over the limit, and 8 examples without a system message
    assert show(project)["summary"] == {"examples": 10, "invalid": 0, "warnings": 10, "tokens_p50": 14,
                                        "billable_tokens": 1720, "epochs": 10, "est_cost_usd": 0.0034}
    problems = [p for p in read_jsonl(project, "report", "problems.jsonl") if p["category"] == "over_token_limit"]
    assert [p["record"] for p in problems] == [2, 5]
    assert problems[0]["message"] == ("34 tokens, over the 30-token training context of my-model: "
                                      "the rest is truncated")
    rep, md = report(project)
    assert rep["token_limit"]["over_limit"] == 2 and rep["token_limit"]["source"] == "param"
    assert rep["cost"]["price_source"] == "parameter 'prices'"
    assert rep["stats"]["tokens_per_example"] == {"count": 10, "min": 14, "max": 34, "mean": 18.0,
                                                  "p5": 14, "p50": 14, "p95": 34}
    assert "Training context of `my-model`: 30 tokens (param); 2 example(s) over it" in md
    assert "- record 5: warning over_token_limit: 34 tokens" in md

    project.spec(spec({**params, "epochs": 2}))  # an explicit epochs override
    project.ok("run", "p.yaml")
    summary = show(project)["summary"]
    assert (summary["epochs"], summary["billable_tokens"], summary["est_cost_usd"]) == (2, 344, 0.0007)

    project.spec(spec({"model": "my-model", "encoding": "o200k_base"}))  # no limit, no price known
    project.ok("run", "p.yaml")
    summary = show(project)["summary"]
    # (8 x 14 + 2 x 34) x 10 epochs, nothing clipped
    assert (summary["billable_tokens"], summary["est_cost_usd"], summary["warnings"]) == (1800, None, 8)
    rep, md = report(project)
    assert rep["token_limit"]["limit"] is None
    assert "no price known for my-model: add it with the 'prices' parameter" in md
    assert "Training context: unknown for `my-model`" in md


def test_an_unknown_model_without_an_encoding_is_a_user_error(project) -> None:
    setup(project, [{"messages": SHORT}] * 10, {"model": "my-model"})
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2
    assert "tiktoken does not know the model 'my-model'" in result.stderr and "encoding: o200k_base" in result.stderr


def test_parameters_are_checked_against_the_schema(project) -> None:
    setup(project, [{"messages": SHORT}], {"targte": "openai-chat"})
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2 and "unknown parameter 'targte'" in result.stderr and "target" in result.stderr
    project.spec(spec({"context_limits": {"my-model": "big"}}))
    assert project.run("run", "p.yaml").exit_code == 2


# ------------------------------------------------------------------------------------------------
# openai-dpo


def test_openai_dpo_target(project) -> None:
    good = {"input": {"messages": [SYSTEM, USER]},
            "preferred_output": [{"role": "assistant", "content": "Obviously."}],
            "non_preferred_output": [{"role": "assistant", "content": "Yes, water is wet."}]}
    records = [good] * 10 + [
        {**good, "input": {"messages": [SYSTEM, USER, REPLY, USER]}},                           # 11
        {"messages": MARV},                                                                     # 12
        {**good, "preferred_output": [{"role": "assistant", "content": None, "tool_calls": [CALL]}]},  # 13
    ]
    setup(project, records, {"target": "openai-dpo", "on_invalid": "skip"})
    project.ok("run", "p.yaml")
    assert read_jsonl(project, "examples", "examples.jsonl") == [good] * 10
    reasons = {r["line"]: [r["code"]] + [x["code"] for x in r.get("more_errors", [])]
               for r in read_jsonl(project, "rejects", "rejects.jsonl")}
    assert reasons == {11: ["dpo_multi_turn_input"], 12: ["wrong_example_kind"],
                       13: ["dpo_invalid_output", "dpo_invalid_output"]}  # null content, and tool_calls
    # the longer pair: system + user + "Yes, water is wet." = 30 tokens; preferred reply "Obviously." = 2
    summary = show(project)["summary"]
    assert (summary["examples"], summary["invalid"], summary["tokens_p50"], summary["billable_tokens"]) == \
        (10, 3, 30, 3000)
    rep, _ = report(project)
    assert rep["stats"]["assistant_tokens_per_example"]["p50"] == 2 and rep["stats"]["messages_per_example"]["p50"] == 3


# ------------------------------------------------------------------------------------------------
# hf-chat-template, with the real SmolLM2 tokenizer (loaded once here and once by the stage)


@pytest.fixture(scope="module")
def smollm2() -> Any:
    from transformers import AutoTokenizer

    path = models.packaged_model_file("smollm2-135m-instruct")
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)


def without_weight(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k != "weight"} for m in messages]


def test_hf_chat_template_renders_as_the_tokenizer_does_with_assistant_spans(project, smollm2, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    multi = {"messages": [SYSTEM, USER, {**REPLY, "weight": 0}, {"role": "user", "content": "And fire?"},
                          {"role": "assistant", "content": "Hot. Who knew.", "weight": 1}]}
    records = [{"messages": MARV}, multi, {"messages": SHORT}, TOOL_CHAT]
    setup(project, records, {"target": "hf-chat-template", "on_invalid": "skip"})
    project.ok("run", "p.yaml")
    examples = read_jsonl(project, "examples", "examples.jsonl")
    assert [e["messages"] for e in examples] == [r["messages"] for r in records[:3]]
    for ex in examples:
        msgs = ex["messages"]
        assert ex["text"] == smollm2.apply_chat_template(without_weight(msgs), tokenize=False)
        assert ex["tokens"] == len(smollm2(ex["text"], add_special_tokens=False)["input_ids"])
        turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
        assert len(ex["assistant_spans"]) == len(turns)
        for i, span in zip(turns, ex["assistant_spans"]):
            prompt = smollm2.apply_chat_template(without_weight(msgs[:i]), tokenize=False, add_generation_prompt=True)
            assert ex["text"][: span["start"]] == prompt  # the prompt prefix of this turn
            assert ex["text"][span["start"]: span["end"]] == msgs[i]["content"] + "<|im_end|>\n"
            assert span["weight"] == msgs[i].get("weight", 1)
    assert [s["weight"] for s in examples[1]["assistant_spans"]] == [0, 1]  # weight 0: do not train on it
    # SmolLM2's template cannot render a null content (a tool call): a template error, set aside
    (reject,) = read_jsonl(project, "rejects", "rejects.jsonl")
    assert reject["line"] == 4 and reject["code"] == "chat_template_error"
    rep, md = report(project)
    assert rep["tokenizer"] == "smollm2-135m-instruct" and rep["token_counter"] == "the tokenizer itself"
    assert rep["token_limit"]["limit"] == 8192
    assert rep["cost"]["usd"] is None and rep["cost"]["note"] == "local training: no API price"
    assert rep["stats"]["tokens_per_example"]["max"] == max(e["tokens"] for e in examples)
    summary = show(project)["summary"]
    assert summary["est_cost_usd"] is None and summary["examples"] == 3 and summary["warnings"] == 1  # SHORT


TEMPLATE = ("{% for m in messages %}"
            "{% if 'boom' in m.content %}{{ raise_exception('no booms here') }}{% endif %}"
            "{% if loop.last and m.role == 'user' and 'odd' in m.content %}[odd]{% endif %}"
            "<{{ m.role }}>{{ m.content }}</s>"
            "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")


def test_hf_chat_template_from_a_tokenizer_folder_input(project, smollm2, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = project.root / "tok"
    smollm2.save_pretrained(str(folder))
    (folder / "chat_template.jinja").write_text(TEMPLATE)
    records = [{"messages": SHORT}, {"messages": [{"role": "user", "content": "boom"}, REPLY]},
               {"messages": [{"role": "user", "content": "odd"}, REPLY]}]
    project.write("data/records.jsonl", "".join(line(r) + "\n" for r in records))
    project.spec(spec({"target": "hf-chat-template", "on_invalid": "skip", "context_limits": {"tok": 10}},
                      tokenizer="tok"))
    project.ok("run", "p.yaml")
    (ex,) = read_jsonl(project, "examples", "examples.jsonl")
    assert ex["text"] == "<user>Hi</s><assistant>Hello.</s>"
    assert ex["assistant_spans"] == [{"start": len("<user>Hi</s><assistant>"), "end": len(ex["text"]), "weight": 1}]
    rejects = {r["line"]: r for r in read_jsonl(project, "rejects", "rejects.jsonl")}
    assert rejects[2]["code"] == "chat_template_error" and "no booms here" in rejects[2]["reason"]
    assert rejects[3]["code"] == "chat_template_error" and "not prefix-stable" in rejects[3]["reason"]
    rep, _ = report(project)
    assert rep["tokenizer"] == "tok" and rep["token_limit"]["limit"] == 10 and rep["token_limit"]["over_limit"] == 1
    # the tokenizer folder is an input: editing its template reruns the stage
    (folder / "chat_template.jinja").write_text(TEMPLATE.replace("</s>", "</end>"))
    assert "format    done" in project.ok("run", "p.yaml").stdout
    assert read_jsonl(project, "examples", "examples.jsonl")[0]["text"] == "<user>Hi</end><assistant>Hello.</end>"


# ------------------------------------------------------------------------------------------------
# both cores, same bytes


def run_plugin(tmp: Path, records: Path, threads: int, name: str = "records.jsonl", **more: Any) -> dict[str, bytes]:
    outputs = {name: tmp / name for name in ("examples", "report", "rejects")}
    for folder in [*outputs.values(), tmp / "scratch"]:
        folder.mkdir(parents=True)
    ctx = StageContext(stage="format", key="k", outputs=outputs, scratch=tmp / "scratch",
                       log=logging.getLogger(f"test.format.{threads}"), threads=threads)
    params = {"target": "openai-chat", "model": "gpt-4o-mini-2024-07-18", "encoding": None,
              "tokenizer": "smollm2-135m-instruct", "on_invalid": "skip", "epochs": None, "context_limits": {},
              "prices": {}, "list_problems": 20, **more}
    summary = Format().run(ctx, {"records": Artifact(records, "digest", name)}, params)
    files = {f"{p.parent.name}/{p.name}": p.read_bytes() for folder in outputs.values() for p in folder.iterdir()}
    return {**files, "summary": json.dumps(summary).encode()}


def test_the_output_is_identical_with_one_and_two_workers(tmp_path, monkeypatch) -> None:
    from tunepipe.stages import format as format_stage

    monkeypatch.setattr(format_stage, "BLOCK_BYTES", 1 << 16)  # 4,500 records in 18 blocks: both workers work
    kinds = [{"messages": MARV}, TOOL_CHAT, {"messages": SHORT}, {"messages": [SYSTEM, USER]},
             {"messages": [SYSTEM, {**USER, "weight": 1}, REPLY]}, "not json"]
    path = tmp_path / "records.jsonl"
    with open(path, "w") as f:
        for i in range(4500):
            r = kinds[i % len(kinds)]
            f.write((r if isinstance(r, str) else json.dumps({**r, "meta": {"source": "gen", "line": i}})) + "\n")
    one = run_plugin(tmp_path / "one", path, threads=1)
    two = run_plugin(tmp_path / "two", path, threads=2)
    assert one.keys() == two.keys() and len(one) == 6
    assert one == two
    summary = json.loads(one["summary"])
    assert (summary["examples"], summary["invalid"]) == (2250, 2250)


def test_records_are_numbered_per_file_as_read_line_by_line_whatever_the_block_size(tmp_path, monkeypatch) -> None:
    """Workers read blocks of whole lines by byte offset; record numbers still count every line of a
    file (blank ones too), a byte-order mark and CRLF endings are handled, a last line needs no newline."""
    from tunepipe.data import jsonl
    from tunepipe.data.chat import is_error, validate
    from tunepipe.stages import format as format_stage

    good = json.dumps({"messages": MARV})
    long = json.dumps({"messages": [SYSTEM, {"role": "user", "content": "why? " * 400}, REPLY]})
    bad = ['{"messages": [', json.dumps({"messages": [SYSTEM, USER]}), json.dumps([1, 2]),
           json.dumps({"messages": [SYSTEM, {"role": ["user"], "content": "hi"}, REPLY]})]
    folder = tmp_path / "recs"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(
        [good, "", bad[0], good, "   ", long, bad[1], good, "", "", bad[2], good]).encode() + b"\r\n\n")
    (folder / "b.jsonl").write_bytes("\n".join([bad[3], good, long, "", bad[0]] + [good] * 20 + [bad[1]]).encode())
    expected = []  # (file, record) of each invalid line, numbered as jsonl.iter_lines numbers them
    for name in ("a.jsonl", "b.jsonl"):
        for lineno, raw in jsonl.iter_lines(folder / name):
            try:
                record = jsonl.loads(raw)
            except jsonl.JSONDecodeError:
                expected.append((f"recs/{name}", lineno))
                continue
            if any(is_error(p) for p in validate(record, "chat")):
                expected.append((f"recs/{name}", lineno))
    assert len(expected) == 6
    runs = []
    for size, threads in ((1, 1), (7, 2), (100, 1), (3000, 2), (1 << 20, 1)):
        monkeypatch.setattr(format_stage, "BLOCK_BYTES", size)
        out = run_plugin(tmp_path / f"run{size}", folder, threads=threads, name="recs")
        rejects = [json.loads(x) for x in out["rejects/rejects.jsonl"].splitlines()]
        assert [(r["source"], r["line"]) for r in rejects] == expected, size
        runs.append(out)
    assert all(run == runs[0] for run in runs)
    summary = json.loads(runs[0]["summary"])
    assert (summary["examples"], summary["invalid"]) == (27, 6)
    examples = [json.loads(x) for x in runs[0]["examples/examples.jsonl"].splitlines()]
    assert examples[0] == {"messages": MARV} and len(examples) == 27


# ------------------------------------------------------------------------------------------------
# statistics, epochs and cost


def test_percentiles_are_exact() -> None:
    values = [7, 1, 3, 3, 10, 2, 8, 5, 9, 4, 6, 100]
    d = Distribution(values)
    s = d.summary()
    ref = statistics.quantiles(values, n=100, method="inclusive")  # numpy's default 'linear' method
    assert (s["p5"], s["p50"], s["p95"]) == (round(ref[4], 2), round(ref[49], 2), round(ref[94], 2))
    assert (s["p5"], s["p50"], s["p95"]) == (1.55, 5.5, 50.5)  # by hand: ranks 0.55, 5.5, 10.45 of 12 sorted values
    assert (s["min"], s["max"], s["mean"], s["count"]) == (1, 100, 13.17, 12)
    assert Distribution([42]).summary()["p5"] == 42
    assert Distribution().summary()["p50"] is None
    many = Distribution(i % 1000 for i in range(100_000))  # memory: 1,000 distinct values, not 100,000
    assert len(many.counts) == 1000 and many.quantiles([0.5]) == [499.5]


@pytest.mark.parametrize(("n", "epochs"), [(5, 20), (50, 3), (100, 3), (30000, 1), (3, 25), (10000, 2), (0, 3)])
def test_the_cookbook_default_epochs_rule(n: int, epochs: int) -> None:
    assert default_epochs(n) == epochs


def test_cost_from_the_price_table_and_from_a_user_price() -> None:
    price = models.price_per_million("gpt-4o-mini-2024-07-18")
    assert (price.value, price.source) == (3.0, "table")
    assert estimate_cost(1_000_000, price.value) == 3.0
    assert models.price_per_million("ft:gpt-4o-2024-08-06:acme::x1").value == 25.0
    assert models.price_per_million("gpt-4o-mini").value == 3.0  # an alias of the fine-tunable snapshot
    user = models.price_per_million("gpt-4o-mini-2024-07-18", {"gpt-4o-mini-2024-07-18": 1.5})
    assert (user.value, user.source) == (1.5, "param")
    assert estimate_cost(2_500_000, user.value) == 3.75
    assert models.price_per_million("my-model").value is None and estimate_cost(10, None) is None
    assert models.context_limit("gpt-3.5-turbo-0613").value == 4096
    assert models.context_limit("gpt-3.5-turbo-0125").value == 16385
    assert models.context_limit("gpt-4.1-mini-2025-04-14").value == 65536
    assert models.context_limit("my-model", {"my-model": 32768}).value == 32768


def test_the_stage_counts_tokens_exactly_as_the_cookbook_counter() -> None:
    from tunepipe.data.cookbook_counts import count_chat as _count_chat
    from tunepipe.data.tokens import count_chat_tokens, get_encoding

    enc = get_encoding("o200k_base")
    for record in (TOOL_CHAT, {"messages": MARV}, {"messages": SHORT},
                   {"messages": [SYSTEM, USER, {**REPLY, "weight": 0}, USER, {**REPLY, "name": "marv"}]}):
        tokens, assistant = _count_chat(enc, record["messages"], record.get("tools"))
        assert tokens == count_chat_tokens(enc, record["messages"], record.get("tools"))
    assert _count_chat(enc, MARV, None) == (34, 4)
    # trained assistant tokens: "Rain. Shocking." and the tool call's JSON; weight 0 replies do not count
    call_tokens = len(enc.encode(json.dumps([CALL], separators=(",", ":"))))
    assert _count_chat(enc, TOOL_CHAT["messages"], TOOLS)[1] == call_tokens + len(enc.encode("Rain. Shocking."))
    weighted = [SYSTEM, USER, {**REPLY, "weight": 0}, USER, {**REPLY, "weight": 1}]
    assert _count_chat(enc, weighted, None)[1] == len(enc.encode("Obviously."))
