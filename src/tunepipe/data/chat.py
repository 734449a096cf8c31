"""Validation of chat fine-tuning examples: a strict superset of the OpenAI cookbook's data check.

The cookbook (``Chat_finetuning_data_prep.ipynb``) counts seven error categories; each is reported
here under the same name whenever the cookbook would count it, except where the cookbook is wrong:
valid tool calling (``tool_calls``, role ``tool``) is accepted and its shape checked instead. Each
problem is reported once, under its most specific category (the cookbook counts a message without
a role both as ``message_missing_key`` and as ``unrecognized_role``).

Rules beyond the cookbook (see :data:`CATEGORIES` for every category and its severity):

* ``weight`` only on assistant messages, and only the integers 0 or 1.
* Tool calling: ``tools`` is a list of ``{"type": "function", "function": {"name", "description"?,
  "parameters"?, "strict"?}}`` with unique names; an assistant's ``tool_calls`` is a non-empty list
  of ``{"id", "type": "function", "function": {"name", "arguments"}}`` with unique ids, ``arguments``
  a string holding a JSON object, and names among the declared ``tools`` when they are given.
* Role order: a system (or developer) message only first; never two user messages in a row; a tool
  message only right after an assistant message with ``tool_calls`` (or another tool message), with
  a ``tool_call_id`` of one of that message's calls, each call answered once; every call answered
  before the conversation goes on (a conversation may end with unanswered calls: the model learns
  to make them).
* Names match ``^[a-zA-Z0-9_-]{1,64}$`` as the API requires.
* DPO: ``input`` holds one turn (an optional system message, then one user message) and each of
  ``preferred_output`` / ``non_preferred_output`` is exactly one assistant message with text content.

A problem is ``(category, message)``: plain tuples, cheap to send between worker processes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

ERROR = "error"
WARNING = "warning"

# category -> (severity, what it means). The first seven errors and two warnings are the cookbook's.
CATEGORIES: Mapping[str, tuple[str, str]] = {
    "data_type": (ERROR, "the line is not a JSON object"),
    "missing_messages_list": (ERROR, "no non-empty 'messages' list"),
    "message_missing_key": (ERROR, "a message lacks 'role' or 'content' (or is not an object)"),
    "message_unrecognized_key": (ERROR, "a message has a key its role does not allow"),
    "unrecognized_role": (ERROR, "a role other than system, developer, user, assistant, tool, function"),
    "missing_content": (ERROR, "content is empty, null or not a string"),
    "example_missing_assistant_message": (ERROR, "no assistant message to learn from"),
    "invalid_json": (ERROR, "the line is not valid JSON"),
    "invalid_name": (ERROR, "'name' must match ^[a-zA-Z0-9_-]{1,64}$"),
    "invalid_weight": (ERROR, "'weight' only on assistant messages, and only 0 or 1"),
    "invalid_tools": (ERROR, "'tools' or 'parallel_tool_calls' has the wrong shape"),
    "invalid_tool_calls": (ERROR, "'tool_calls' has the wrong shape or names an undeclared tool"),
    "invalid_tool_message": (ERROR, "a tool message without a matching earlier tool call"),
    "unanswered_tool_call": (ERROR, "a tool call gets no tool message before the conversation goes on"),
    "misplaced_system_message": (ERROR, "a system message that is not the first message"),
    "consecutive_user_messages": (ERROR, "two user messages in a row"),
    "wrong_example_kind": (ERROR, "a chat example for a DPO target, or a DPO example for a chat target"),
    "dpo_invalid_input": (ERROR, "a DPO 'input' that is not an object with 'messages'"),
    "dpo_multi_turn_input": (ERROR, "a DPO input that is not one turn (optional system, then one user message)"),
    "dpo_invalid_output": (ERROR, "a DPO output that is not exactly one assistant message with text"),
    "chat_template_error": (ERROR, "the tokenizer's chat template cannot render the example"),
    "missing_system_message": (WARNING, "no system message"),
    "missing_user_message": (WARNING, "no user message"),
    "over_token_limit": (WARNING, "longer than the model's training context: it will be truncated"),
    "too_few_examples": (WARNING, "fewer than 10 valid examples: OpenAI refuses such a training file"),
    "no_trained_assistant_message": (WARNING, "every assistant message has weight 0: nothing to learn"),
    "tool_calls_without_tools": (WARNING, "tool calls, but no 'tools' list declaring the functions"),
    "deprecated_function_calling": (WARNING, "function_call / functions / role function are deprecated: use tools"),
    "unrecognized_example_key": (WARNING, "a top-level key that is not written to the output"),
    "dpo_identical_outputs": (WARNING, "preferred and non-preferred outputs are identical: nothing to learn"),
}

MIN_EXAMPLES = 10  # OpenAI refuses a training file with fewer examples

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
SYSTEM_ROLES = ("system", "developer")
_ALLOWED_KEYS: Mapping[str, frozenset[str]] = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "weight", "tool_calls", "function_call"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
    "function": frozenset({"role", "content", "name"}),
}
_ANY_KEYS = frozenset().union(*_ALLOWED_KEYS.values())
CHAT_KEYS = ("messages", "tools", "parallel_tool_calls", "functions")
DPO_KEYS = ("input", "preferred_output", "non_preferred_output")
NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

Problem = tuple[str, str]

# The warnings a chat example can have when each message is plain (role and content): the format
# stage's fast path reports them with the very same words as check_chat.
NO_TRAINED_ASSISTANT: Problem = ("no_trained_assistant_message", "every assistant message has weight 0")
NO_SYSTEM: Problem = ("missing_system_message", "no system message")
NO_USER: Problem = ("missing_user_message", "no user message")


def severity(category: str) -> str:
    return CATEGORIES[category][0]


def is_error(problem: Problem) -> bool:
    return CATEGORIES[problem[0]][0] == ERROR


def kind_of(record: Mapping[str, Any]) -> str:
    """``dpo`` for a preference example (``input`` / ``*_output`` and no ``messages``), else ``chat``."""
    if "messages" not in record and any(k in record for k in DPO_KEYS):
        return "dpo"
    return "chat"


def provenance(record: Any) -> str | None:
    """Where a record came from, from its ``meta``: ``data/x.jsonl:5``, ``data/x.csv:row 5``."""
    meta = record.get("meta") if isinstance(record, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("source"), str):
        return None
    for key, fmt in (("line", "{}:{}"), ("row", "{}:row {}"), ("index", "{}:index {}")):
        if key in meta:
            return fmt.format(meta["source"], meta[key])
    return meta["source"]


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def _type(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null",
            int: "number", float: "number"}.get(type(value), type(value).__name__)


# ------------------------------------------------------------------------------------------------
# tools and tool calls


def _check_tools(record: Mapping[str, Any], where: str, out: list[Problem]) -> set[str] | None:
    """Check ``tools`` and ``parallel_tool_calls``; the declared function names (None: no tools)."""
    if "parallel_tool_calls" in record and not isinstance(record["parallel_tool_calls"], bool):
        out.append(("invalid_tools", f"{where}parallel_tool_calls must be true or false "
                                     f"(got {_show(record['parallel_tool_calls'])})"))
    if "tools" not in record or record["tools"] is None:
        return None
    tools = record["tools"]
    if not isinstance(tools, list) or not tools:
        out.append(("invalid_tools", f"{where}tools must be a non-empty list of functions (got {_type(tools)})"))
        return set()
    names: set[str] = set()
    for i, tool in enumerate(tools):
        p = f"{where}tools[{i}]"
        if not isinstance(tool, dict):
            out.append(("invalid_tools", f"{p} must be an object (got {_type(tool)})"))
            continue
        if tool.get("type") != "function":
            out.append(("invalid_tools", f"{p}.type must be \"function\" (got {_show(tool.get('type'))})"))
        extra = sorted(set(tool) - {"type", "function"})
        if extra:
            out.append(("invalid_tools", f"{p} has unrecognized key '{extra[0]}' (allowed: type, function)"))
        fn = tool.get("function")
        if not isinstance(fn, dict):
            out.append(("invalid_tools", f"{p}.function must be an object with a name (got {_type(fn)})"))
            continue
        name = fn.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            out.append(("invalid_tools", f"{p}.function.name must match ^[a-zA-Z0-9_-]{{1,64}}$ "
                                         f"(got {_show(name)})"))
        elif name in names:
            out.append(("invalid_tools", f"{p}.function.name '{name}' is declared twice"))
        else:
            names.add(name)
        if "description" in fn and not isinstance(fn["description"], str):
            out.append(("invalid_tools", f"{p}.function.description must be a string"))
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            out.append(("invalid_tools", f"{p}.function.parameters must be a JSON Schema object "
                                         f"(got {_type(fn['parameters'])})"))
        if "strict" in fn and not isinstance(fn["strict"], bool):
            out.append(("invalid_tools", f"{p}.function.strict must be true or false"))
        extra = sorted(set(fn) - {"name", "description", "parameters", "strict"})
        if extra:
            out.append(("invalid_tools", f"{p}.function has unrecognized key '{extra[0]}' "
                                         "(allowed: name, description, parameters, strict)"))
    return names


def _check_tool_calls(calls: Any, p: str, declared: set[str] | None, out: list[Problem]) -> list[str]:
    """Check an assistant message's ``tool_calls``; the ids of its well-formed calls."""
    if not isinstance(calls, list) or not calls:
        out.append(("invalid_tool_calls", f"{p}.tool_calls must be a non-empty list (got {_show(calls)}); "
                                          "leave the key out when there are no calls"))
        return []
    ids: list[str] = []
    for j, call in enumerate(calls):
        q = f"{p}.tool_calls[{j}]"
        if not isinstance(call, dict):
            out.append(("invalid_tool_calls", f"{q} must be an object (got {_type(call)})"))
            continue
        cid = call.get("id")
        if not isinstance(cid, str) or not cid:
            out.append(("invalid_tool_calls", f"{q}.id must be a non-empty string (got {_show(cid)})"))
        elif cid in ids:
            out.append(("invalid_tool_calls", f"{q}.id '{cid}' is used twice in this message"))
        else:
            ids.append(cid)
        if call.get("type") != "function":
            out.append(("invalid_tool_calls", f"{q}.type must be \"function\" (got {_show(call.get('type'))})"))
        extra = sorted(set(call) - {"id", "type", "function"})
        if extra:
            out.append(("invalid_tool_calls", f"{q} has unrecognized key '{extra[0]}' (allowed: id, type, function)"))
        fn = call.get("function")
        if not isinstance(fn, dict):
            out.append(("invalid_tool_calls", f"{q}.function must be an object with name and arguments "
                                              f"(got {_type(fn)})"))
            continue
        name = fn.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            out.append(("invalid_tool_calls", f"{q}.function.name must match ^[a-zA-Z0-9_-]{{1,64}}$ "
                                              f"(got {_show(name)})"))
        elif declared is not None and name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            out.append(("invalid_tool_calls",
                        f"{q} calls '{name}', which 'tools' does not declare (declared: {known})"))
        args = fn.get("arguments")
        if not isinstance(args, str):
            out.append(("invalid_tool_calls", f"{q}.function.arguments must be a string holding a JSON object "
                                              f"(got {_type(args)}); write it with json.dumps"))
        else:
            try:
                parsed = json.loads(args)
            except ValueError:
                out.append(("invalid_tool_calls", f"{q}.function.arguments is not valid JSON: {_show(args)}"))
            else:
                if not isinstance(parsed, dict):
                    out.append(("invalid_tool_calls", f"{q}.function.arguments must hold a JSON object "
                                                      f"(got {_type(parsed)})"))
        extra = sorted(set(fn) - {"name", "arguments"})
        if extra:
            out.append(("invalid_tool_calls", f"{q}.function has unrecognized key '{extra[0]}' "
                                              "(allowed: name, arguments)"))
    return ids


