"""Validation of chat and DPO examples (tunepipe.data.chat): the cookbook's categories and more."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pytest

from tunepipe.data.chat import CATEGORIES, ERROR, kind_of, provenance, validate

SYSTEM = {"role": "system", "content": "You are Marv."}
USER = {"role": "user", "content": "What's the weather in Paris?"}
REPLY = {"role": "assistant", "content": "Rainy, as usual."}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]


def call(cid: str = "call_1", name: str = "get_weather", arguments: Any = '{"city": "Paris"}') -> dict[str, Any]:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_example(*, tools: Any = TOOLS, calls: Any = None, answers: list[dict[str, Any]] | None = None,
                 end: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    calls = [call()] if calls is None else calls
    answers = [{"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "rain"}'}] if answers is None else answers
    end = [REPLY] if end is None else end
    record = {"messages": [SYSTEM, USER, {"role": "assistant", "content": None, "tool_calls": calls}, *answers, *end],
              **extra}
    if tools is not None:
        record["tools"] = tools
    return record


def chat(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"messages": list(messages or (SYSTEM, USER, REPLY)), **extra}


def categories(record: Any, kind: str = "chat") -> list[str]:
    return [c for c, _ in validate(record, kind)]


def errors(record: Any, kind: str = "chat") -> list[tuple[str, str]]:
    return [(c, m) for c, m in validate(record, kind) if CATEGORIES[c][0] == ERROR]


def cookbook_check(ex: Any) -> set[str]:
    """The OpenAI cookbook's format check (Chat_finetuning_data_prep.ipynb), for one example, verbatim in logic."""
    format_errors: dict[str, int] = defaultdict(int)
    if not isinstance(ex, dict):
        format_errors["data_type"] += 1
        return set(format_errors)
    messages = ex.get("messages", None)
    if not messages:
        format_errors["missing_messages_list"] += 1
        return set(format_errors)
    for message in messages:
        if "role" not in message or "content" not in message:
            format_errors["message_missing_key"] += 1
        if any(k not in ("role", "content", "name", "function_call", "weight") for k in message):
            format_errors["message_unrecognized_key"] += 1
        if message.get("role", None) not in ("system", "user", "assistant", "function"):
            format_errors["unrecognized_role"] += 1
        content = message.get("content", None)
        function_call = message.get("function_call", None)
        if (not content and not function_call) or not isinstance(content, str):
            format_errors["missing_content"] += 1
    if not any(message.get("role", None) == "assistant" for message in messages):
        format_errors["example_missing_assistant_message"] += 1
    return set(format_errors)


# ------------------------------------------------------------------------------------------------
# the cookbook's categories, one by one

COOKBOOK_CASES = [
    ("data_type", ["not", "an", "object"], "expected a JSON object, got list"),
    ("data_type", "just a string", "expected a JSON object, got string"),
    ("missing_messages_list", {"prompt": "hi", "completion": "yo"}, "messages must be a non-empty list"),
    ("missing_messages_list", {"messages": []}, "(got an empty list)"),
    ("message_missing_key", chat(SYSTEM, {"content": "hi"}, REPLY), "messages[1] has no 'role'"),
    ("message_missing_key", chat(SYSTEM, {"role": "user"}, REPLY), "messages[1] has no 'content'"),
    ("message_unrecognized_key", chat(SYSTEM, {**USER, "mood": "grumpy"}, REPLY),
     'messages[1] has unrecognized key "mood"'),
    ("unrecognized_role", chat(SYSTEM, {"role": "human", "content": "hi"}, REPLY),
     'messages[1].role "human" is not one of'),
    ("missing_content", chat(SYSTEM, {"role": "user", "content": ""}, REPLY), "messages[1].content is empty"),
    ("missing_content", chat(SYSTEM, USER, {"role": "assistant", "content": None}), "messages[2].content is null"),
    ("missing_content", chat(SYSTEM, USER, {"role": "assistant", "content": [{"type": "text", "text": "x"}]}),
     "messages[2].content must be a string (got list)"),
    ("example_missing_assistant_message", chat(SYSTEM, USER), "no assistant message"),
]


@pytest.mark.parametrize(("category", "record", "message"), COOKBOOK_CASES,
                         ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(COOKBOOK_CASES)])
def test_each_cookbook_error_category(category: str, record: Any, message: str) -> None:
    found = errors(record)
    assert [c for c, _ in found] == [category], found
    assert message in found[0][1]
    assert category in cookbook_check(record)  # the cookbook flags it under the same name


