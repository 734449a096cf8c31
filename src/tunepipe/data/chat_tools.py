"""The tool-calling part of chat validation (:mod:`tunepipe.data.chat`): ``tools``,
``parallel_tool_calls`` and an assistant message's ``tool_calls``, and the helpers every check
uses to word a problem (:func:`show`, :func:`type_name`).

``tools`` is a list of ``{"type": "function", "function": {"name", "description"?, "parameters"?,
"strict"?}}`` with unique names; ``tool_calls`` is a non-empty list of ``{"id", "type": "function",
"function": {"name", "arguments"}}`` with unique ids, ``arguments`` a string holding a JSON object,
and names among the declared ``tools`` when they are given. A problem is ``(category, message)``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

Problem = tuple[str, str]

NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def show(value: Any) -> str:
    """A value as JSON in a problem's message, cut at 40 characters."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def type_name(value: Any) -> str:
    """A value's JSON type, as a problem's message names it."""
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null",
            int: "number", float: "number"}.get(type(value), type(value).__name__)


def check_tools(record: Mapping[str, Any], where: str, out: list[Problem]) -> set[str] | None:
    """Check ``tools`` and ``parallel_tool_calls``; the declared function names (None: no tools)."""
    if "parallel_tool_calls" in record and not isinstance(record["parallel_tool_calls"], bool):
        out.append(("invalid_tools", f"{where}parallel_tool_calls must be true or false "
                                     f"(got {show(record['parallel_tool_calls'])})"))
    if "tools" not in record or record["tools"] is None:
        return None
    tools = record["tools"]
    if not isinstance(tools, list) or not tools:
        out.append(("invalid_tools", f"{where}tools must be a non-empty list of functions (got {type_name(tools)})"))
        return set()
    names: set[str] = set()
    for i, tool in enumerate(tools):
        p = f"{where}tools[{i}]"
        if not isinstance(tool, dict):
            out.append(("invalid_tools", f"{p} must be an object (got {type_name(tool)})"))
            continue
        if tool.get("type") != "function":
            out.append(("invalid_tools", f"{p}.type must be \"function\" (got {show(tool.get('type'))})"))
        extra = sorted(set(tool) - {"type", "function"})
        if extra:
            out.append(("invalid_tools", f"{p} has unrecognized key '{extra[0]}' (allowed: type, function)"))
        fn = tool.get("function")
        if not isinstance(fn, dict):
            out.append(("invalid_tools", f"{p}.function must be an object with a name (got {type_name(fn)})"))
            continue
        name = fn.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            out.append(("invalid_tools", f"{p}.function.name must match ^[a-zA-Z0-9_-]{{1,64}}$ "
                                         f"(got {show(name)})"))
        elif name in names:
            out.append(("invalid_tools", f"{p}.function.name '{name}' is declared twice"))
        else:
            names.add(name)
        if "description" in fn and not isinstance(fn["description"], str):
            out.append(("invalid_tools", f"{p}.function.description must be a string"))
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            out.append(("invalid_tools", f"{p}.function.parameters must be a JSON Schema object "
                                         f"(got {type_name(fn['parameters'])})"))
        if "strict" in fn and not isinstance(fn["strict"], bool):
            out.append(("invalid_tools", f"{p}.function.strict must be true or false"))
        extra = sorted(set(fn) - {"name", "description", "parameters", "strict"})
        if extra:
            out.append(("invalid_tools", f"{p}.function has unrecognized key '{extra[0]}' "
                                         "(allowed: name, description, parameters, strict)"))
    return names


def check_tool_calls(calls: Any, p: str, declared: set[str] | None, out: list[Problem]) -> list[str]:
    """Check an assistant message's ``tool_calls``; the ids of its well-formed calls."""
    if not isinstance(calls, list) or not calls:
        out.append(("invalid_tool_calls", f"{p}.tool_calls must be a non-empty list (got {show(calls)}); "
                                          "leave the key out when there are no calls"))
        return []
    ids: list[str] = []
    for j, call in enumerate(calls):
        q = f"{p}.tool_calls[{j}]"
        if not isinstance(call, dict):
            out.append(("invalid_tool_calls", f"{q} must be an object (got {type_name(call)})"))
            continue
        cid = call.get("id")
        if not isinstance(cid, str) or not cid:
            out.append(("invalid_tool_calls", f"{q}.id must be a non-empty string (got {show(cid)})"))
        elif cid in ids:
            out.append(("invalid_tool_calls", f"{q}.id '{cid}' is used twice in this message"))
        else:
            ids.append(cid)
        if call.get("type") != "function":
            out.append(("invalid_tool_calls", f"{q}.type must be \"function\" (got {show(call.get('type'))})"))
        extra = sorted(set(call) - {"id", "type", "function"})
        if extra:
            out.append(("invalid_tool_calls", f"{q} has unrecognized key '{extra[0]}' (allowed: id, type, function)"))
        fn = call.get("function")
        if not isinstance(fn, dict):
            out.append(("invalid_tool_calls", f"{q}.function must be an object with name and arguments "
                                              f"(got {type_name(fn)})"))
            continue
        name = fn.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            out.append(("invalid_tool_calls", f"{q}.function.name must match ^[a-zA-Z0-9_-]{{1,64}}$ "
                                              f"(got {show(name)})"))
        elif declared is not None and name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            out.append(("invalid_tool_calls",
                        f"{q} calls '{name}', which 'tools' does not declare (declared: {known})"))
        args = fn.get("arguments")
        if not isinstance(args, str):
            out.append(("invalid_tool_calls", f"{q}.function.arguments must be a string holding a JSON object "
                                              f"(got {type_name(args)}); write it with json.dumps"))
        else:
            try:
                parsed = json.loads(args)
            except ValueError:
                out.append(("invalid_tool_calls", f"{q}.function.arguments is not valid JSON: {show(args)}"))
            else:
                if not isinstance(parsed, dict):
                    out.append(("invalid_tool_calls", f"{q}.function.arguments must hold a JSON object "
                                                      f"(got {type_name(parsed)})"))
        extra = sorted(set(fn) - {"name", "arguments"})
        if extra:
            out.append(("invalid_tool_calls", f"{q}.function has unrecognized key '{extra[0]}' "
                                              "(allowed: name, arguments)"))
    return ids
