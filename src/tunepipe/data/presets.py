"""The record shapes ingest knows, each turned into an output record: OpenAI chat and DPO records
pass through (checked), ShareGPT and Alpaca records convert; a record that cannot be used raises
:class:`Reject` with a short ``code`` (for counting) and a readable reason.

* ``openai``: ``{"messages": [...], "tools"?, "parallel_tool_calls"?, "meta"?}`` passed through.
* ``dpo``: OpenAI preference records ``{"input": {"messages": [...], "tools"?}, "preferred_output":
  [assistant...], "non_preferred_output": [assistant...]}`` passed through.
* ``sharegpt``: ``{"conversations": [{"from", "value"}...], "system"?, "tools"?}``; ``from`` is
  system, human/user, gpt/assistant, function_call, observation/tool. A ``function_call`` value is
  JSON ``{"name", "arguments"}`` (or a list of them) and becomes an assistant message with
  ``tool_calls`` (ids ``call_1``, ``call_2``... per record); each ``observation``/``tool`` turn
  answers the oldest open call.
* ``alpaca``: ``{"instruction", "input"?, "output", "system"?, "history"?}``; the user message is
  the instruction, then a blank line and the input when there is one; ``history`` holds earlier
  ``[instruction, response]`` pairs.

Only ``openai`` and ``dpo`` records carry their own ``meta`` over (they already have the output
shape). Templates (the ``map`` preset) and choosing a preset are :mod:`tunepipe.data.mapping`'s.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "function_call": "assistant", "observation": "tool", "tool": "tool"}


class Reject(Exception):
    """A record that cannot become a chat example: ``code`` (for counting) and ``reason`` (for people)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def describe(value: Any) -> str:
    """A short JSON-ish rendering of a value for a message."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "number",
            float: "number"}.get(type(value), type(value).__name__)


# -------------------------------------------------------------------------------------------- validation

def check_messages(messages: Any, where: str) -> None:
    """OpenAI chat messages, as far as ingest checks them (format validates the rest)."""
    if not isinstance(messages, list) or not messages:
        raise Reject("no_messages", f"missing a non-empty '{where}' list")
    for i, m in enumerate(messages):
        if m.__class__ is dict and m.get("content").__class__ is str and m.get("role") in ROLES:
            continue  # the usual message, checked at the cost of three lookups
        _check_message(m, f"{where}[{i}]")


def _check_message(m: Any, where: str) -> None:
    if not isinstance(m, dict):
        raise Reject("bad_message", f"{where} is not an object")
    role = m.get("role")
    if role not in ROLES:
        raise Reject("unknown_role", f"{where}.role must be one of {', '.join(ROLES)} (got {describe(role)})")
    content = m.get("content")
    if isinstance(content, str):
        return
    calls = m.get("tool_calls")
    if content is None and calls:
        if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
            raise Reject("bad_message", f"{where}.tool_calls must be a list of objects")
        return
    if isinstance(content, list) and content and all(
            isinstance(p, dict) and isinstance(p.get("type"), str) for p in content):
        return  # content parts ({"type": "text", "text": ...})
    raise Reject("bad_content", f"{where}.content must be a string")


def _check_tools(holder: Mapping[str, Any], where: str, out: dict[str, Any]) -> None:
    tools = holder.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise Reject("bad_tools", f"'{where}tools' must be a list of objects")
        out["tools"] = tools
    parallel = holder.get("parallel_tool_calls")
    if parallel is not None:
        if not isinstance(parallel, bool):
            raise Reject("bad_tools", f"'{where}parallel_tool_calls' must be true or false")
        out["parallel_tool_calls"] = parallel


def _own_meta(record: Mapping[str, Any]) -> dict[str, Any]:
    meta = record.get("meta")
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise Reject("bad_meta", f"'meta' must be an object when present (got {type_name(meta)})")
    return dict(meta)


# ------------------------------------------------------------------------------------------------ presets

def _openai(record: Mapping[str, Any]) -> dict[str, Any]:
    check_messages(record.get("messages"), "messages")
    out: dict[str, Any] = {"messages": record["messages"]}
    _check_tools(record, "", out)
    out["meta"] = _own_meta(record)
    return out


def _dpo(record: Mapping[str, Any]) -> dict[str, Any]:
    inp = record.get("input")
    if not isinstance(inp, dict):
        raise Reject("bad_dpo", f"a DPO record needs 'input': {{\"messages\": [...]}} (got {type_name(inp)})")
    check_messages(inp.get("messages"), "input.messages")
    _check_tools(inp, "input.", {})
    out: dict[str, Any] = {"input": inp}
    for key in ("preferred_output", "non_preferred_output"):
        value = record.get(key)
        check_messages(value, key)
        for i, m in enumerate(value):
            if m.get("role") != "assistant":
                raise Reject("bad_dpo", f"{key}[{i}].role must be assistant (got {describe(m.get('role'))})")
        out[key] = value
    out["meta"] = _own_meta(record)
    return out


def _text(record: Mapping[str, Any], name: str, required: bool) -> str:
    value = record.get(name)
    if value is None:
        if required:
            raise Reject("missing_field", f"missing field '{name}'")
        return ""
    if not isinstance(value, str):
        raise Reject("bad_field", f"'{name}' must be a string (got {type_name(value)})")
    return value


def _alpaca(record: Mapping[str, Any]) -> dict[str, Any]:
    instruction, extra = _text(record, "instruction", True), _text(record, "input", False)
    output, system = _text(record, "output", True), _text(record, "system", False)
    for name, value in (("instruction", instruction), ("output", output)):
        if not value.strip():
            raise Reject("empty_content", f"'{name}' is empty")
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system.strip() else []
    history = record.get("history")
    if history is not None:
        if not isinstance(history, list) or not all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(t, str) and t.strip() for t in p)
                for p in history):
            raise Reject("bad_field", "'history' must be a list of [instruction, response] pairs of non-empty text")
        for q, a in history:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return {"messages": messages, "meta": {}}


def _sharegpt_tools(record: Mapping[str, Any], out: dict[str, Any]) -> None:
    tools = record.get("tools")
    if tools is None or tools == "":
        return
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except ValueError:
            raise Reject("bad_tools", "'tools' is a string but not JSON; give a list of function definitions") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise Reject("bad_tools", "'tools' must be a list of function definitions")
    out["tools"] = [t if "type" in t else {"type": "function", "function": t} for t in tools]


def _function_calls(value: str, i: int, first_id: int) -> list[dict[str, Any]]:
    bad = Reject("bad_function_call", f"conversations[{i}]: a function_call value must be JSON "
                                      '{"name": ..., "arguments": {...}} or a list of them')
    try:
        parsed = json.loads(value)
    except ValueError:
        raise bad from None
    calls = parsed if isinstance(parsed, list) else [parsed]
    out = []
    for k, call in enumerate(calls):
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise bad
        args = call.get("arguments", {})
        if not isinstance(args, str):
            args = json.dumps(args, ensure_ascii=False)
        out.append({"id": f"call_{first_id + k}", "type": "function",
                    "function": {"name": call["name"], "arguments": args}})
    if not out:
        raise bad
    return out


def _sharegpt(record: Mapping[str, Any]) -> dict[str, Any]:
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise Reject("no_messages", "missing a non-empty 'conversations' list")
    messages: list[dict[str, Any]] = []
    system = _text(record, "system", False)
    if system.strip():
        messages.append({"role": "system", "content": system})
    out: dict[str, Any] = {"messages": messages}
    _sharegpt_tools(record, out)
    open_calls: deque[str] = deque()
    ncalls = 0
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise Reject("bad_message", f"conversations[{i}] is not an object")
        source = turn.get("from")
        role = SHAREGPT_ROLES.get(source) if isinstance(source, str) else None
        if role is None:
            raise Reject("unknown_role", f"conversations[{i}].from must be one of {', '.join(SHAREGPT_ROLES)} "
                                         f"(got {describe(source)})")
        value = turn.get("value")
        if not isinstance(value, str):
            raise Reject("bad_content", f"conversations[{i}].value must be a string (got {type_name(value)})")
        if not value.strip():
            raise Reject("empty_content", f"conversations[{i}].value is empty")
        if source == "function_call":
            calls = _function_calls(value, i, ncalls + 1)
            ncalls += len(calls)
            open_calls.extend(c["id"] for c in calls)
            messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        elif role == "tool":
            if not open_calls:
                raise Reject("bad_function_call", f"conversations[{i}] is a '{source}' turn with no function_call "
                                                  "before it to answer")
            messages.append({"role": "tool", "tool_call_id": open_calls.popleft(), "content": value})
        else:
            messages.append({"role": role, "content": value})
    out["meta"] = {}
    return out


CONVERTERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "openai": _openai, "dpo": _dpo, "sharegpt": _sharegpt, "alpaca": _alpaca}
