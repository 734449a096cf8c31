"""Validation of chat fine-tuning examples: a strict superset of the OpenAI cookbook's data check.

The cookbook (``Chat_finetuning_data_prep.ipynb``) counts seven error categories; each is reported
here under the same name whenever the cookbook would count it, except where the cookbook is wrong:
valid tool calling (``tool_calls``, role ``tool``) is accepted and its shape checked instead. Each
problem is reported once, under its most specific category (the cookbook counts a message without
a role both as ``message_missing_key`` and as ``unrecognized_role``).

Rules beyond the cookbook (see :data:`CATEGORIES` for every category and its severity):

* ``weight`` only on assistant messages, and only the integers 0 or 1.
* Tool calling (:mod:`tunepipe.data.chat_tools`): ``tools`` is a list of functions with unique
  names; an assistant's ``tool_calls`` a non-empty list of calls with unique ids, JSON-object
  ``arguments`` and names among the declared ``tools`` when they are given.
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

from collections.abc import Mapping
from typing import Any

from tunepipe.data.chat_tools import NAME_RE, Problem, check_tool_calls, check_tools, show, type_name
from tunepipe.data.record import Provenance

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
# The warnings a chat example can have when each message is plain (role and content): the fast
# check (plain_problems) words them as check_chat does.
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
    """Where a record came from, from its ``meta``: ``data/x.jsonl:5``, ``data/x.csv:row 5``
    (:class:`tunepipe.data.record.Provenance` as text)."""
    found = Provenance.of(record)
    return None if found is None else str(found)


# ------------------------------------------------------------------------------------------------
# messages


def _check_message(m: Any, p: str, declared: set[str] | None, out: list[Problem]) -> tuple[str | None, list[str]]:
    """Check one message on its own: (its role when recognised, the ids of its tool calls)."""
    if not isinstance(m, dict):
        out.append(("message_missing_key", f"{p} is not an object with role and content (got {type_name(m)})"))
        return None, []
    role = m.get("role")
    if "role" not in m:
        out.append(("message_missing_key", f"{p} has no 'role'"))
        role = None
    elif role not in ROLES:
        out.append(("unrecognized_role", f"{p}.role {show(role)} is not one of {', '.join(ROLES)}"))
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
            out.append(("missing_content", f"{p}.content must be a string (got {type_name(c)})"))
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
                        f"{p} has unrecognized key {show(key)} "
                        f"(allowed for {role or 'a'} message: {', '.join(sorted(allowed))})"))
    if "name" in m and (not isinstance(m["name"], str) or not NAME_RE.match(m["name"])):
        out.append(("invalid_name", f"{p}.name must match ^[a-zA-Z0-9_-]{{1,64}}$ (got {show(m['name'])})"))
    if "weight" in m:
        w = m["weight"]
        if role is not None and role != "assistant":
            out.append(("invalid_weight", f"{p}: 'weight' is allowed only on assistant messages "
                                          f"(found on a {role} message)"))
        elif type(w) is not int or w not in (0, 1):
            out.append(("invalid_weight", f"{p}.weight must be 0 or 1 (got {show(w)})"))
    ids: list[str] = []
    if role == "assistant" and m.get("tool_calls") is not None:
        ids = check_tool_calls(m["tool_calls"], p, declared, out)
    if role == "tool":
        tid = m.get("tool_call_id")
        if not isinstance(tid, str) or not tid:
            out.append(("invalid_tool_message", f"{p}: a tool message needs a 'tool_call_id' string "
                                                f"naming the call it answers (got {show(tid)})"))
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
        got = "an empty list" if messages == [] else type_name(messages) if messages is not None else "nothing"
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
                                                f"{', '.join(show(k) for k in extra)} not written to the output "
                                                f"(known: {', '.join(allowed)}, meta)"))


_QUICK_ROLES = frozenset({"system", "user", "assistant"})


def plain_problems(record: Mapping[str, Any]) -> list[Problem] | None:
    """The problems of a plain chat example, checked fast (the common case); None for any other
    record, which the full check (:func:`check_chat`) decides.

    Plain: only ``messages`` (and ``meta``); each message exactly role and content (an assistant
    message may add a weight of 0 or 1); a non-blank string content; roles system (first only), user
    (never two in a row) and assistant, at least one assistant message. Such an example has no error,
    and at most the warnings :func:`check_chat` words the same way (no trained assistant message, no
    system message, no user message), in its order; the tests check that both agree.
    """
    if len(record) > 2 or (len(record) == 2 and "meta" not in record):
        return None
    messages = record.get("messages")
    if messages.__class__ is not list or not messages:
        return None
    prev = None
    system = user = replies = trained = False
    for m in messages:
        if m.__class__ is not dict:
            return None
        role = m.get("role")
        content = m.get("content")
        if content.__class__ is not str or role.__class__ is not str or role not in _QUICK_ROLES \
                or not content or content.isspace():
            return None
        if len(m) != 2:
            if len(m) != 3 or role != "assistant" or m.get("weight").__class__ is not int or m["weight"] not in (0, 1):
                return None
        if role == "user":
            if prev == "user":
                return None
            user = True
        elif role == "assistant":
            replies = True
            if m.get("weight", 1):
                trained = True
        elif prev is not None:  # a system message after the first
            return None
        else:
            system = True
        prev = role
    if not replies:
        return None  # an error (nothing to learn): the full check words it
    if system and user and trained:
        return []
    return [p for p, ok in ((NO_TRAINED_ASSISTANT, trained), (NO_SYSTEM, system), (NO_USER, user)) if not ok]


def is_plain_valid(record: Mapping[str, Any]) -> bool:
    """True only for a plain chat example (:func:`plain_problems`) without any problem."""
    return plain_problems(record) == []


def validate_chat(record: Mapping[str, Any]) -> list[Problem]:
    """Every problem of a chat example ``{"messages": [...], "tools"?, "parallel_tool_calls"?}``."""
    found = plain_problems(record)
    return check_chat(record) if found is None else found


def check_chat(record: Mapping[str, Any]) -> list[Problem]:
    """The full check of a chat example (:func:`validate_chat` skips it for plain examples)."""
    out: list[Problem] = []
    declared = check_tools(record, "", out)
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
        got = "nothing" if value is None else f"{len(value)} messages" if isinstance(value, list) else type_name(value)
        out.append(("dpo_invalid_output", f"{key} must be a list of exactly one assistant message (got {got})"))
        return
    m = value[0]
    p = f"{key}[0]"
    if not isinstance(m, dict):
        out.append(("dpo_invalid_output", f"{p} must be an assistant message object (got {type_name(m)})"))
        return
    if m.get("role") != "assistant":
        out.append(("dpo_invalid_output", f"{p}.role must be \"assistant\" (got {show(m.get('role'))})"))
    c = m.get("content")
    if not isinstance(c, str) or not c.strip():
        out.append(("dpo_invalid_output", f"{p}.content must be non-empty text (got {show(c)}): "
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
                                         f"{'nothing' if inp is None else type_name(inp)})"))
    else:
        declared = check_tools(inp, "input.", out)
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
        return [("data_type", f"expected a JSON object, got {type_name(record)}")]
    got = "chat" if "messages" in record else kind_of(record)
    if got != kind:
        if kind == "chat":
            return [("wrong_example_kind", "a DPO preference example (input, preferred_output, "
                                           "non_preferred_output): use target openai-dpo, or give 'messages'")]
        return [("wrong_example_kind", "a chat example ('messages'): the openai-dpo target needs input, "
                                       "preferred_output and non_preferred_output")]
    return validate_dpo(record) if kind == "dpo" else validate_chat(record)
