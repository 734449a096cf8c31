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
record's own ``meta``. ``rejects/rejects.jsonl``: ``{"source", "line"|"index"|"row", "stage", "code",
"reason"}`` for each record that could not be used (:mod:`tunepipe.data.rejects`, the layout of every stage).

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

Speed and memory. Records move in batches (a block of about 1 MiB of JSONL lines, or 1,000
elements or rows); memory holds a bounded number of batches, never the data set. Parsing and mapping
run in ``workers`` processes (``ctx.map``): with ``workers: 0`` (default) the stage's share of the
cores is used once the input is past 20,000 records, one process below that. A worker reads its
block of a plain JSONL file itself and writes its records to a part file that this process appends
to the output (:mod:`tunepipe.data.ingest_work`), so neither the input nor the output goes through a
pipe. The output is the same, byte for byte, for any number of workers, and ``workers`` is an
operational setting: changing it reruns nothing.

The work itself is :mod:`tunepipe.data.ingesting` (planning, reading, accounting) and
:mod:`tunepipe.data.ingest_work` (a batch, in a worker); this module is the stage: its parameters,
``run`` and its summary.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from contextlib import closing
from itertools import chain
from typing import Any

from tunepipe.data import readers
from tunepipe.data.ingest_work import Output, map_batch
from tunepipe.data.ingesting import Batch, Mapped, Stats, batches, plan
from tunepipe.data.mapping import PRESETS
from tunepipe.data.rejects import Rejects
from tunepipe.errors import StageInputError
from tunepipe.plugins import Port, StageContext

PARALLEL_AFTER = 20_000  # records read before the stage starts worker processes (workers: 0)

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
        files = plan(inputs["data"], params)
        stats = Stats()
        skip = params["on_error"] == "skip"
        with Output(ctx.output("records") / "records.jsonl", ctx.scratch / "parts") as out, \
                Rejects(ctx.output("rejects") / "rejects.jsonl", ctx.stage) as rejects, \
                closing(_mapped(ctx, batches(files, stats, ctx.log), params["workers"], out)) as results:
            for done in results:
                out.add(done)
                for r in done.rejects:
                    if not skip:
                        raise StageInputError(r.failure(done.reading))
                    rejects.write(r.provenance(done.reading), r.code, r.reason)
                    stats.reject(r.code, done.reading.located(r.position, r.physical), r.reason)
                stats.records += done.records
                ctx.check_cancelled()
                ctx.progress(f"{stats.records:,} records, {stats.rejected:,} rejected")
        problem = stats.too_many_rejects(params["max_reject_rate"]) if skip else None
        if problem:
            raise StageInputError(problem)
        ctx.log.info("read %d files: %d records, %d rejected %s", stats.files, stats.records, stats.rejected,
                     dict(stats.by_code))
        if not stats.records and not params.get("allow_empty", False):
            raise StageInputError(stats.nothing_read())
        return {"records": stats.records, "rejected": stats.rejected, "files": stats.files,
                "rejected_by_reason": dict(sorted(stats.by_code.items()))}


def _mapped(ctx: StageContext, work: Iterator[Batch], workers: int, out: Output) -> Iterator[Mapped]:
    """``map_batch`` over the batches, in input order: in this process for one worker or a small
    input (``workers: 0`` and under ``PARALLEL_AFTER`` records), else spread by ``ctx.map``."""
    if workers == 0:  # automatic: the stage's share of the cores, once the input is large enough to pay for them
        head: list[Batch] = []
        seen = 0
        while seen < PARALLEL_AFTER and (batch := next(work, None)) is not None:
            head.append(batch)
            seen += batch.size
        work = chain(head, work)
        serial = seen < PARALLEL_AFTER
    else:
        serial = workers == 1
    if serial or (workers or ctx.workers) <= 1:  # the lines come back as one bytes object: no part files
        return ctx.map(map_batch, work, serial=True)
    # local_files: a block of a plain file is a byte range of a file on this node, and every part is
    # written into this node's scratch
    return ctx.map(functools.partial(map_batch, parts=str(out.parts)), work, local_files=True, workers=workers)
