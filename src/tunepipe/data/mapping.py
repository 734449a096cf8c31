"""Turning source records into chat examples: presets, field templates, and the checks on the result.

A :class:`Mapper` is built from one source's settings (``preset``, ``map``, ``keep_fields``) and
maps one record (a dict read from JSON, or a CSV/Parquet row as ``{column: value}``) to an output
record without provenance, or raises :class:`Reject` with a short ``code`` and a readable reason.
Bad *settings* raise :class:`ConfigError` when the mapper is built, before any data is read.

Presets:

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
* ``map``: templates per message, e.g. ``{system: "Marv is...", user: "{question}", assistant:
  "{answer}"}``, or ``{messages: [{role, content}...]}`` for several turns, or ``preferred`` and
  ``non_preferred`` instead of ``assistant`` for a DPO record. See :class:`Template`.
* ``auto``: ``map`` when a map is given; else by the record's keys: ``messages`` -> openai,
  ``preferred_output`` -> dpo, ``conversations`` -> sharegpt, ``instruction`` -> alpaca.

Only ``openai`` and ``dpo`` records carry their own ``meta`` over (they already have the output
shape); for every preset, ``keep_fields`` copies fields of the source record into ``meta``.
Other top-level fields are not copied: output records have a fixed shape.
"""

from __future__ import annotations

import difflib
import json
from collections import deque
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
PRESETS = ("auto", "openai", "dpo", "sharegpt", "alpaca", "map")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "function_call": "assistant", "observation": "tool", "tool": "tool"}
# the keys that identify a preset in auto mode, in the order they are tried
SHAPES = (("messages", "openai"), ("preferred_output", "dpo"), ("non_preferred_output", "dpo"),
          ("conversations", "sharegpt"), ("instruction", "alpaca"))
# the columns a tabular file needs for each preset
COLUMNS = {"openai": ("messages",), "dpo": ("input", "preferred_output", "non_preferred_output"),
           "sharegpt": ("conversations",), "alpaca": ("instruction", "output")}


class Reject(Exception):
    """A record that cannot become a chat example: ``code`` (for counting) and ``reason`` (for people)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ConfigError(ValueError):
    """The stage's settings are wrong (a template that does not parse, a map without a user message)."""


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


# ------------------------------------------------------------------------------------------- field access

_MISSING = object()


