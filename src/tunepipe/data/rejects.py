"""``rejects.jsonl``: the records a stage set aside, one row each, in one layout for every stage.

A row is ``{"source", "line"|"row"|"index", "stage", "code", "reason"}`` in that order: where the
record came from (its :class:`~tunepipe.data.record.Provenance`; the position key is left out when
the source names no position), the stage that set it aside, a short stable ``code`` to count and
filter by (``bad_json``, ``exact_duplicate``), and a ``reason`` a person reads. A duplicate adds
``duplicate_of`` (the kept record's provenance, as text); a stage may add details after it
(``similarity``, ``tokens``, the ``example`` itself), never before, so every file reads alike::

    with Rejects(ctx.output("rejects") / "rejects.jsonl", ctx.stage) as rejects:
        rejects.write(where, "too_long", "too many tokens", tokens=5000, max_tokens=4096)
        rejects.write(where, "exact_duplicate", "exact duplicate", duplicate_of=first)
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from tunepipe.data import jsonl
from tunepipe.data.record import Provenance


def reject_row(stage: str, where: Provenance, code: str, reason: str, duplicate_of: Provenance | None = None,
               **details: Any) -> dict[str, Any]:
    """The one layout of a rejects row (see the module's documentation)."""
    row: dict[str, Any] = {"source": where.source}
    if where.unit is not None:
        row[where.unit] = where.position
    row.update(stage=stage, code=code, reason=reason)
    if duplicate_of is not None:
        row["duplicate_of"] = str(duplicate_of)
    row.update(details)
    return row


class Rejects(AbstractContextManager["Rejects"]):
    """Writes a stage's ``rejects.jsonl`` (created empty when nothing is rejected); counts the rows."""

    def __init__(self, path: Path, stage: str) -> None:
        self.stage = stage
        self._out = jsonl.Writer(path)

    @property
    def count(self) -> int:
        return self._out.count

    def write(self, where: Provenance, code: str, reason: str, duplicate_of: Provenance | None = None,
              **details: Any) -> None:
        """One rejected record: where it came from, why (``code`` and ``reason``), and any details."""
        self._out.write(reject_row(self.stage, where, code, reason, duplicate_of, **details))

    def __exit__(self, *exc: object) -> None:
        """Close the file (``with Rejects(...)``: entering returns the writer itself)."""
        self._out.close()
