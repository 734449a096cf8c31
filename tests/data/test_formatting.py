"""What the format stage does per example and per block (tunepipe.data.formatting), called directly."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tunepipe.data.blocks import Block
from tunepipe.data.chat import check_chat, is_error, is_plain_valid, plain_problems, validate
from tunepipe.data.cookbook_counts import count_openai, openai_tokens
from tunepipe.data.formatting import FormatConfig, format_block
from tunepipe.data.record import Provenance
from tunepipe.data.tokens import count_chat_tokens, get_encoding

SYSTEM = {"role": "system", "content": "You are Marv."}
USER = {"role": "user", "content": "Is water wet?"}
REPLY = {"role": "assistant", "content": "Obviously."}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
PIECES = [SYSTEM, USER, REPLY, {**REPLY, "weight": 0}, {**REPLY, "weight": 1}, {**REPLY, "weight": True},
          {**REPLY, "weight": 2}, {**USER, "weight": 1}, {"role": "user", "content": " "},
          {"role": "developer", "content": "x"}, {"role": "tool", "content": "x"}, {"role": "user", "content": 1},
          {**USER, "name": "bob"}, {"role": "assistant"}, "text", {"role": "system", "content": "again"},
          {"role": ["user"], "content": "hi"}, {"role": "system", "content": "You are Marv, again."},
          {"content": "Why?", "role": "user"}, {"role": "assistant", "content": "No.", "name": "marv"},
          {"role": "assistant", "content": None, "tool_calls": [CALL]},
          {"role": "tool", "tool_call_id": "call_1", "content": "rain"}]


def _assistant_tokens(enc: Any, messages: list[dict[str, Any]]) -> int:
    """The trained assistant tokens, the slow obvious way: content and tool calls of weight-1 replies."""
    n = 0
    for m in messages:
        if m["role"] == "assistant" and m.get("weight", 1) != 0:
            for key in ("content", "tool_calls", "function_call"):
                value = m.get(key)
                if value is not None:
                    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
                    n += len(enc.encode_ordinary(text))
    return n


def test_the_plain_check_agrees_with_the_full_check_and_the_count_with_the_cookbook() -> None:
    """Plain chat examples are checked in one loop and counted by a shortcut: the problems must be the
    full check's (warnings only), the shortcut's count the full count's, and every valid example's
    counts the cookbook counter's."""
    enc = get_encoding("o200k_base")
    counter = openai_tokens(enc)
    rng = random.Random(11)
    plain = clean = valid = 0
    for _ in range(8000):
        turns = [SYSTEM] + [m for _ in range(rng.randint(0, 3)) for m in (USER, REPLY)]
        turns = turns[rng.random() < 0.2:]  # some without a system message
        if rng.random() < 0.1:
            turns = [m for m in turns if m is not USER]  # some without a user message
        if rng.random() < 0.1:
            turns = [{**m, "weight": 0} if m is REPLY else m for m in turns]  # some with nothing to learn
        messages = [rng.choice(PIECES) if rng.random() < 0.1 else m for m in turns]
        record: dict[str, Any] = {"messages": messages}
        if rng.random() < 0.3:
            record["meta"] = {"source": "x", "line": 1}
        if rng.random() < 0.05:
            record[rng.choice(["tools", "extra"])] = TOOLS
        found = plain_problems(record)
        if found is not None:
            plain += 1
            clean += not found
            assert found == check_chat(record) and not any(is_error(p) for p in found), record
            assert is_plain_valid(record) == (found == []), record
            assert counter.plain(messages) == counter.chat(messages), record  # the shortcut counts the same
        problems = validate(record, "chat")
        if any(is_error(p) for p in problems):
            continue
        valid += 1
        counts = count_openai(enc, record, "chat")
        assert counts.messages == len(messages)
        assert counts.tokens == count_chat_tokens(enc, messages, record.get("tools")), record
        assert counts.assistant == _assistant_tokens(enc, messages), record
    assert clean > 100 and plain > clean + 500 and valid > plain  # every path really taken


def test_a_block_writes_its_examples_to_its_part_and_returns_only_numbers_and_problems(tmp_path: Path) -> None:
    good = {"messages": [SYSTEM, USER, REPLY], "meta": {"source": "data/x.csv", "row": 7}}
    warned = {"messages": [USER, REPLY]}
    lines = [json.dumps(good), "", '{"messages": [', "  ", json.dumps(warned), json.dumps({"messages": [SYSTEM, USER]})]
    path = tmp_path / "records.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode())  # a BOM, CRLF, no newline at the end
    parts = tmp_path / "parts"
    parts.mkdir()
    cfg = FormatConfig("openai-chat", "o200k_base", None, 20, "m", str(parts))
    got = format_block(cfg, Block(str(path), 0, path.stat().st_size, "in", index=3))
    assert (got.lines, got.records, Path(got.part).name) == (6, 4, "000003.jsonl")
    assert Path(got.part).read_bytes() == b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n"
                                                    for r in (good, warned))
    enc = get_encoding("o200k_base")
    assert got.messages == [3, 2] and got.tokens == [count_chat_tokens(enc, r["messages"]) for r in (good, warned)]
    assert got.tokens[0] > 20 >= got.tokens[1]  # the first is over the limit
    assert [(f.line, [c for c, _ in f.problems], f.origin, f.raw is not None) for f in got.flagged] == [
        (1, ["over_token_limit"], Provenance("data/x.csv", "row", 7), False),
        (3, ["invalid_json"], None, True),
        (5, ["missing_system_message"], None, False),
        (6, ["example_missing_assistant_message"], None, True)]
