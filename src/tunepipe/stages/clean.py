"""clean: normalize, redact, filter and deduplicate chat records, accounting for every change.

Reads the ``records`` artifact of ``ingest`` (chat records with ``messages``, or DPO records with
``input``/``preferred_output``/``non_preferred_output``; a JSONL file given directly works too) and
writes:

* ``records/records.jsonl``: the kept records, cleaned, in input order, ``meta`` unchanged;
* ``rejects/rejects.jsonl``: one row per dropped record in the layout every stage shares
  (:mod:`tunepipe.data.rejects`): where it came from (as in its ``meta``, else this input's file
  and line), ``stage``, ``code`` and ``reason``, plus ``duplicate_of`` (the kept record's
  provenance) and ``similarity`` for duplicates, ``tokens`` and the limit for the length filters;
* ``report/report.json``: records in and out, dropped per reason, replacements per redaction
  kind, kept records per kind of change, the dedupe settings and index size;
  ``report/changes.jsonl``: one line per kept record that changed, with what changed (texts per
  normalization, ``empty_turns`` dropped, replacements per redaction kind).

What is done to each record: :mod:`tunepipe.data.cleaning`. The pass over the input:
:mod:`tunepipe.data.clean_passes` (workers clean blocks of about 1 MiB that they read themselves,
and stage the kept lines; this process decides exact and near-duplicate membership in input order,
so the first occurrence is kept and the output is the same for any number of workers, and copies
the staged lines but the duplicates'). Memory stays flat apart from the dedupe index, which
``max_index`` bounds.

No record left (an empty input, or every record dropped) fails the stage with the count per reason
and what to change, unless ``allow_empty: true``: the stages after it cannot use an empty data set.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunepipe.data import jsonl
from tunepipe.data.blocks import BLOCK_BYTES, LineNumbers, cut, jsonl_files
from tunepipe.data.clean_passes import Gather, Tally, clean_block
from tunepipe.data.cleaning import (EMPTY, EMPTY_NON_PREFERRED, EMPTY_PREFERRED, EMPTY_PROMPT, EXACT, NEAR,
                                    NO_ASSISTANT, SAME_OUTPUTS, TOO_LONG, TOO_SHORT, Config, cleaner_for)
from tunepipe.data.normalize import FORMS
from tunepipe.data.outfile import OutputFile
from tunepipe.data.pii import KINDS
from tunepipe.data.rejects import Rejects
from tunepipe.data.tokens import OFFLINE_ENCODINGS
from tunepipe.errors import StageInputError, UserError
from tunepipe.plugins import Artifact, Port, StageContext

if TYPE_CHECKING:  # numpy and the dedupe index load when the stage runs, not to plan a cached rerun
    from tunepipe.data.dedupe import Deduper

_NO_FILE = "pass the records of ingest (ingest.records) or a JSONL file"

PARAMS_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "unicode_form": {"enum": list(FORMS), "default": "NFC",
                         "description": "Unicode normalization of every text: NFC (compose), NFKC (also fold "
                                        "compatibility forms such as full-width letters), or none."},
        "whitespace": {"type": "boolean", "default": True,
                       "description": "Trim each turn, remove trailing spaces, collapse runs of spaces and tabs "
                                      "inside lines (indentation and fenced code blocks are kept)."},
        "max_blank_lines": {"type": "integer", "minimum": 0, "default": 1,
                            "description": "Longer runs of blank lines shrink to this many (with whitespace: true)."},
        "redact": {"type": "array", "items": {"enum": list(KINDS)}, "uniqueItems": True, "default": list(KINDS),
                   "description": "Kinds of personal data and secrets replaced with [EMAIL], [PHONE], "
                                  "[CREDIT_CARD] (Luhn-checked) and [SECRET]; [] turns redaction off."},
        "min_tokens": {"type": ["integer", "null"], "minimum": 0, "default": None,
                       "description": "Drop examples with fewer tokens (OpenAI's count: messages, tools, priming)."},
        "max_tokens": {"type": ["integer", "null"], "minimum": 1, "default": None,
                       "description": "Drop examples with more tokens (e.g. the model's training context)."},
        "encoding": {"enum": [None, *OFFLINE_ENCODINGS], "default": None,
                     "description": "tiktoken encoding for the token limits; default: the model's, else o200k_base."},
        "model": {"type": ["string", "null"], "default": None,
                  "description": "OpenAI model whose encoding counts tokens (e.g. gpt-4o-mini-2024-07-18)."},
        "dedupe": {"enum": ["none", "exact", "near"], "default": "near",
                   "description": "Drop exact duplicates (exact), and also near duplicates by MinHash LSH (near)."},
        "dedupe_on": {"enum": ["conversation", "prompt"], "default": "conversation",
                      "description": "Compare the user and assistant texts (conversation) or the user texts only "
                                     "(prompt); casefolded, whitespace collapsed. The first occurrence is kept."},
        "near_threshold": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.85,
                           "description": "Estimated Jaccard similarity of word shingles from which a record is "
                                          "a near duplicate of a kept one."},
        "num_perm": {"type": "integer", "minimum": 16, "maximum": 512, "default": 64,
                     "description": "MinHash permutations: more is more accurate, slower and larger "
                                    "(index: about 240 bytes a record at 64, 430 at 128)."},
        "shingle_size": {"type": "integer", "minimum": 1, "maximum": 16, "default": 3,
                         "description": "Words per shingle for near-duplicate detection."},
        "max_index": {"type": "integer", "minimum": 0, "default": 1_000_000,
                      "description": "Records kept in the dedupe index; later records are still checked "
                                     "against it but not added (bounds memory)."},
        "allow_empty": {"type": "boolean", "default": False,
                        "description": "Let the stage succeed when no record is left. By default that fails the "
                                       "stage, with the count dropped per reason: nothing after clean can use "
                                       "an empty data set."},
    },
}


class Clean:
    name = "clean"
    version = "0.1.0"
    description = "Normalize, redact, filter by tokens and deduplicate chat records; every change accounted for."
    params_schema: Mapping[str, Any] = PARAMS_SCHEMA
    inputs = {"records": Port("records.jsonl of chat or DPO records (ingest.records)")}
    outputs = {"records": Port("records.jsonl: the kept records, cleaned"),
               "rejects": Port("rejects.jsonl: dropped records with source, line, code and reason (duplicate_of)"),
               "report": Port("report.json: counts per reason, redaction kind and change; changes.jsonl")}
    packages: tuple[str, ...] = ("datasketch", "tiktoken")

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        from tunepipe.data.dedupe import Deduper

        cfg = _config(params)
        art: Artifact = inputs["records"]
        files = jsonl_files(art, _NO_FILE)
        deduper = Deduper(exact=cfg.dedupe != "none", near=cfg.dedupe == "near", threshold=params["near_threshold"],
                          num_perm=cfg.num_perm, bands=cfg.bands, max_index=params["max_index"])
        ctx.log.info("cleaning with %d worker process(es); %s", ctx.workers, cfg)
        cleaner_for(cfg)  # built once here (token encoding, MinHash tables): forked workers inherit it
        staged = ctx.scratch / "staged"
        shutil.rmtree(staged, ignore_errors=True)  # left by a crashed run of this key
        staged.mkdir(parents=True)
        try:
            tally = _clean(ctx, cfg, art, files, deduper if cfg.dedupe != "none" else None, staged)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        return _report(ctx, params, cfg, art, tally, deduper)


def _clean(ctx: StageContext, cfg: Config, art: Artifact, files: list[Path], deduper: Deduper | None,
           staged: Path) -> Tally:
    """The pass: the workers clean blocks of the input, gathered here in input order into the outputs."""
    blocks = list(cut(art, files, BLOCK_BYTES))  # a module global: tests make it small
    # workers stage the kept lines in files rather than send them back; one worker (this process) hands them over
    work = functools.partial(clean_block, cfg, str(staged) if ctx.workers > 1 else None)
    numbers = LineNumbers()
    with OutputFile(ctx.output("records") / "records.jsonl") as out, \
            Rejects(ctx.output("rejects") / "rejects.jsonl", ctx.stage) as rejects, \
            jsonl.Writer(ctx.output("report") / "changes.jsonl") as changes, \
            contextlib.closing(ctx.map(work, blocks, local_files=True)) as results:
        # local_files: a block is a byte range of a file on this node, staged into this node's scratch
        gather = Gather(out, rejects, changes, deduper, staged)
        for block, got in zip(blocks, results):
            before = numbers.advance(block, got.lines)
            if got.error is not None:
                raise StageInputError(
                    f"{block.label}:{before + got.error.line}: not a record clean can read ({got.error.message}). "
                    "clean reads the records artifact of ingest (chat records with 'messages', or DPO records): "
                    "pass ingest.records")
            gather.add(block, got, before)
            ctx.check_cancelled()
            ctx.progress(f"{gather.tally.records_in:,} records")
    return gather.tally


def _report(ctx: StageContext, params: Mapping[str, Any], cfg: Config, records: Artifact, tally: Tally,
            deduper: Deduper) -> dict[str, Any]:
    """Write report.json (or fail when nothing is left); the stage's summary."""
    if deduper.full:
        ctx.log.warning("the dedupe index is full (max_index=%d): later records were checked against the "
                        "first %d kept records but not added", params["max_index"], deduper.indexed)
    if not tally.records_out and not params.get("allow_empty", False):
        raise StageInputError(_empty_message(records, tally))
    near = {"near_threshold": params["near_threshold"], "num_perm": cfg.num_perm, "bands": cfg.bands,
            "rows": cfg.rows, "shingle_size": cfg.shingle_size} if cfg.dedupe == "near" else {}
    limits = cfg.min_tokens is not None or cfg.max_tokens is not None
    report = {
        "records_in": tally.records_in,
        "records_out": tally.records_out,
        "dropped": sum(tally.dropped.values()),
        "changed": tally.changed,
        "dropped_by_reason": dict(sorted(tally.dropped.items())),
        "redacted": {k: tally.redacted[k] for k in cfg.redact},
        "changes": dict(sorted(tally.changes.items())),
        "dedupe": {"mode": cfg.dedupe, "on": cfg.dedupe_on, "indexed": deduper.indexed,
                   "index_full": deduper.full, "index_bytes": deduper.nbytes, **near},
        "tokens": {"encoding": cfg.encoding, "min_tokens": cfg.min_tokens,
                   "max_tokens": cfg.max_tokens} if limits else None,
    }
    (ctx.output("report") / "report.json").write_bytes(jsonl.dumps(report) + b"\n")
    ctx.log.info("records in %d, out %d; dropped %s; redacted %s", tally.records_in, tally.records_out,
                 report["dropped_by_reason"], report["redacted"])
    return {"records_in": tally.records_in, "records_out": tally.records_out, "dropped": report["dropped"],
            "redacted": sum(tally.redacted.values()), "duplicates": tally.dropped[EXACT.text],
            "near_duplicates": tally.dropped[NEAR.text]}


