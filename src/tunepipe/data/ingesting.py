"""What ingest does, as plain functions and data (the stage, :mod:`tunepipe.stages.ingest`, is its shell).

* Planning (:func:`plan`): every file of the inputs with its effective settings (the top-level
  ones, replaced key by key by the first ``sources`` entry that matches it), all checked before
  any data is read.
* Reading, in the stage's process (:func:`batches`): each file opened by :mod:`tunepipe.data.readers`
  and cut into :class:`Batch` es, the unit of work: a block of JSONL lines (a byte range that the
  worker reads itself, or the bytes of a gzip stream), or a list of up to ``readers.BATCH`` JSON elements
  or table rows.
* Mapping, in a worker (:func:`map_batch`, in :mod:`tunepipe.data.ingest_work`): parse each unit,
  map it to a chat example (:mod:`tunepipe.data.mapping`), add its provenance and write it as a
  JSON line; what cannot be used comes back as :class:`Rejected`.
* Accounting (:class:`Stats`): counts, the most common reasons, and the messages of a stage that
  rejected too much or read nothing.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from tunepipe.data import readers
from tunepipe.data.blocks import Block
from tunepipe.data.mapping import ConfigError, Mapper
from tunepipe.data.record import Provenance
from tunepipe.errors import StageInputError, UserError

if TYPE_CHECKING:
    from tunepipe.plugins import Artifact

SETTINGS = ("format", "delimiter", "preset", "map", "keep_fields")
NOUN = {"line": "line", "index": "element", "row": "row"}


# ---------------------------------------------------------------------------------------------- planning

@dataclass(frozen=True)
class PlannedFile:
    """One file to read, with its effective settings."""

    art: Artifact
    path: Path
    label: str
    settings: dict[str, Any]
    where: str  # where the file's map comes from, for messages: "" (top level) or "sources[i]"
    explicit_format: bool  # the format was set (not auto), so unknown extensions are read anyway


def plan(arts: list[Artifact], params: Mapping[str, Any]) -> list[PlannedFile]:
    """Every file to read with its settings; checks the settings before any data is read."""
    sources = params.get("sources") or []
    check_settings(params, "")
    for i, entry in enumerate(sources):
        check_settings(entry, f"sources[{i}]")
    used = [False] * len(sources)
    files: list[PlannedFile] = []
    for art in arts:
        for path in art.files():
            label = art.label(path)
            settings = {k: params[k] for k in SETTINGS if k in params}
            where = ""
            for i, entry in enumerate(sources):
                if any(fnmatch.fnmatchcase(name, entry["match"]) for name in (art.name, label, path.name)):
                    used[i] = True
                    settings.update({k: entry[k] for k in SETTINGS if k in entry})
                    where = f"sources[{i}]" if "map" in entry or "keep_fields" in entry else ""
                    break
            files.append(PlannedFile(art, path, label, settings, where, settings.get("format", "auto") != "auto"))
    for i, entry in enumerate(sources):
        if not used[i]:
            names = ", ".join(dict.fromkeys(a.name or a.path.name for a in arts)) or "none"
            raise UserError(f"ingest parameter sources[{i}].match {entry['match']!r} matches none of the inputs "
                            f"({names}); fix the pattern or remove the entry")
    for f in {(json.dumps(f.settings, sort_keys=True), f.where): f for f in files}.values():
        _mapper_or_user_error(f.settings, f.where)
    return files


def check_settings(settings: Mapping[str, Any], where: str) -> None:
    """The reading and mapping settings at one place (the top level, or ``sources[i]``) can work."""
    prefix = f"{where}." if where else ""
    preset = settings.get("preset")
    if "map" in settings and preset not in (None, "auto", "map"):
        raise UserError(f"ingest parameters {prefix}map and {prefix}preset: {preset} do not go together: a map is "
                        f"used with preset map (or auto); remove one of them")
    _mapper_or_user_error({"preset": "auto" if preset == "map" and "map" not in settings else preset or "auto",
                           "map": settings.get("map"), "keep_fields": settings.get("keep_fields")}, where)


def _mapper_or_user_error(settings: Mapping[str, Any], where: str) -> None:
    try:
        Mapper(settings, where)
    except ConfigError as e:
        raise UserError(f"ingest parameter {e}") from None


# ---------------------------------------------------------------------------------------------- reading

class Reading(NamedTuple):
    """How a file's units are parsed and mapped, and named: what a worker needs besides the units."""

    settings: str  # the file's settings as JSON (sorted keys): a worker builds and caches its Mapper by it
    where: str  # where the file's map comes from, for messages
    label: str  # the file in provenance and messages
    format: str  # jsonl, json, csv, tsv, parquet
    unit: str  # what a position counts: line, index or row
    columns: tuple[str, ...] | None  # a table's header

    def located(self, position: int, physical: int | None = None) -> str:
        """A unit's place in a message: ``a.jsonl:5``, ``a.json[5]``, ``a.csv:7 (row 5)``, ``a.parquet row 5``."""
        if self.unit == "line":
            return f"{self.label}:{position}"
        if self.unit == "index":
            return f"{self.label}[{position}]"
        return f"{self.label}:{physical} (row {position})" if physical is not None else f"{self.label} row {position}"


