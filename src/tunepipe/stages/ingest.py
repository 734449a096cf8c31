"""ingest: read training data in the formats people have, into chat examples with provenance.

Inputs (``data``: a file, a glob, a list, or another stage's output) are read in order, streaming,
by :mod:`tunepipe.data.readers`: JSONL, JSON arrays, CSV/TSV, Parquet, each optionally gzip-compressed
(see that module for how each is detected and how positions are counted). Each record is mapped to
a chat example by :mod:`tunepipe.data.mapping`: OpenAI ``messages`` and OpenAI DPO records pass
through; ``sharegpt`` and ``alpaca`` presets convert; ``map`` builds messages from fields with
templates (``user: "{question}"``, dotted paths ``{meta.q}``, ``{{`` for a brace).

Per-source settings. The reading and mapping settings (``format``, ``delimiter``, ``preset``,
``map``, ``keep_fields``) are given at the top level for every input, and may be overridden per file
in ``sources``: a list of ``{match: GLOB, ...settings}``. For each file, the *first* entry whose
``match`` matches the input's name as written in the pipeline (``data/qa.csv``), the file's label
(``stage.output/records.jsonl`` for a stage's output) or the file's base name (``qa.csv``) applies;
the keys it sets replace the top-level ones (``map`` as a whole), the others are inherited. An entry
that matches no file is an error (a typo would otherwise silently fall back). ``map`` is used when
the effective preset is ``map`` or ``auto``; giving ``map`` with another preset in the same place
is an error. A JSONL of messages plus a CSV of question/answer pairs::

    ingest:
      uses: ingest
      inputs: {data: [data/marv.jsonl, data/marv_qa.csv]}
      with:
        on_error: skip
        sources:
          - match: "*.csv"
            map:
              system: Marv is a factual chatbot that is also sarcastic.
              user: "{question}"
              assistant: "{answer}"

Outputs. ``records/records.jsonl``: ``{"messages": [...], "tools"?, "parallel_tool_calls"?, "meta"}``
or ``{"input", "preferred_output", "non_preferred_output", "meta"}``, in input order. ``meta`` holds
``source`` (the file's label) and the record's position: ``line`` (JSONL, 1-based physical line),
``index`` (JSON array, 0-based element) or ``row`` (CSV/TSV/Parquet, 1-based data row: the header
and blank rows are not counted), plus the ``keep_fields`` and, for ``openai``/``dpo`` records, the
record's own ``meta``. ``rejects/rejects.jsonl``: ``{"source", "line"|"index"|"row", "reason",
"code"}`` for each record that could not be used.

Errors. A bad record (not JSON, not UTF-8, not CSV, a wrong field count, wrong types, a missing or
null field, an empty message after mapping, an unknown role, an unknown shape) fails the stage with
``on_error: fail`` (default) as a StageInputError naming ``source:line`` (``source[index]``,
``source:line (row N)``), what is wrong and how to fix it; with ``on_error: skip`` it goes to
``rejects``, and the stage still fails when more than ``max_reject_rate`` (default 0.5) of all
records were rejected: a rate that high means the mapping or the format is wrong, not the data.
A problem with a whole file (unknown format, corrupt gzip, a JSON array that does not balance, a
CSV header without a column the mapping uses, Parquet without pyarrow) always fails the stage: a
silently missing file is worse than a stop. Settings that cannot work (a template that does not
parse, a ``sources`` entry that matches nothing) fail before anything is read. No records at all
(every file empty, or every record rejected) fails the stage too, naming the files and why, unless
``allow_empty: true``: an empty data set would otherwise run the whole pipeline to a hollow success.

Speed and memory. Records move in batches of 1,000; memory holds a bounded number of batches, never
the data set. Parsing and mapping run in ``workers`` processes (:func:`tunepipe.data.parallel.
ordered_map`): with ``workers: 0`` (default) the stage's thread budget (the cores divided by
``-j``) is used once the input is past 20,000 records, one process below that. The output is the
same, byte for byte, for any number of workers; since ``workers`` is a parameter, changing it
reruns this stage, but the records' digest does not change, so the stages after it stay cached.
"""