# ------------------------------------------------------------------------------------------------
# messages


def _check_message(m: Any, p: str, declared: set[str] | None, out: list[Problem]) -> tuple[str | None, list[str]]:
    """Check one message on its own: (its role when recognised, the ids of its tool calls)."""
    if not isinstance(m, dict):
        out.append(("message_missing_key", f"{p} is not an object with role and content (got {_type(m)})"))
        return None, []
    role = m.get("role")
    if "role" not in m:
        out.append(("message_missing_key", f"{p} has no 'role'"))
        role = None
    elif role not in ROLES:
        out.append(("unrecognized_role", f"{p}.role {_show(role)} is not one of {', '.join(ROLES)}"))
        role = None
    has_calls = role == "assistant" and (m.get("tool_calls") is not None or m.get("function_call") is not None)
    if "content" not in m:
        if not has_calls:
            out.append(("message_missing_key", f"{p} has no 'content'"))
    else:
        c = m["content"]
        if c is None:
            if not has_calls:
                out.append(("missing_content", f"{p}.content is null"))
        elif not isinstance(c, str):
            out.append(("missing_content", f"{p}.content must be a string (got {_type(c)})"))
        elif not c.strip() and not has_calls:
            out.append(("missing_content", f"{p}.content is empty"))
    allowed = _ALLOWED_KEYS.get(role, _ANY_KEYS) if role else _ANY_KEYS
    for key in m:
        if key in allowed or (key == "weight" and role is not None):
            continue
        if key in _ANY_KEYS:
            owners = [r for r in ROLES if key in _ALLOWED_KEYS[r]]
            out.append(("message_unrecognized_key",
                        f"{p} ({role}) has '{key}', which only {'/'.join(owners)} messages may have"))
        else:
            out.append(("message_unrecognized_key",
                        f"{p} has unrecognized key {_show(key)} "
                        f"(allowed for {role or 'a'} message: {', '.join(sorted(allowed))})"))
    if "name" in m and (not isinstance(m["name"], str) or not NAME_RE.match(m["name"])):
        out.append(("invalid_name", f"{p}.name must match ^[a-zA-Z0-9_-]{{1,64}}$ (got {_show(m['name'])})"))
    if "weight" in m:
        w = m["weight"]
        if role is not None and role != "assistant":
            out.append(("invalid_weight", f"{p}: 'weight' is allowed only on assistant messages "
                                          f"(found on a {role} message)"))
        elif type(w) is not int or w not in (0, 1):
            out.append(("invalid_weight", f"{p}.weight must be 0 or 1 (got {_show(w)})"))
    ids: list[str] = []
    if role == "assistant" and m.get("tool_calls") is not None:
        ids = _check_tool_calls(m["tool_calls"], p, declared, out)
    if role == "tool":
        tid = m.get("tool_call_id")
        if not isinstance(tid, str) or not tid:
            out.append(("invalid_tool_message", f"{p}: a tool message needs a 'tool_call_id' string "
                                                f"naming the call it answers (got {_show(tid)})"))
    if role == "function" and not isinstance(m.get("name"), str):
        out.append(("message_missing_key", f"{p}: a function message needs the function's 'name'"))
    return role, ids