class Field:
    """A field reference: ``question``, or a dotted path ``meta.q`` / ``turns.0.text``.

    The whole name is tried as a key first (a CSV column may be called ``meta.q``), then the path.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = tuple(name.split("."))
        if not name or any(not seg for seg in self.path):
            raise ConfigError(f"{name!r} is not a field name (use `name` or a dotted path such as `meta.q`)")

    def get(self, record: Mapping[str, Any]) -> Any:
        if self.name in record:
            return record[self.name]
        if len(self.path) == 1:
            return _MISSING
        cur: Any = record
        for seg in self.path:
            if isinstance(cur, dict) and seg in cur:
                cur = cur[seg]
            elif isinstance(cur, list) and seg.isdigit() and int(seg) < len(cur):
                cur = cur[int(seg)]
            else:
                return _MISSING
        return cur

    @property
    def top(self) -> str:
        return self.path[0]


class Template:
    """Text with ``{field}`` references: ``"Q: {question}"``, ``"{meta.q}"``; ``{{`` and ``}}`` are braces.

    A missing or null field rejects the record, naming the field; a number or boolean is written as
    text; an object or a list is not text and rejects the record.
    """

    def __init__(self, text: str, where: str) -> None:
        self.text = text
        self.where = where
        self.parts: list[str | Field] = []
        buf: list[str] = []
        i, n = 0, len(text)
        while i < n:
            c = text[i]
            if c == "{" and text.startswith("{{", i):
                buf.append("{")
                i += 2
            elif c == "}" and text.startswith("}}", i):
                buf.append("}")
                i += 2
            elif c == "{":
                end = text.find("}", i + 1)
                inner = text[i + 1:end] if end != -1 else ""
                if end == -1 or "{" in inner:
                    raise ConfigError(f"{where}: the '{{' at character {i + 1} is not closed; write {{{{ for a "
                                      f"literal brace, or {{field}} to insert a field (in {text!r})")
                if buf:
                    self.parts.append("".join(buf))
                    buf = []
                try:
                    self.parts.append(Field(inner))
                except ConfigError as e:
                    raise ConfigError(f"{where}: {e} (in {text!r})") from None
                i = end + 1
            elif c == "}":
                raise ConfigError(f"{where}: a single '}}' at character {i + 1}; write }}}} for a literal brace "
                                  f"(in {text!r})")
            else:
                buf.append(c)
                i += 1
        if buf:
            self.parts.append("".join(buf))
        self.fields = [p for p in self.parts if isinstance(p, Field)]

    def render(self, record: Mapping[str, Any]) -> str:
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = part.get(record)
            if value is _MISSING:
                raise Reject("missing_field", f"missing field '{part.name}' (used in {self.where})"
                                              f"{escape_note(self.text)}")
            if value is None:
                raise Reject("missing_field", f"field '{part.name}' is null (used in {self.where})")
            out.append(as_text(value, part.name, self.where))
        return "".join(out)


def escape_note(text: str) -> str:
    """For a template that holds ``${``: ``$${`` escapes only pipeline vars, so ``$${vars.x}``
    reaches ingest as ``${vars.x}``, a ``{vars.x}`` field here."""
    if "${" not in text:
        return ""
    return ("; note that `$${` escapes only pipeline variables: ingest receives `${...}` and reads `{...}` as a "
            "column; for literal braces in a column template write `{{` and `}}` (`$${{vars.x}}` in the pipeline "
            "file gives the text `${vars.x}`)")


def as_text(value: Any, name: str, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, Decimal)):
        return str(value)
    if isinstance(value, (dict, list)):
        raise Reject("bad_field", f"field '{name}' is {'an object' if isinstance(value, dict) else 'a list'}, not "
                                  f"text (used in {where}); name a value inside it, such as {{{name}."
                                  f"{'KEY' if isinstance(value, dict) else '0'}}}")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


# -------------------------------------------------------------------------------------------- validation

def check_messages(messages: Any, where: str) -> None:
    """OpenAI chat messages, as far as ingest checks them (format validates the rest)."""
    if not isinstance(messages, list) or not messages:
        raise Reject("no_messages", f"missing a non-empty '{where}' list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise Reject("bad_message", f"{where}[{i}] is not an object")
        role = m.get("role")
        if role not in ROLES:
            raise Reject("unknown_role", f"{where}[{i}].role must be one of {', '.join(ROLES)} (got {describe(role)})")
        content = m.get("content")
        if isinstance(content, str):
            continue
        calls = m.get("tool_calls")
        if content is None and calls:
            if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
                raise Reject("bad_message", f"{where}[{i}].tool_calls must be a list of objects")
            continue
        if isinstance(content, list) and content and all(
                isinstance(p, dict) and isinstance(p.get("type"), str) for p in content):
            continue  # content parts ({"type": "text", "text": ...})
        raise Reject("bad_content", f"{where}[{i}].content must be a string")


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


class MapSpec:
    """The ``map`` setting, compiled: message templates, and the DPO outputs when given."""

    TURN_KEYS = ("system", "user", "assistant")

    def __init__(self, spec: Mapping[str, Any], where: str) -> None:
        self.where = where
        keys = set(spec)
        self.dpo = bool(keys & {"preferred", "non_preferred"})
        if self.dpo and not {"preferred", "non_preferred"} <= keys:
            raise ConfigError(f"{where}: a DPO mapping needs both `preferred` and `non_preferred`")
        if self.dpo and "assistant" in keys:
            raise ConfigError(f"{where}: give `assistant` (a chat example) or `preferred` and `non_preferred` "
                              "(a DPO example), not both")
        self.turns: list[tuple[str, Template]] = []
        if "messages" in spec:
            clash = sorted(keys & set(self.TURN_KEYS))
            if clash:
                raise ConfigError(f"{where}: give either `messages` or {', '.join(clash)}, not both")
            for i, m in enumerate(spec["messages"]):
                self.turns.append((m["role"], Template(m["content"], f"{where}.messages[{i}].content")))
        else:
            need = ("user",) if self.dpo else ("user", "assistant")
            missing = [k for k in need if k not in spec]
            if missing:
                raise ConfigError(f"{where} needs {' and '.join(f'`{k}`' for k in missing)} (e.g. "
                                  "`map: {user: \"{question}\", assistant: \"{answer}\"}`)")
            for role in self.TURN_KEYS:
                if role in spec:
                    self.turns.append((role, Template(spec[role], f"{where}.{role}")))
        self.outputs = [(key, Template(spec[key], f"{where}.{key}")) for key in ("preferred", "non_preferred")
                        if key in spec]
        self.fields = [f for _, t in self.turns + self.outputs for f in t.fields]

    def _render(self, role: str, template: Template, record: Mapping[str, Any]) -> str | None:
        text = template.render(record)
        if text.strip():
            return text
        if role == "system":
            return None  # an empty system prompt is left out
        used = ", ".join(f"'{f.name}'" for f in template.fields)
        raise Reject("empty_content", f"{template.where} renders empty text" + (f" (from {used})" if used else ""))

    def apply(self, record: Mapping[str, Any]) -> dict[str, Any]:
        messages = []
        for role, template in self.turns:
            text = self._render(role, template, record)
            if text is not None:
                messages.append({"role": role, "content": text})
        if not self.dpo:
            return {"messages": messages, "meta": {}}
        out: dict[str, Any] = {"input": {"messages": messages}}
        for key, template in self.outputs:
            out[f"{key}_output"] = [{"role": "assistant", "content": self._render("assistant", template, record)}]
        out["meta"] = {}
        return out


_PRESETS = {"openai": _openai, "dpo": _dpo, "sharegpt": _sharegpt, "alpaca": _alpaca}


class Mapper:
    """Maps records of one source: ``settings`` holds ``preset``, ``map`` and ``keep_fields``.

    ``where`` prefixes configuration errors (e.g. ``sources[1]``), so they name the parameter.
    """

    def __init__(self, settings: Mapping[str, Any], where: str = "") -> None:
        self.preset = settings.get("preset", "auto")
        spec = settings.get("map")
        prefix = f"{where}." if where else ""
        if self.preset == "map" and spec is None:
            raise ConfigError(f"{prefix}preset is `map` but no `map` is given; add e.g. "
                              "`map: {user: \"{question}\", assistant: \"{answer}\"}`")
        self.map = MapSpec(spec, f"{prefix}map") if spec is not None and self.preset in ("auto", "map") else None
        if self.map is not None:
            self.preset = "map"
        try:
            self.keep = [Field(name) for name in settings.get("keep_fields") or ()]
        except ConfigError as e:
            raise ConfigError(f"{prefix}keep_fields: {e}") from None

    def columns_problem(self, columns: Sequence[str], tabular_text: bool) -> str | None:
        """Why a tabular file with these columns cannot be mapped (checked once, before its rows), or None.

        ``tabular_text``: a CSV/TSV, whose values are all text (no nested lists for messages).
        """
        cols = list(columns)
        listing = ", ".join(repr(c) for c in cols) or "none"
        if self.map is not None:
            for f in self.map.fields:
                if f.name not in cols and f.top not in cols:
                    close = difflib.get_close_matches(f.top, cols, n=1)
                    hint = f"did you mean {{{close[0]}}}? " if close else ""
                    tmpl = next(t for _, t in self.map.turns + self.map.outputs if f in t.fields)
                    return (f"{tmpl.where} uses the field '{f.name}', but the file has no column '{f.top}' "
                            f"({hint}columns: {listing}); fix the template or the header{escape_note(tmpl.text)}")
            return None
        preset = self.preset
        if preset == "auto":
            preset = next((p for key, p in SHAPES if key in cols), "")
            if not preset:
                sample = cols[:2] if len(cols) >= 2 else ["question", "answer"]
                return (f"its columns ({listing}) are not a known record shape; map them to messages with `map`, "
                        f"e.g. `map: {{user: \"{{{sample[0]}}}\", assistant: \"{{{sample[1]}}}\"}}` "
                        "(in `sources` to use it for this file only)")
        if tabular_text and preset in ("openai", "dpo", "sharegpt"):
            return (f"preset {preset} needs nested lists, which a CSV/TSV cannot hold; use JSONL, JSON or Parquet, "
                    "or build the messages from columns with `map`")
        missing = [c for c in COLUMNS[preset] if c not in cols]
        if missing:
            return (f"preset {preset} needs the column{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(repr(c) for c in missing)} (columns: {listing})")
        return None

    def apply(self, record: Any) -> dict[str, Any]:
        if not isinstance(record, dict):
            raise Reject("not_object", f"expected a JSON object, got {type_name(record)}")
        if self.map is not None:
            out = self.map.apply(record)
        elif self.preset == "auto":
            preset = next((p for key, p in SHAPES if key in record), None)
            if preset is None:
                fields = ", ".join(list(record)[:8]) or "none"
                raise Reject("unknown_shape", f"missing a non-empty 'messages' list, and not a DPO, ShareGPT or "
                                              f"Alpaca record either (its fields: {fields}); set `preset`, or "
                                              "`map` to build messages from fields")
            out = _PRESETS[preset](record)
        else:
            out = _PRESETS[self.preset](record)
        meta = out["meta"]
        for f in self.keep:
            value = f.get(record)
            if value is not _MISSING:
                meta[f.name] = value
        return out