from __future__ import annotations

import fnmatch
import functools
import json
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import orjson

from tunepipe.data import jsonl, parallel, readers
from tunepipe.data.mapping import PRESETS, ConfigError, Mapper, Reject
from tunepipe.errors import StageInputError, UserError
from tunepipe.plugins import Artifact, Port, StageContext

BATCH = 1000  # records per batch (JSONL goes in blocks of about 256 KiB of lines)
PARALLEL_AFTER = 20_000  # records read before the stage starts worker processes (workers: 0)
SETTINGS = ("format", "delimiter", "preset", "map", "keep_fields")
NOUN = {"line": "line", "index": "element", "row": "row"}

_TEMPLATE = {"type": "string", "description": "A template: text with {field} (or {a.b} for a nested field); "
                                              "{{ and }} write braces."}
_MAP = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "description": "Build messages from fields. A chat example: system (optional; left out when it renders "
                   "empty), user, assistant; or messages for several turns. A DPO example: preferred and "
                   "non_preferred instead of assistant.",
    "properties": {
        "system": {**_TEMPLATE, "description": "Template of the system message (optional)."},
        "user": {**_TEMPLATE, "description": "Template of the user message."},
        "assistant": {**_TEMPLATE, "description": "Template of the assistant message."},
        "preferred": {**_TEMPLATE, "description": "DPO: template of the preferred assistant reply."},
        "non_preferred": {**_TEMPLATE, "description": "DPO: template of the non-preferred assistant reply."},
        "messages": {
            "type": "array", "minItems": 1,
            "description": "Several turns, in order (instead of system/user/assistant).",
            "items": {"type": "object", "additionalProperties": False, "required": ["role", "content"],
                      "properties": {"role": {"enum": ["system", "user", "assistant"]}, "content": _TEMPLATE}},
        },
    },
}


def _settings(defaults: bool) -> dict[str, Any]:
    def d(value: Any) -> dict[str, Any]:
        return {"default": value} if defaults else {}

    return {
        "format": {"enum": ["auto", *readers.FORMATS], **d("auto"),
                   "description": "How to read the files: auto (by extension: .jsonl/.ndjson, .json, .csv, .tsv, "
                                  ".parquet, each optionally .gz), or one format for all."},
        "delimiter": {"type": "string", "minLength": 1, "maxLength": 1,
                      "description": "CSV/TSV field delimiter (default: ',' for csv, tab for tsv)."},
        "preset": {"enum": list(PRESETS), **d("auto"),
                   "description": "How records become chat examples: auto (map if given, else by the record's "
                                  "keys), openai (messages), dpo, sharegpt (conversations), alpaca "
                                  "(instruction/input/output), map."},
        "map": _MAP,
        "keep_fields": {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True,
                        **d([]), "description": "Fields of the source record (dotted paths allowed) to copy "
                                                "into meta; absent ones are left out."},
    }