def _check_order(messages: list[Any], roles: list[str | None], calls: list[list[str]], where: str,
                 out: list[Problem]) -> None:
    """Role order: system first only, no two users in a row, tool messages answering open calls."""
    prev: str | None = None
    open_calls: list[str] = []      # ids of the last assistant message's calls
    answered: set[str] = set()
    caller = -1                     # index of that assistant message
    in_tool_block = False
    for i, (m, role) in enumerate(zip(messages, roles)):
        p = f"{where}messages[{i}]"
        if role is None:
            prev = None
            continue
        if role in SYSTEM_ROLES and i > 0:
            out.append(("misplaced_system_message", f"{p}: a {role} message may only be the first message"))
        if role == "user" and prev == "user":
            out.append(("consecutive_user_messages", f"{p}: two user messages in a row ({where}messages[{i - 1}] "
                                                     "and this one); merge them, or add the assistant reply between"))
        if role == "tool":
            tid = m.get("tool_call_id")
            if not in_tool_block:
                out.append(("invalid_tool_message", f"{p}: a tool message must follow an assistant message "
                                                    "with tool_calls (or another tool message)"))
            elif isinstance(tid, str) and tid:
                if tid not in open_calls:
                    out.append(("invalid_tool_message", f"{p}.tool_call_id '{tid}' matches no call of "
                                                        f"{where}messages[{caller}] ({', '.join(open_calls)})"))
                elif tid in answered:
                    out.append(("invalid_tool_message", f"{p}: call '{tid}' is answered twice"))
                answered.add(tid)
        else:
            if in_tool_block:
                missing = [c for c in open_calls if c not in answered]
                if missing:
                    out.append(("unanswered_tool_call", f"{where}messages[{caller}]: tool call '{missing[0]}' gets "
                                                        f"no tool message before {p}"))
            in_tool_block = False
            if role == "assistant" and calls[i]:
                open_calls, answered, caller, in_tool_block = calls[i], set(), i, True
        prev = role
    if in_tool_block and answered:
        missing = [c for c in open_calls if c not in answered]
        if missing:
            out.append(("unanswered_tool_call", f"{where}messages[{caller}]: tool call '{missing[0]}' gets no "
                                                "tool message (the others do)"))


