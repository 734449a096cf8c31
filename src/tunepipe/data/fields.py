"""Dotted paths into records: ``meta.conversation_id``, ``meta.label``, ``messages.0.role``.

A path is a list of keys separated by dots; a part made of digits indexes a list. Stage parameters
such as ``group_by`` and ``stratify_by`` name a field this way.

    >>> get({"meta": {"label": "pos"}}, parse("meta.label"))
    'pos'
    >>> get({"meta": {}}, parse("meta.label")) is MISSING
    True
"""

from __future__ import annotations

from typing import Any

#: The ``pattern`` a JSON Schema can use for a dotted path parameter (no empty parts).
PATTERN = r"^[^.]+(\.[^.]+)*$"


class _Missing:
    """The value of a path that does not exist in a record (distinct from a JSON ``null``)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "MISSING"  # pickles as the module-level singleton


MISSING: Any = _Missing()


def parse(path: str) -> tuple[str, ...]:
    """Split a dotted path into its parts; an empty path or an empty part is a ``ValueError``."""
    parts = tuple(path.split("."))
    if not path or any(not p for p in parts):
        raise ValueError(f"{path!r} is not a dotted path: write keys separated by single dots, e.g. meta.label")
    return parts


def _step(value: Any, part: str) -> Any:
    if isinstance(value, dict):
        return value.get(part, MISSING)
    if isinstance(value, list) and part.isdigit():
        i = int(part)
        return value[i] if i < len(value) else MISSING
    return MISSING


def get(record: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path`` in ``record``, or :data:`MISSING` when some part does not exist."""
    value = record
    for part in path:
        value = _step(value, part)
        if value is MISSING:
            return MISSING
    return value


def why_missing(record: Any, path: tuple[str, ...]) -> str:
    """Where ``path`` stops in ``record``, for an error message (e.g. "'meta' has no key 'label'")."""
    value = record
    for n, part in enumerate(path):
        here = ".".join(path[:n]) or "the record"
        here = here if n == 0 else f"'{here}'"
        nxt = _step(value, part)
        if nxt is MISSING:
            if isinstance(value, dict):
                keys = ", ".join(sorted(map(str, value))[:12]) or "none"
                return f"{here} has no key '{part}' (its keys: {keys})"
            if isinstance(value, list):
                return f"{here} is a list of {len(value)} items: '{part}' is not an index in it"
            return f"{here} is {type(value).__name__}, not an object"
        value = nxt
    return "the path exists"