class Ingest:
    name = "ingest"
    version = "0.2.0"
    description = ("Read JSONL, JSON, CSV/TSV or Parquet (optionally gzipped) into chat examples, with presets, "
                   "field templates and provenance.")
    params_schema: Mapping[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **_settings(defaults=True),
            "sources": {
                "type": "array",
                "description": "Settings for some files: the first entry whose match (a glob) matches a file's "
                               "name in the pipeline replaces the top-level settings it names.",
                "items": {"type": "object", "additionalProperties": False, "required": ["match"],
                          "properties": {"match": {"type": "string", "minLength": 1,
                                                   "description": "Glob matched against the input as written "
                                                                  "in the pipeline, its label or base name."},
                                         **_settings(defaults=False)}},
            },
            "on_error": {"enum": ["fail", "skip"], "default": "fail",
                         "description": "A malformed record fails the stage, or is skipped into 'rejects'."},
            "max_reject_rate": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
                                "description": "With on_error: skip, fail anyway when more than this fraction "
                                               "of the records was rejected."},
            "allow_empty": {"type": "boolean", "default": False,
                            "description": "Let the stage succeed with no records (every file empty, or every "
                                           "record rejected). By default that fails the stage: nothing after "
                                           "ingest can use an empty data set."},
            "workers": {"type": "integer", "minimum": 0, "default": 0,
                        "description": "Processes that parse and map: 0 = the stage's share of the cores, "
                                       "for inputs over 20,000 records. The output does not depend on it."},
        },
    }
    operational = ("workers",)  # how many processes parse: never what they produce
    inputs = {"data": Port("data files: JSONL, JSON, CSV/TSV, Parquet, optionally .gz (a path, a glob, or a list)",
                           multiple=True)}
    outputs = {"records": Port("records.jsonl: one chat example per line, with meta.source and the position"),
               "rejects": Port("rejects.jsonl: records that could not be used, with the reason")}
    packages: tuple[str, ...] = ()

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        plan = _plan(inputs["data"], params)
        stats = _Stats()
        skip = params["on_error"] == "skip"
        with open(ctx.output("records") / "records.jsonl", "wb", buffering=1 << 20) as out, \
                jsonl.Writer(ctx.output("rejects") / "rejects.jsonl") as rej, \
                closing(_results(_batches(plan, stats, ctx), params["workers"], ctx.threads, ctx.engine)) as results:
            for label, unit, blob, count, rejects in results:
                out.write(blob)
                for n, physical, code, reason in rejects:
                    if not skip:
                        raise StageInputError(
                            f"{_where(label, unit, n, physical)}: {reason}. Fix the {NOUN[unit]}, or set "
                            f"`on_error: skip` to set such {NOUN[unit]}s aside in the rejects artifact")
                    rej.write({"source": label, unit: n, "reason": reason, "code": code})
                    stats.reject(code, _where(label, unit, n, physical), reason)
                stats.records += count
                ctx.check_cancelled()
                ctx.progress(f"{stats.records:,} records, {stats.rejected:,} rejected")
        total = stats.records + stats.rejected
        if skip and total and stats.rejected / total > params["max_reject_rate"]:
            raise StageInputError(
                f"{stats.rejected:,} of {total:,} records were rejected ({stats.rejected / total:.0%}), more than "
                f"max_reject_rate {params['max_reject_rate']}: the format or the mapping is probably wrong. "
                f"Most common: {stats.top()}. Fix the data or the settings, or raise max_reject_rate")
        ctx.log.info("read %d files: %d records, %d rejected %s", stats.files, stats.records, stats.rejected,
                     dict(stats.by_code))
        if not stats.records and not params.get("allow_empty", False):
            raise StageInputError(_empty_message(stats))
        return {"records": stats.records, "rejected": stats.rejected, "files": stats.files,
                "rejected_by_reason": dict(sorted(stats.by_code.items()))}


@dataclass
class _Stats:
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


def _names(labels: list[str], shown: int = 5) -> str:
    """``a.jsonl, b.csv`` or ``a.jsonl, ... and 7 more files``: the files in a message, bounded."""
    more = len(labels) - shown
    return ", ".join(labels[:shown]) + (f" and {more:,} more file{'s' if more > 1 else ''}" if more > 0 else "")


def _empty_message(stats: _Stats) -> str:
    """Why ingest read no records, and what to do: the files were empty, or every record was rejected."""
    where = _names(stats.labels) if stats.labels else "the inputs (no data file among them)"
    if stats.rejected:
        why = (f"all {stats.rejected:,} records were rejected ({stats.top()}). Fix the data or the reading "
               "settings (format, preset, map)")
    else:
        one = len(stats.labels) == 1
        why = (f"{'the file holds' if one else 'the files hold'} no records (empty, only blank lines, or a header "
               "without rows). Check the input paths and the files' contents")
    return (f"no records read from {where}: {why}, or set `allow_empty: true` on this stage to pass an empty data "
            "set on (the stages after it need records)")