def _check_messages(messages: Any, where: str, declared: set[str] | None,
                    out: list[Problem]) -> list[str | None] | None:
    """Check a messages list; the recognised role of each message, or None when there is no list."""
    if not isinstance(messages, list) or not messages:
        got = "an empty list" if messages == [] else _type(messages) if messages is not None else "nothing"
        out.append(("missing_messages_list", f"{where}messages must be a non-empty list of messages (got {got})"))
        return None
    roles: list[str | None] = []
    calls: list[list[str]] = []
    for i, m in enumerate(messages):
        role, ids = _check_message(m, f"{where}messages[{i}]", declared, out)
        roles.append(role)
        calls.append(ids)
    _check_order(messages, roles, calls, where, out)
    deprecated = [i for i, (m, r) in enumerate(zip(messages, roles))
                  if r == "function" or (isinstance(m, dict) and "function_call" in m)]
    if deprecated:
        out.append(("deprecated_function_calling", f"{where}messages[{deprecated[0]}] uses function calling "
                                                   "(function_call / role function): use tool_calls and tools"))
    if any(ids for ids in calls) and declared is None:
        out.append(("tool_calls_without_tools", f"{where}messages has tool_calls but the example declares no "
                                                "'tools': add the functions' definitions"))
    return roles


def _unknown_keys(record: Mapping[str, Any], allowed: tuple[str, ...], out: list[Problem]) -> None:
    extra = [k for k in record if k not in allowed and k != "meta"]
    if extra:
        out.append(("unrecognized_example_key", f"top-level key{'s' if len(extra) > 1 else ''} "
                                                f"{', '.join(_show(k) for k in extra)} not written to the output "
                                                f"(known: {', '.join(allowed)}, meta)"))