@pytest.mark.parametrize(("record", "warning"), [
    (chat(USER, REPLY), "missing_system_message"),
    (chat(SYSTEM, REPLY), "missing_user_message"),
])
def test_the_cookbook_warnings(record: dict[str, Any], warning: str) -> None:
    assert validate(record, "chat") == [(warning, "no system message" if "system" in warning else "no user message")]


def test_every_record_the_cookbook_flags_we_flag_under_the_same_category() -> None:
    corpus: list[Any] = [record for _, record, _ in COOKBOOK_CASES] + [
        chat(SYSTEM, {"role": "user", "content": "  "}, REPLY),
        chat({"role": "bot", "content": ""}, REPLY),
        chat(SYSTEM, USER, {"role": "assistant", "content": "x", "extra": 1, "weight": 3}),
        chat({"role": "function", "name": "f", "content": "1"}, REPLY),
        {"messages": None}, 42, chat(SYSTEM, USER, REPLY),
    ]
    for record in corpus:
        ours = set(categories(record))
        expected = cookbook_check(record)
        msgs = record.get("messages") if isinstance(record, dict) else None
        for m in msgs or []:  # the cookbook counts a missing key twice; we report its most specific category
            if "role" not in m:
                expected.discard("unrecognized_role")
            if "content" not in m:
                expected.discard("missing_content")
        assert expected <= ours, (record, expected, ours)


# ------------------------------------------------------------------------------------------------
# what the cookbook gets wrong: tool calling and weights are valid


def test_valid_tool_calling_is_accepted() -> None:
    assert validate(tool_example(), "chat") == []
    assert cookbook_check(tool_example()) >= {"message_unrecognized_key", "unrecognized_role", "missing_content"}
    two = tool_example(calls=[call("a"), call("b")], answers=[
        {"role": "tool", "tool_call_id": "b", "content": "1"}, {"role": "tool", "tool_call_id": "a", "content": "2"}],
        parallel_tool_calls=True)
    assert validate(two, "chat") == []
    ends_with_call = tool_example(answers=[], end=[])  # the model learns to make the call
    assert validate(ends_with_call, "chat") == []
    with_content = tool_example()
    with_content["messages"][2]["content"] = "Let me look."
    assert validate(with_content, "chat") == []


def test_weights_0_and_1_on_assistant_messages_are_accepted() -> None:
    record = chat(SYSTEM, USER, {**REPLY, "weight": 0}, USER, {**REPLY, "weight": 1})
    assert validate(record, "chat") == []
    only_zero = chat(SYSTEM, USER, {**REPLY, "weight": 0})
    assert validate(only_zero, "chat") == [("no_trained_assistant_message", "every assistant message has weight 0")]


# ------------------------------------------------------------------------------------------------
# invalid records beyond the cookbook, each with its expected reason