class Batch(NamedTuple):
    """A unit of work: a :class:`~tunepipe.data.blocks.Block` of JSONL lines, or a list of JSON
    elements ``(index, bytes)`` or table rows ``(row, values or a problem, physical line or None)``.
    ``index``: the batch's place among all the stage's batches (it names the worker's output part)."""

    reading: Reading
    units: Block | list[tuple[Any, ...]]
    index: int

    @property
    def size(self) -> int:
        """Records in the batch (physical lines, for a block)."""
        return self.units.nlines if isinstance(self.units, Block) else len(self.units)


def batches(files: list[PlannedFile], stats: Stats, log: logging.Logger) -> Iterator[Batch]:
    """The work, in input order, one batch at a time; counts the files read into ``stats``."""
    index = 0
    for f in files:
        if not f.explicit_format and f.path != f.art.path and readers.format_from_name(f.path) is None:
            log.info("skipping %s: not a data file by its name", f.label)  # e.g. a report in a stage's folder
            continue
        settings = json.dumps(f.settings, sort_keys=True)
        try:
            with readers.open_source(f.path, f.settings.get("format", "auto"), f.settings.get("delimiter")) as src:
                stats.files += 1
                stats.labels.append(f.label)
                if src.columns:  # a tabular file with a header (an empty file simply has no records)
                    problem = Mapper(f.settings, f.where).columns_problem(src.columns, src.format != "parquet")
                    if problem:
                        raise StageInputError(f"{f.label}: {problem}")
                reading = Reading(settings, f.where, f.label, src.format, src.unit, src.columns)
                for units in src.batches():  # readers.BATCH elements or rows, or a block of lines
                    yield Batch(reading, units, index)
                    index += 1
        except readers.FileProblem as e:
            raise StageInputError(f"{f.label}: {e}") from None


class Rejected(NamedTuple):
    """A unit that could not be used: its ``position`` (line, index or row), the ``physical`` line a
    CSV row starts on, a short ``code`` and the ``reason``."""

    position: int
    physical: int | None
    code: str
    reason: str

    def provenance(self, reading: Reading) -> Provenance:
        return Provenance(reading.label, reading.unit, self.position)

    def failure(self, reading: Reading) -> str:
        """The stage's error for this unit with ``on_error: fail``."""
        noun = NOUN[reading.unit]
        return (f"{reading.located(self.position, self.physical)}: {self.reason}. Fix the {noun}, or set "
                f"`on_error: skip` to set such {noun}s aside in the rejects artifact")


class Mapped(NamedTuple):
    """A batch done: how many records it gave and its rejects; its output lines are ``data``, or the
    file ``part`` a worker process wrote them to (:mod:`tunepipe.data.ingest_work`)."""

    reading: Reading
    records: int
    rejects: list[Rejected]
    data: bytes = b""
    part: str = ""


# ---------------------------------------------------------------------------------------------- accounting

@dataclass
class Stats:
    """What the stage read: records, rejects by code (with the first of each), files."""

    records: int = 0
    rejected: int = 0
    files: int = 0
    labels: list[str] = field(default_factory=list)  # the files read, for messages
    by_code: Counter[str] = field(default_factory=Counter)
    example: dict[str, str] = field(default_factory=dict)

    def reject(self, code: str, where: str, reason: str) -> None:
        self.rejected += 1
        self.by_code[code] += 1
        self.example.setdefault(code, f"{where}: {reason}")

    def top(self, n: int = 3) -> str:
        return "; ".join(f"{code} ×{count:,} (first: {self.example[code]})"
                         for code, count in self.by_code.most_common(n))

    def too_many_rejects(self, max_rate: float) -> str | None:
        """The stage's error when more than ``max_rate`` of the records were rejected, else None."""
        total = self.records + self.rejected
        if not total or self.rejected / total <= max_rate:
            return None
        return (f"{self.rejected:,} of {total:,} records were rejected ({self.rejected / total:.0%}), more than "
                f"max_reject_rate {max_rate}: the format or the mapping is probably wrong. "
                f"Most common: {self.top()}. Fix the data or the settings, or raise max_reject_rate")

    def nothing_read(self) -> str:
        """Why ingest read no records, and what to do: the files were empty, or every record was rejected."""
        where = _names(self.labels) if self.labels else "the inputs (no data file among them)"
        if self.rejected:
            why = (f"all {self.rejected:,} records were rejected ({self.top()}). Fix the data or the reading "
                   "settings (format, preset, map)")
        else:
            one = len(self.labels) == 1
            why = (f"{'the file holds' if one else 'the files hold'} no records (empty, only blank lines, or a "
                   "header without rows). Check the input paths and the files' contents")
        return (f"no records read from {where}: {why}, or set `allow_empty: true` on this stage to pass an empty "
                "data set on (the stages after it need records)")


def _names(labels: list[str], shown: int = 5) -> str:
    """``a.jsonl, b.csv`` or ``a.jsonl, ... and 7 more files``: the files in a message, bounded."""
    more = len(labels) - shown
    return ", ".join(labels[:shown]) + (f" and {more:,} more file{'s' if more > 1 else ''}" if more > 0 else "")
