"""Turning source records into chat examples: presets, field templates, and the checks on the result.

A :class:`Mapper` is built from one source's settings (``preset``, ``map``, ``keep_fields``) and
maps one record (a dict read from JSON, or a CSV/Parquet row as ``{column: value}``) to an output
record without provenance, or raises :class:`Reject` with a short ``code`` and a readable reason.
Bad *settings* raise :class:`ConfigError` when the mapper is built, before any data is read.

Presets: ``openai``, ``dpo``, ``sharegpt`` and ``alpaca`` are record shapes converted by
:mod:`tunepipe.data.presets` (which also holds :class:`Reject`); here:

* ``map``: templates per message, e.g. ``{system: "Marv is...", user: "{question}", assistant:
  "{answer}"}``, or ``{messages: [{role, content}...]}`` for several turns, or ``preferred`` and
  ``non_preferred`` instead of ``assistant`` for a DPO record. See :class:`Template`.
* ``auto``: ``map`` when a map is given; else by the record's keys: ``messages`` -> openai,
  ``preferred_output`` -> dpo, ``conversations`` -> sharegpt, ``instruction`` -> alpaca.

For every preset, ``keep_fields`` copies fields of the source record into ``meta``.
Other top-level fields are not copied: output records have a fixed shape.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from tunepipe.data.presets import CONVERTERS, Reject, type_name

PRESETS = ("auto", "openai", "dpo", "sharegpt", "alpaca", "map")
# the keys that identify a preset in auto mode, in the order they are tried
SHAPES = (("messages", "openai"), ("preferred_output", "dpo"), ("non_preferred_output", "dpo"),
          ("conversations", "sharegpt"), ("instruction", "alpaca"))
# the columns a tabular file needs for each preset
COLUMNS = {"openai": ("messages",), "dpo": ("input", "preferred_output", "non_preferred_output"),
           "sharegpt": ("conversations",), "alpaca": ("instruction", "output")}


class ConfigError(ValueError):
    """The stage's settings are wrong (a template that does not parse, a map without a user message)."""


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
            for key, preset in SHAPES:  # a loop, not next(genexpr): this runs once per record
                if key in record:
                    break
            else:
                fields = ", ".join(list(record)[:8]) or "none"
                raise Reject("unknown_shape", f"missing a non-empty 'messages' list, and not a DPO, ShareGPT or "
                                              f"Alpaca record either (its fields: {fields}); set `preset`, or "
                                              "`map` to build messages from fields")
            out = CONVERTERS[preset](record)
        else:
            out = CONVERTERS[self.preset](record)
        meta = out["meta"]
        for f in self.keep:
            value = f.get(record)
            if value is not _MISSING:
                meta[f.name] = value
        return out


__all__ = ["COLUMNS", "PRESETS", "SHAPES", "ConfigError", "Field", "MapSpec", "Mapper", "Reject", "Template",
           "as_text", "escape_note"]