def _where(label: str, unit: str, n: int, physical: int | None) -> str:
    if unit == "line":
        return f"{label}:{n}"
    if unit == "index":
        return f"{label}[{n}]"
    return f"{label}:{physical} (row {n})" if physical is not None else f"{label} row {n}"


# ---------------------------------------------------------------------------------------------- planning

@dataclass(frozen=True)
class _File:
    art: Artifact
    path: Path
    label: str
    settings: dict[str, Any]
    where: str  # where the file's map comes from, for messages: "" (top level) or "sources[i]"
    explicit_format: bool  # the format was set (not auto), so unknown extensions are read anyway


def _plan(arts: list[Artifact], params: Mapping[str, Any]) -> list[_File]:
    """Every file to read with its settings; checks the settings before any data is read."""
    sources = params.get("sources") or []
    _check_settings(params, "")
    for i, entry in enumerate(sources):
        _check_settings(entry, f"sources[{i}]")
    used = [False] * len(sources)
    files: list[_File] = []
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
            files.append(_File(art, path, label, settings, where, settings.get("format", "auto") != "auto"))
    for i, entry in enumerate(sources):
        if not used[i]:
            names = ", ".join(dict.fromkeys(a.name or a.path.name for a in arts)) or "none"
            raise UserError(f"ingest parameter sources[{i}].match {entry['match']!r} matches none of the inputs "
                            f"({names}); fix the pattern or remove the entry")
    for f in {(json.dumps(f.settings, sort_keys=True), f.where): f for f in files}.values():
        try:
            Mapper(f.settings, f.where)
        except ConfigError as e:
            raise UserError(f"ingest parameter {e}") from None
    return files


def _check_settings(settings: Mapping[str, Any], where: str) -> None:
    prefix = f"{where}." if where else ""
    preset = settings.get("preset")
    if "map" in settings and preset not in (None, "auto", "map"):
        raise UserError(f"ingest parameters {prefix}map and {prefix}preset: {preset} do not go together: a map is "
                        f"used with preset map (or auto); remove one of them")
    try:
        Mapper({"preset": "auto" if preset == "map" and "map" not in settings else preset or "auto",
                "map": settings.get("map"), "keep_fields": settings.get("keep_fields")}, where)
    except ConfigError as e:
        raise UserError(f"ingest parameter {e}") from None


# ---------------------------------------------------------------------------------------------- reading

# (settings as JSON, where the map comes from, label, format, unit, columns, a Block or a list of units)
_Batch = tuple[str, str, str, str, str, tuple[str, ...] | None, Any]
_Result = tuple[str, str, bytes, int, list[tuple[int, int | None, str, str]]]


def _batches(plan: list[_File], stats: _Stats, ctx: StageContext) -> Iterator[_Batch]:
    """The work, in input order, one batch (a block of JSONL lines, or a list of units) at a time."""
    for f in plan:
        if not f.explicit_format and f.path != f.art.path and readers.format_from_name(f.path) is None:
            ctx.log.info("skipping %s: not a data file by its name", f.label)  # e.g. a report in a stage's folder
            continue
        settings_json = json.dumps(f.settings, sort_keys=True)
        try:
            with readers.open_source(f.path, f.settings.get("format", "auto"), f.settings.get("delimiter")) as src:
                stats.files += 1
                stats.labels.append(f.label)
                if src.columns:  # a tabular file with a header (an empty file simply has no records)
                    problem = Mapper(f.settings, f.where).columns_problem(src.columns, src.format != "parquet")
                    if problem:
                        raise StageInputError(f"{f.label}: {problem}")
                for units in src.batches(BATCH):
                    yield settings_json, f.where, f.label, src.format, src.unit, src.columns, units
        except readers.FileProblem as e:
            raise StageInputError(f"{f.label}: {e}") from None


