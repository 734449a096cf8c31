"""ingest: read chat examples from JSONL files into a records artifact, with provenance.

Each input line must be a JSON object holding OpenAI-style ``messages``. A malformed line fails
the stage with its file and line (``on_error: fail``) or goes to the ``rejects`` artifact with
the reason (``on_error: skip``). The stage streams: memory does not grow with the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tunepipe.errors import StageInputError
from tunepipe.plugins import Artifact, Port, StageContext

ROLES = ("system", "user", "assistant", "tool")


def _problem(record: Any) -> str | None:
    """Why a parsed line is not a chat example, or None."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    if not isinstance(record.get("meta", {}), dict):
        return "'meta' must be an object when present"
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return "missing a non-empty 'messages' list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"messages[{i}] is not an object"
        if m.get("role") not in ROLES:
            return f"messages[{i}].role must be one of {', '.join(ROLES)} (got {json.dumps(m.get('role'))})"
        if not isinstance(m.get("content"), str) and not m.get("tool_calls"):
            return f"messages[{i}].content must be a string"
    return None


class Ingest:
    name = "ingest"
    version = "0.1.0"
    description = "Read chat examples (JSONL with 'messages') into a records artifact, with provenance."
    params_schema: Mapping[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "on_error": {"enum": ["fail", "skip"], "default": "fail",
                         "description": "A malformed line fails the stage, or is skipped into 'rejects'."},
        },
    }
    inputs = {"data": Port("JSONL files of chat examples (a path, a glob, or a list)", multiple=True)}
    outputs = {"records": Port("records.jsonl: one example per line, with meta.source and meta.line"),
               "rejects": Port("rejects.jsonl: lines that could not be read, with the reason")}
    packages: tuple[str, ...] = ()

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        files: list[Artifact] = inputs["data"]
        kept = rejected = 0
        with open(ctx.output("records") / "records.jsonl", "w", encoding="utf-8") as out, \
                open(ctx.output("rejects") / "rejects.jsonl", "w", encoding="utf-8") as rej:
            for art in files:
                for path in art.files():
                    with open(path, "rb") as f:
                        for lineno, raw in enumerate(f, start=1):
                            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                                raw = raw[3:]  # a UTF-8 byte-order mark, as some Windows tools write
                            if not raw.strip():
                                continue
                            reason = None
                            try:
                                record = json.loads(raw.decode("utf-8"))
                                reason = _problem(record)
                            except UnicodeDecodeError as e:
                                reason = f"not UTF-8 (byte offset {e.start} in the line)"
                            except json.JSONDecodeError as e:
                                reason = f"not valid JSON ({e.msg} at column {e.colno})"
                            if reason is None:
                                record["meta"] = {**record.get("meta", {}), "source": art.label(path), "line": lineno}
                                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                                kept += 1
                                continue
                            if params["on_error"] == "fail":
                                raise StageInputError(
                                    f"{art.label(path)}:{lineno}: {reason}. Fix the line, or set `on_error: skip` "
                                    "to set such lines aside in the rejects artifact")
                            rej.write(json.dumps({"source": art.label(path), "line": lineno, "reason": reason}) + "\n")
                            rejected += 1
                    ctx.check_cancelled()
                    ctx.progress(f"{kept:,} records")
        ctx.log.info("kept %d records, rejected %d", kept, rejected)
        return {"records": kept, "rejected": rejected, "files": sum(len(a.files()) for a in files)}