_QUICK_ROLES = frozenset({"system", "user", "assistant"})


def is_plain_valid(record: Mapping[str, Any]) -> bool:
    """True only for a plain chat example that has no problem at all (the common case, checked fast).

    Plain: only ``messages`` (and ``meta``); each message exactly role and content (an assistant
    message may add a weight of 0 or 1); a non-blank string content; one system message first; no two
    user messages in a row; a user message and a trained assistant message. Anything else goes through
    the full check, so ``validate_chat(r) == []`` whenever this returns True (the tests check it).
    """
    if len(record) > 2 or (len(record) == 2 and "meta" not in record):
        return False
    messages = record.get("messages")
    if type(messages) is not list or not messages:
        return False
    prev = None
    user = trained = False
    for i, m in enumerate(messages):
        if type(m) is not dict:
            return False
        role = m.get("role")
        content = m.get("content")
        if type(content) is not str or type(role) is not str or role not in _QUICK_ROLES or not content.strip():
            return False
        if len(m) != 2:
            if len(m) != 3 or role != "assistant" or type(m.get("weight")) is not int or m["weight"] not in (0, 1):
                return False
        if role == "system":
            if i:
                return False
        elif role == "user":
            if prev == "user":
                return False
            user = True
        elif m.get("weight", 1):
            trained = True
        prev = role
    return user and trained and messages[0]["role"] == "system"


def validate_chat(record: Mapping[str, Any]) -> list[Problem]:
    """Every problem of a chat example ``{"messages": [...], "tools"?, "parallel_tool_calls"?}``."""
    return [] if is_plain_valid(record) else check_chat(record)