def _size(batch: _Batch) -> int:
    units = batch[-1]
    return units.lines if isinstance(units, readers.Block) else len(units)


def _detached(batch: _Batch) -> _Batch:
    """A batch to send to a worker process: a block of a plain file goes as its offset, not its bytes."""
    units = batch[-1]
    return (*batch[:-1], units.detached()) if isinstance(units, readers.Block) else batch


def _results(work: Iterator[_Batch], workers: int, threads: int, engine: str = "local") -> Iterator[_Result]:
    """``map(_process, work)``, in input order, on worker processes when it pays (on Ray, on the
    cluster: a block then carries its bytes, since a worker on another node cannot read this file)."""
    if workers == 0:  # automatic: the stage's threads, once the input is large enough to pay for them
        workers = parallel.worker_count(threads, engine)
        head: list[_Batch] = []
        seen = 0
        while seen < PARALLEL_AFTER and (batch := next(work, None)) is not None:
            head.append(batch)
            seen += _size(batch)
        if seen < PARALLEL_AFTER:
            workers = 1
        work = chain(head, work)
    if workers <= 1:
        yield from map(_process, work)
    else:
        with closing(parallel.ordered_map(_process, work if engine == "ray" else map(_detached, work), workers,
                                          engine=engine)) as results:
            yield from results


# ------------------------------------------------------------------------------- parsing and mapping (workers)

@functools.lru_cache(maxsize=64)
def _mapper(settings_json: str, where: str) -> Mapper:
    return Mapper(json.loads(settings_json), where)


def _process(batch: _Batch) -> _Result:
    """Parse and map one batch: the output (JSON lines, one blob), how many, and the rejects as
    (n, physical line, code, reason)."""
    settings_json, where, label, fmt, unit, columns, units = batch
    mapper = _mapper(settings_json, where)
    if isinstance(units, readers.Block):
        units = readers.block_lines(units.read(), units.first_line)
    lines: list[bytes] = []
    rejects: list[tuple[int, int | None, str, str]] = []
    for item in units:
        n = item[0]
        physical = item[2] if unit == "row" else None
        record: Any = None
        try:
            record = _decode(fmt, unit, columns, item)
            out = mapper.apply(record)
            out["meta"]["source"] = label
            out["meta"][unit] = n
            lines.append(orjson.dumps(out, default=_json_default))
        except Reject as r:
            rejects.append((n, physical, r.code, r.reason))
        except orjson.JSONEncodeError as e:
            code, reason = _encode_problem(record, e)
            rejects.append((n, physical, code, reason))
    return label, unit, b"".join(line + b"\n" for line in lines), len(lines), rejects


def _decode(fmt: str, unit: str, columns: tuple[str, ...] | None, item: Any) -> Any:
    if unit != "row":
        raw: bytes = item[1]
        if not raw:
            raise Reject("bad_json", "empty element (a stray comma?)")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as u:
                raise Reject("not_utf8", f"not UTF-8 (byte offset {u.start} in the {NOUN[unit]})") from None
            raise Reject("bad_json", f"not valid JSON ({e.msg} at column {e.colno})") from None
    values = item[1]
    if isinstance(values, str):
        raise Reject("bad_csv", values)
    assert columns is not None
    if len(values) != len(columns):
        raise Reject("field_count", f"the row has {len(values)} fields but the header has {len(columns)}; quote "
                                    "fields that contain the delimiter")
    if fmt == "parquet":
        values = readers.nested_without_nulls(values)
    return dict(zip(columns, values))


def _json_default(value: Any) -> Any:
    from decimal import Decimal

    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _encode_problem(record: Any, e: Exception) -> tuple[str, str]:
    if isinstance(record, dict):
        for name, value in record.items():
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    return "not_utf8", f"not UTF-8 (in column '{name}')"
    return "not_json", f"a value cannot be written as JSON ({e})"