def _config(params: Mapping[str, Any]) -> Config:
    from tunepipe.data.tokens import encoding_name_for_model

    lo, hi = params["min_tokens"], params["max_tokens"]
    if lo is not None and hi is not None and lo > hi:
        raise UserError(f"min_tokens ({lo}) is larger than max_tokens ({hi}); lower min_tokens or raise "
                        "max_tokens")
    encoding = params["encoding"] or "o200k_base"
    if params["model"]:
        by_model = encoding_name_for_model(params["model"])
        if params["encoding"] and params["encoding"] != by_model:
            raise UserError(f"model {params['model']} uses the encoding {by_model}, but encoding is set to "
                            f"{params['encoding']}; set one of them")
        encoding = by_model
    bands = rows = 0
    if params["dedupe"] == "near":
        from tunepipe.data.minhash import lsh_bands

        bands, rows = lsh_bands(params["near_threshold"], params["num_perm"])
    return Config(form=params["unicode_form"], whitespace=params["whitespace"],
                  max_blank_lines=params["max_blank_lines"], redact=tuple(k for k in KINDS if k in params["redact"]),
                  min_tokens=lo, max_tokens=hi, encoding=encoding, dedupe=params["dedupe"],
                  dedupe_on=params["dedupe_on"], num_perm=params["num_perm"], shingle_size=params["shingle_size"],
                  bands=bands, rows=rows)