def check_chat(record: Mapping[str, Any]) -> list[Problem]:
    """The full check of a chat example (:func:`validate_chat` skips it for plain valid examples)."""
    out: list[Problem] = []
    declared = _check_tools(record, "", out)
    roles = _check_messages(record.get("messages"), "", declared, out)
    if roles is None:
        _unknown_keys(record, CHAT_KEYS, out)
        return out
    messages = record["messages"]
    if "assistant" not in roles:
        out.append(("example_missing_assistant_message", "no assistant message: the example teaches nothing"))
    elif all(isinstance(m, dict) and m.get("weight") == 0 for m, r in zip(messages, roles) if r == "assistant"):
        out.append(NO_TRAINED_ASSISTANT)
    if not any(r in SYSTEM_ROLES for r in roles):
        out.append(NO_SYSTEM)
    if "user" not in roles:
        out.append(NO_USER)
    if "functions" in record:
        out.append(("deprecated_function_calling", "top-level 'functions' is deprecated: use 'tools'"))
    _unknown_keys(record, CHAT_KEYS, out)
    return out


def _check_output(value: Any, key: str, out: list[Problem]) -> None:
    if not isinstance(value, list) or len(value) != 1:
        got = "nothing" if value is None else f"{len(value)} messages" if isinstance(value, list) else _type(value)
        out.append(("dpo_invalid_output", f"{key} must be a list of exactly one assistant message (got {got})"))
        return
    m = value[0]
    p = f"{key}[0]"
    if not isinstance(m, dict):
        out.append(("dpo_invalid_output", f"{p} must be an assistant message object (got {_type(m)})"))
        return
    if m.get("role") != "assistant":
        out.append(("dpo_invalid_output", f"{p}.role must be \"assistant\" (got {_show(m.get('role'))})"))
    c = m.get("content")
    if not isinstance(c, str) or not c.strip():
        out.append(("dpo_invalid_output", f"{p}.content must be non-empty text (got {_show(c)}): "
                                          "DPO outputs are text only"))
    extra = sorted(set(m) - {"role", "content"})
    if extra:
        out.append(("dpo_invalid_output", f"{p} has '{extra[0]}': DPO outputs are text only (role and content)"))


def validate_dpo(record: Mapping[str, Any]) -> list[Problem]:
    """Every problem of a DPO example ``{"input": {"messages"}, "preferred_output", "non_preferred_output"}``."""
    out: list[Problem] = []
    inp = record.get("input")
    if not isinstance(inp, dict):
        out.append(("dpo_invalid_input", f"input must be an object with a 'messages' list (got "
                                         f"{'nothing' if inp is None else _type(inp)})"))
    else:
        declared = _check_tools(inp, "input.", out)
        extra = sorted(set(inp) - {"messages", "tools", "parallel_tool_calls"})
        if extra:
            out.append(("dpo_invalid_input", f"input has unrecognized key '{extra[0]}' "
                                             "(allowed: messages, tools, parallel_tool_calls)"))
        roles = _check_messages(inp.get("messages"), "input.", declared, out)
        if roles is not None:
            body = [r for r in roles if r is not None and r not in SYSTEM_ROLES]
            if body != ["user"]:
                others = [r for r in body if r != "user"]
                if others:
                    found = f"{'an' if others[0][0] in 'aeiou' else 'a'} {others[0]} message"
                else:
                    found = f"{body.count('user')} user messages"
                out.append(("dpo_multi_turn_input", "input.messages must be one turn: an optional system message, "
                                                    f"then one user message (found {found})"))
            if not any(r in SYSTEM_ROLES for r in roles):
                out.append(("missing_system_message", "no system message in input.messages"))
    for key in ("preferred_output", "non_preferred_output"):
        _check_output(record.get(key), key, out)
    if record.get("preferred_output") == record.get("non_preferred_output") and \
            not any(c == "dpo_invalid_output" for c, _ in out):
        out.append(("dpo_identical_outputs", "preferred_output and non_preferred_output are identical"))
    _unknown_keys(record, DPO_KEYS, out)
    return out


def validate(record: Any, kind: str) -> list[Problem]:
    """Every problem of one parsed line, for a target that wants ``kind`` examples (chat or dpo)."""
    if not isinstance(record, dict):
        return [("data_type", f"expected a JSON object, got {_type(record)}")]
    got = kind_of(record)
    if got != kind:
        if kind == "chat":
            return [("wrong_example_kind", "a DPO preference example (input, preferred_output, "
                                           "non_preferred_output): use target openai-dpo, or give 'messages'")]
        return [("wrong_example_kind", "a chat example ('messages'): the openai-dpo target needs input, "
                                       "preferred_output and non_preferred_output")]
    return validate_dpo(record) if kind == "dpo" else validate_chat(record)