INVALID = [
    (chat(SYSTEM, {**USER, "weight": 1}, REPLY),
     "invalid_weight", "messages[1]: 'weight' is allowed only on assistant messages (found on a user message)"),
    (chat(SYSTEM, USER, {**REPLY, "weight": 2}), "invalid_weight", "messages[2].weight must be 0 or 1 (got 2)"),
    (chat(SYSTEM, USER, {**REPLY, "weight": True}), "invalid_weight", "messages[2].weight must be 0 or 1 (got true)"),
    (chat(SYSTEM, USER, {**REPLY, "weight": 0.5}), "invalid_weight", "messages[2].weight must be 0 or 1 (got 0.5)"),
    (tool_example(calls=[{"type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]),
     "invalid_tool_calls", "messages[2].tool_calls[0].id must be a non-empty string (got null)"),
    (tool_example(calls=[{**call(), "type": "code"}]),
     "invalid_tool_calls", 'messages[2].tool_calls[0].type must be "function" (got "code")'),
    (tool_example(calls=[call(arguments={"city": "Paris"})]),
     "invalid_tool_calls", "messages[2].tool_calls[0].function.arguments must be a string holding a JSON object "
                           "(got object)"),
    (tool_example(calls=[call(arguments="{city: Paris}")]),
     "invalid_tool_calls", "messages[2].tool_calls[0].function.arguments is not valid JSON"),
    (tool_example(calls=[call(arguments="[1, 2]")]),
     "invalid_tool_calls", "messages[2].tool_calls[0].function.arguments must hold a JSON object (got list)"),
    (tool_example(calls=[call(name="get_time")]),
     "invalid_tool_calls", "messages[2].tool_calls[0] calls 'get_time', which 'tools' does not declare"),
    (tool_example(calls=[]), "invalid_tool_calls", "messages[2].tool_calls must be a non-empty list"),
    (tool_example(calls=[call(), call()], answers=[{"role": "tool", "tool_call_id": "call_1", "content": "1"}]),
     "invalid_tool_calls", "messages[2].tool_calls[1].id 'call_1' is used twice"),
    (tool_example(answers=[{"role": "tool", "content": "1"}]),
     "invalid_tool_message", "messages[3]: a tool message needs a 'tool_call_id'"),
    (tool_example(answers=[{"role": "tool", "tool_call_id": "call_9", "content": "1"}]),
     "invalid_tool_message", "messages[3].tool_call_id 'call_9' matches no call of messages[2] (call_1)"),
    (chat(SYSTEM, USER, {"role": "tool", "tool_call_id": "x", "content": "1"}, REPLY),
     "invalid_tool_message", "messages[2]: a tool message must follow an assistant message with tool_calls"),
    (tool_example(answers=[]), "unanswered_tool_call",
     "messages[2]: tool call 'call_1' gets no tool message before messages[3]"),
    (tool_example(tools=[{"type": "function", "function": {"name": "get weather"}}], calls=[call(name="x")]),
     "invalid_tools", "tools[0].function.name must match"),
    (tool_example(tools={"get_weather": {}}), "invalid_tools", "tools must be a non-empty list of functions"),
    (tool_example(parallel_tool_calls="yes"), "invalid_tools", "parallel_tool_calls must be true or false"),
    (chat(USER, SYSTEM, REPLY), "misplaced_system_message",
     "messages[1]: a system message may only be the first message"),
    (chat(SYSTEM, USER, USER, REPLY), "consecutive_user_messages",
     "messages[2]: two user messages in a row (messages[1] and this one)"),
    (chat(SYSTEM, {**USER, "name": "Jane Doe"}, REPLY), "invalid_name", 'messages[1].name must match'),
    (chat(SYSTEM, {**USER, "tool_call_id": "x"}, REPLY), "message_unrecognized_key",
     "messages[1] (user) has 'tool_call_id', which only tool messages may have"),
    (chat(SYSTEM, USER, {**REPLY, "tool_calls": [call()], "role": "user"}), "message_unrecognized_key",
     "messages[2] (user) has 'tool_calls', which only assistant messages may have"),
]


@pytest.mark.parametrize(("record", "category", "message"), INVALID,
                         ids=[f"{c}-{i}" for i, (_, c, _) in enumerate(INVALID)])
def test_invalid_records_beyond_the_cookbook(record: dict[str, Any], category: str, message: str) -> None:
    found = errors(record)
    assert (category, message) in [(c, m[: len(message)]) for c, m in found], found


def test_every_problem_of_a_record_is_reported() -> None:
    record = chat({"role": "user", "content": "", "weight": 1}, {"role": "user", "content": "b"},
                  {"role": "robot", "content": "c"})
    assert categories(record) == ["missing_content", "invalid_weight", "unrecognized_role",
                                  "consecutive_user_messages", "example_missing_assistant_message",
                                  "missing_system_message"]


def test_softer_problems_are_warnings() -> None:
    assert categories(tool_example(tools=None)) == ["tool_calls_without_tools"]
    assert categories(chat(SYSTEM, USER, REPLY, id=7, source="x")) == ["unrecognized_example_key"]
    assert categories(chat(SYSTEM, USER, {"role": "assistant", "content": None,
                                          "function_call": {"name": "f", "arguments": "{}"}},
                           {"role": "function", "name": "f", "content": "1"}, REPLY)) == \
        ["deprecated_function_calling"]
    assert categories(chat(SYSTEM, USER, REPLY, meta={"source": "a.jsonl", "line": 3})) == []
    assert all(CATEGORIES[c][0] != ERROR for c in ("missing_system_message", "over_token_limit", "too_few_examples"))


def test_a_developer_message_counts_as_the_system_message() -> None:
    assert validate(chat({"role": "developer", "content": "Be terse."}, USER, REPLY), "chat") == []


# ------------------------------------------------------------------------------------------------
# DPO

def dpo(**over: Any) -> dict[str, Any]:
    record = {"input": {"messages": [SYSTEM, USER]},
              "preferred_output": [{"role": "assistant", "content": "Rainy, obviously."}],
              "non_preferred_output": [{"role": "assistant", "content": "It is raining in Paris."}]}
    record.update(over)
    return record


def test_a_valid_dpo_example() -> None:
    assert kind_of(dpo()) == "dpo"
    assert validate(dpo(), "dpo") == []
    assert validate(dpo(input={"messages": [USER], "tools": TOOLS}), "dpo") == \
        [("missing_system_message", "no system message in input.messages")]


@pytest.mark.parametrize(("record", "category", "message"), [
    (dpo(input={"messages": [SYSTEM, USER, REPLY, USER]}), "dpo_multi_turn_input",
     "input.messages must be one turn: an optional system message, then one user message (found an assistant"),
    (dpo(input={"messages": [SYSTEM, USER, USER]}), "consecutive_user_messages", "input.messages[2]: two user"),
    (dpo(input={"messages": []}), "missing_messages_list", "input.messages must be a non-empty list"),
    (dpo(input=[USER]), "dpo_invalid_input", "input must be an object with a 'messages' list (got list)"),
    (dpo(preferred_output=[{"role": "assistant", "content": None, "tool_calls": [call()]}]), "dpo_invalid_output",
     "preferred_output[0].content must be non-empty text (got null): DPO outputs are text only"),
    (dpo(non_preferred_output=[REPLY, REPLY]), "dpo_invalid_output",
     "non_preferred_output must be a list of exactly one assistant message (got 2 messages)"),
    (dpo(non_preferred_output=None), "dpo_invalid_output", "non_preferred_output must be a list of exactly one"),
    (dpo(preferred_output=[{"role": "user", "content": "x"}]), "dpo_invalid_output",
     'preferred_output[0].role must be "assistant" (got "user")'),
    (dpo(preferred_output=[{**REPLY, "weight": 1}]), "dpo_invalid_output", "preferred_output[0] has 'weight'"),
])
def test_invalid_dpo_examples(record: dict[str, Any], category: str, message: str) -> None:
    found = errors(record, "dpo")
    assert (category, message) in [(c, m[: len(message)]) for c, m in found], found


def test_dpo_and_chat_examples_are_told_apart() -> None:
    assert validate(dpo(), "chat") == [("wrong_example_kind", "a DPO preference example (input, preferred_output, "
                                                              "non_preferred_output): use target openai-dpo, or "
                                                              "give 'messages'")]
    assert categories(chat(), "dpo") == ["wrong_example_kind"]
    same = dpo(non_preferred_output=[{"role": "assistant", "content": "Rainy, obviously."}])
    assert categories(same, "dpo") == ["dpo_identical_outputs"]


def test_provenance_names_the_source_line_row_or_index() -> None:
    assert provenance({"meta": {"source": "data/a.jsonl", "line": 5}}) == "data/a.jsonl:5"
    assert provenance({"meta": {"source": "data/a.csv", "row": 2}}) == "data/a.csv:row 2"
    assert provenance({"meta": {"source": "data/a.json", "index": 0}}) == "data/a.json:index 0"
    assert provenance({"meta": None}) is None and provenance([1]) is None and provenance({}) is None


def test_every_category_has_a_severity_and_a_meaning() -> None:
    assert all(sev in ("error", "warning") and text for sev, text in CATEGORIES.values())
    json.dumps(CATEGORIES)


def test_the_fast_path_accepts_only_examples_the_full_check_finds_no_problem_in() -> None:
    import random

    from tunepipe.data.chat import check_chat, is_plain_valid

    rng = random.Random(7)
    pieces = [SYSTEM, USER, REPLY, {**REPLY, "weight": 0}, {**REPLY, "weight": 1}, {**REPLY, "weight": True},
              {**REPLY, "weight": 2}, {**USER, "weight": 1}, {"role": "user", "content": " "},
              {"role": "developer", "content": "x"}, {"role": "tool", "content": "x"}, {"role": "user", "content": 1},
              {**USER, "name": "bob"}, {"role": "assistant"}, "text", {"role": "system", "content": "again"}]
    accepted = 0
    for _ in range(5000):
        turns = [SYSTEM] + [m for _ in range(rng.randint(0, 3)) for m in (USER, REPLY)]
        messages = [rng.choice(pieces) if rng.random() < 0.1 else m for m in turns]  # mostly good, some not
        record: dict[str, Any] = {"messages": messages}
        if rng.random() < 0.3:
            record["meta"] = {"source": "x", "line": 1}
        if rng.random() < 0.05:
            record["tools"] = TOOLS
        full = check_chat(record)
        if is_plain_valid(record):
            accepted += 1
            assert full == [], record
        assert validate(record, "chat") == full
    assert accepted > 100  # the fast path is really taken


def test_a_role_that_is_not_a_string_is_an_unrecognized_role_not_a_crash() -> None:
    from tunepipe.data.chat import is_plain_valid

    for role in (["user"], {"name": "user"}, 1, None):
        record = chat(SYSTEM, {"role": role, "content": "hi"}, REPLY)
        assert not is_plain_valid(record)
        assert [c for c, _ in validate(record, "chat")][0] in ("unrecognized_role", "message_missing_key")
