"""ingest's work on a batch, in a worker process, and how its output reaches ``records.jsonl``.

:func:`map_batch` parses each unit of a :class:`~tunepipe.data.ingesting.Batch` (a JSON line or
element, a table row), maps it to a chat example (:mod:`tunepipe.data.mapping`), adds its
provenance (``meta.source`` and ``meta.line``/``index``/``row``) and writes it as a JSON line; a
unit that cannot be used comes back as a :class:`~tunepipe.data.ingesting.Rejected`.

Where the lines go: a worker process writes its batch's lines to a *part* file of its own
(``parts``: a folder of this node's scratch) and returns only counts and rejects; the stage's
process, taking the results in input order, appends each part to ``records.jsonl``
(:class:`Output`, an :class:`~tunepipe.data.outfile.OutputFile` that hashes it on the way) and
removes it. Nothing of the
output crosses a pipe, so a worker never waits for the stage's process to read it: pipes and
waiting were about half of ingest's samples in the profile (``docs/benchmarks.md``), though in CPU
time a part file and a pickled bytes object through the pipe cost about the same. In the stage's
own process (one worker, a small input) the lines come back as one bytes object instead.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import orjson

from tunepipe.data.blocks import Block
from tunepipe.data.ingesting import NOUN, Batch, Mapped, Reading, Rejected
from tunepipe.data.mapping import Mapper, Reject
from tunepipe.data.outfile import OutputFile
from tunepipe.data.readers import nested_without_nulls


@functools.lru_cache(maxsize=64)
def _mapper(settings: str, where: str) -> Mapper:
    return Mapper(json.loads(settings), where)


def map_batch(batch: Batch, parts: str | None = None) -> Mapped:
    """Parse and map one batch: its output lines, written to ``parts/{index}.jsonl`` (a worker) or
    returned (``parts`` None: the stage's own process), how many, and the rejects."""
    reading = batch.reading
    label, unit, rows = reading.label, reading.unit, reading.unit == "row"
    apply, loads, dumps = _mapper(reading.settings, reading.where).apply, orjson.loads, orjson.dumps
    newline = orjson.OPT_APPEND_NEWLINE
    units = batch.units.lines() if isinstance(batch.units, Block) else batch.units
    lines: list[bytes] = []
    rejects: list[Rejected] = []
    for item in units:
        record: Any = None
        try:
            if rows:
                record = _row(reading, item[1])
            else:
                try:
                    record = loads(item[1])
                except orjson.JSONDecodeError as e:
                    raise _not_json(unit, item[1], e) from None
            out = apply(record)
            meta = out["meta"]
            meta["source"] = label
            meta[unit] = item[0]
            lines.append(dumps(out, default=_json_default, option=newline))
        except Reject as r:
            rejects.append(Rejected(item[0], item[2] if rows else None, r.code, r.reason))
        except orjson.JSONEncodeError as e:
            rejects.append(Rejected(item[0], item[2] if rows else None, *_encode_problem(record, e)))
    data = b"".join(lines)
    if parts is None:
        return Mapped(reading, len(lines), rejects, data)
    keep_freed_memory()
    part = os.path.join(parts, f"{batch.index:06d}.jsonl")
    with open(part, "wb") as f:
        f.write(data)
    return Mapped(reading, len(lines), rejects, part=part)


_KEEPING = False


def keep_freed_memory() -> None:
    """Have this process's C allocator (glibc) keep the memory it frees rather than hand it back to
    the kernel; for a worker process, once.

    A worker frees all it allocated for a batch (the block, its lines, the output) at the batch's
    end; glibc then trims its heap and the next batch faults the pages back in: about 400 page
    faults per 256 KiB block (the block size then). Measured on 200,000 chat examples with two
    workers: 210,000 page faults and 0.2-0.3 s of the workers' system time (of about 1 s of CPU in
    all), against 11,000 faults kept. Kept, a worker's heap stays at a batch's peak, a few MB, until the stage ends.
    Elsewhere than glibc this does nothing.
    """
    global _KEEPING
    if _KEEPING:
        return
    _KEEPING = True
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: never give the top of the heap back
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks and outputs come from the heap, not from fresh mmaps


def _not_json(unit: str, raw: bytes, e: orjson.JSONDecodeError) -> Reject:
    """Why a JSON line or element does not parse."""
    if not raw:
        return Reject("bad_json", "empty element (a stray comma?)")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as u:
        return Reject("not_utf8", f"not UTF-8 (byte offset {u.start} in the {NOUN[unit]})")
    return Reject("bad_json", f"not valid JSON ({e.msg} at column {e.colno})")


def _row(reading: Reading, values: Any) -> dict[str, Any]:
    if isinstance(values, str):
        raise Reject("bad_csv", values)
    columns = reading.columns
    assert columns is not None
    if len(values) != len(columns):
        raise Reject("field_count", f"the row has {len(values)} fields but the header has {len(columns)}; quote "
                                    "fields that contain the delimiter")
    if reading.format == "parquet":
        values = nested_without_nulls(values)
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


class Output(AbstractContextManager["Output"]):
    """``records.jsonl``, written in input order from the batches' results; ``parts``: the folder
    the workers write their parts to (made empty here, removed on exit)."""

    def __init__(self, path: Path, parts: Path) -> None:
        self.parts = parts
        shutil.rmtree(parts, ignore_errors=True)  # left by a crashed run of this key
        parts.mkdir(parents=True)
        self._out = OutputFile(path)

    def add(self, done: Mapped) -> None:
        """A batch's lines: the ones it returned, or its part file (appended, then removed)."""
        if done.data:
            self._out.write(done.data)
        if done.part:
            self._out.append(Path(done.part), remove=True)

    def __exit__(self, *exc: object) -> None:
        try:
            self._out.__exit__(*exc)
        finally:
            shutil.rmtree(self.parts, ignore_errors=True)