# What to change when every record was dropped for a reason (the most common reason's hint is given).
_HINTS = {
    TOO_SHORT.text: "lower min_tokens",
    TOO_LONG.text: "raise max_tokens",
    EXACT.text: "dedupe: none keeps duplicates",
    NEAR.text: "raise near_threshold, or set dedupe: exact",
    NO_ASSISTANT.text: "check that the records carry the assistant replies (ingest's map)",
    EMPTY.text: "check that the records carry text (ingest's map)",
    EMPTY_PROMPT.text: "check that the DPO records carry their prompts (ingest's map)",
    EMPTY_PREFERRED.text: "check that the DPO records carry their outputs (ingest's map)",
    EMPTY_NON_PREFERRED.text: "check that the DPO records carry their outputs (ingest's map)",
    SAME_OUTPUTS.text: "a DPO record needs two different outputs",
}


def _empty_message(records: Artifact, tally: Tally) -> str:
    """Why clean kept nothing (each drop reason with its count), and what to do."""
    name = records.name or str(records.path)
    if not tally.records_in:
        return (f"{name} holds no records, so clean has nothing to keep: fix the stage or file that feeds it, or "
                "set `allow_empty: true` on this stage to pass an empty data set on (the stages after it need "
                "records)")
    counts = tally.dropped.most_common()
    reasons = ", ".join(f"{reason} {n:,}" for reason, n in counts)
    hint = _HINTS.get(counts[0][0]) if counts else None
    return (f"clean dropped all {tally.records_in:,} records of {name} ({reasons}), so nothing is left. Fix the data "
            f"or the settings{f' ({hint})' if hint else ''}, or set `allow_empty: true` on this stage to pass an "
            "empty data set on (the stages after it need records)")
