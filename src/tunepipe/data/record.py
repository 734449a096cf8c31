"""The record model every data stage shares (data records; run records are :mod:`tunepipe.records`):
where a record comes from, its texts, its user prompt.

Records are plain dicts parsed from JSONL (parsing into classes would cost more than the work a
stage does per record); this module is the one place that knows how to read them:

* :class:`Provenance`: where a record came from, from the ``meta`` ingest writes (``source`` and
  ``line``, ``row`` or ``index``), else where this stage read it (:meth:`Provenance.located`).
  ``str()`` of it is how messages, reports and rejects name a record: ``data/x.jsonl:5``,
  ``data/x.csv:row 5``, ``data/x.json:index 5``.
* :func:`content_text`: a message's text, whether ``content`` is a string or a list of content
  parts (their texts joined with a line break).
* :func:`user_messages`, :func:`user_prompt`, :func:`prompt_text`: an example's user turns (of a
  chat, of a DPO record's ``input``, or a ``prompt``/``completion`` record's ``prompt``), as one
  comparable string (normalized with :func:`normal_form`) or as text to show.

A stage worker uses them per record, e.g.::

    where = Provenance.located(record, block.label, number)
    rejects.write(where, "empty", "no assistant reply")   # tunepipe.data.rejects
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any, NamedTuple

#: The ``meta`` keys that give a record's position in its source, in the order they are looked up.
POSITION_KEYS = ("line", "row", "index")
_FORMATS = {"line": "{}:{}", "row": "{}:row {}", "index": "{}:index {}"}


class Provenance(NamedTuple):
    """Where a record came from: ``source`` (a file's label), and its position there (``unit``:
    line, row or index; None when the record's meta names only a source)."""

    source: str
    unit: str | None = None
    position: Any = None

    def __str__(self) -> str:
        return self.source if self.unit is None else _FORMATS[self.unit].format(self.source, self.position)

    @classmethod
    def of(cls, record: Any) -> Provenance | None:
        """From the record's ``meta``: its ``source`` (a string) and the first position key with a
        value; None when the record has no such meta."""
        meta = record.get("meta") if isinstance(record, dict) else None
        if not isinstance(meta, dict) or not isinstance(meta.get("source"), str):
            return None
        for unit in POSITION_KEYS:
            if meta.get(unit) is not None:
                return cls(meta["source"], unit, meta[unit])
        return cls(meta["source"])

    @classmethod
    def located(cls, record: Any, label: str, line: int) -> Provenance:
        """From the record's ``meta`` when it gives a position, else this input's file and line."""
        found = cls.of(record)
        return found if found is not None and found.unit is not None else cls(label, "line", line)


def content_text(content: Any) -> str:
    """A message's text: ``content`` itself, or its text parts joined with line breaks ("" for other content)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def normal_form(text: str) -> str:
    """NFC, casefolded, whitespace collapsed (leading and trailing whitespace removed): the form in
    which two prompts are the same prompt."""
    if text.isascii():
        return " ".join(text.lower().split())
    return " ".join(unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).casefold()).split())


def user_messages(record: Mapping[str, Any]) -> list[Any] | None:
    """The messages whose user turns make an example's prompt: a chat's ``messages``, or a DPO
    record's ``input.messages``; None when it has neither (a ``prompt`` record, say)."""
    messages = record.get("messages")
    if messages.__class__ is list:
        return messages
    given = record.get("input")
    messages = given.get("messages") if isinstance(given, dict) else None
    return messages if isinstance(messages, list) else None


def user_prompt(record: Mapping[str, Any]) -> str:
    """The normalized user prompt of a chat, DPO or prompt/completion record ("" when it has none).

    User turns are normalized one by one (:func:`normal_form`) and joined with U+001F, so turn
    boundaries count.
    """
    messages = user_messages(record)
    if messages is None:
        prompt = record.get("prompt")
        return normal_form(prompt) if isinstance(prompt, str) else ""
    turns = []
    for m in messages:
        if m.__class__ is dict and m.get("role") == "user":
            content = m.get("content")
            turns.append(normal_form(content if content.__class__ is str else content_text(content)))
    return "\x1f".join(turns) if any(turns) else ""


def prompt_text(record: Mapping[str, Any]) -> str:
    """An example's user turns as written, joined with " / " (a ``prompt`` record's prompt), to show."""
    messages = user_messages(record) or []
    text = " / ".join(content_text(m.get("content")) for m in messages
                      if isinstance(m, dict) and m.get("role") == "user")
    return text or str(record.get("prompt", ""))
