"""Streaming readers for the ``ingest`` stage: JSONL, JSON arrays, CSV/TSV and Parquet, gzip-aware.

A reader turns one file into batches of *raw units*; it does not parse records (the stage does that,
possibly in worker processes). Every unit carries its position, counted as its medium counts:

* JSONL (``.jsonl``, ``.ndjson``): read as *blocks* of whole lines (about 256 KiB each), so that
  a worker process can re-read a block of a plain file by its offset instead of receiving its bytes;
  :func:`block_lines` yields ``(line, bytes)`` from a block: the 1-based physical line; blank lines
  are skipped but counted; a UTF-8 byte-order mark is dropped.
* JSON array (``.json``): ``(index, bytes)``, the 0-based element index (as ``jq '.[index]'`` counts).
  The file is split into its top-level elements as it is read (orjson finds where each element
  ends; a small bracket scanner takes over for an element orjson cannot read), so memory holds
  about one element, not the file; this costs roughly twice the time of the same data as JSONL.
  A malformed element (``tru``, a missing colon) is that element's problem; brackets that do not
  balance, or text outside the array, make the whole file unreadable (FileProblem).
  With ``format: auto``, a ``.json`` file whose first character is ``{`` is read as JSON Lines
  (many tools write JSONL under a ``.json`` name).
* CSV/TSV (``.csv``, ``.tsv``, ``.tab``): ``(row, values, line)``: ``row`` is the 1-based data
  row (the header row and blank rows are not counted), ``line`` the physical line it starts on
  (they differ when a quoted field spans lines). ``values`` is a tuple of strings, or a string
  saying why the row is not valid CSV (strict quoting). Bytes that are not UTF-8 are kept as lone
  surrogates (``surrogateescape``), so one bad row does not make the file unreadable; the stage
  rejects the row when it uses such a value.
* Parquet (``.parquet``, ``.pq``): ``(row, values, None)``, the 1-based row, read batch by batch
  with pyarrow (imported only here, only when a Parquet file is read).

Compression: a name ending in ``.gz`` or a file starting with the gzip magic bytes is decompressed
on the fly (``data.jsonl.gz``, ``qa.csv.gz``); the format comes from the name without ``.gz``.
Parquet compresses itself and is not read through gzip.

A whole-file problem (an unknown format, a corrupt gzip stream, a broken array, a duplicate CSV
column, an unreadable Parquet file) raises :class:`FileProblem` with a message that says what to do.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import re
import zlib
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any, NamedTuple

from tunepipe.data import jsonl
from tunepipe.errors import UserError

FORMATS = ("jsonl", "json", "csv", "tsv", "parquet")
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
              ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet"}
UNITS = {"jsonl": "line", "json": "index", "csv": "row", "tsv": "row", "parquet": "row"}
GZIP_MAGIC = b"\x1f\x8b"
BATCH = 1000
BLOCK = 1 << 18
CHUNK = 1 << 20
CSV_FIELD_LIMIT = 1 << 28  # 256 MiB: the csv module's default (128 KiB) is too small for long replies

_BOM = codecs.BOM_UTF8
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


class FileProblem(Exception):
    """A whole file cannot be read: not one record's fault, so the stage fails whatever ``on_error`` says."""


def _names() -> str:
    return ", ".join(EXTENSIONS)


def format_from_name(path: Path) -> str | None:
    """The format a file's name implies (``x.csv.gz`` -> csv), or None."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return EXTENSIONS.get(Path(name).suffix)


def _head(path: Path, n: int = 4) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def is_gzip(path: Path) -> bool:
    """A ``.gz`` name or gzip's magic bytes."""
    return path.name.lower().endswith(".gz") or _head(path, 2) == GZIP_MAGIC


def resolve_format(path: Path, requested: str = "auto") -> str:
    """The format to read ``path`` with: the requested one, or the one its name implies."""
    if requested != "auto":
        return requested
    fmt = format_from_name(path)
    if fmt is None:
        raise FileProblem(f"cannot tell the file's format from its name; name it with one of {_names()} "
                          "(optionally followed by .gz), or set `format:` (for all inputs, or for this one in "
                          "`sources`)")
    return fmt


class Source:
    """One open file: its resolved ``format``, the position ``unit`` (line, index or row), the
    ``columns`` of a tabular file, and ``batches()`` of raw units. Close it (or use ``with``)."""

    def __init__(self, path: Path, fmt: str, unit: str, columns: tuple[str, ...] | None,
                 units: Iterable[Any], stack: ExitStack) -> None:
        self.path = path
        self.format = fmt
        self.unit = unit
        self.columns = columns
        self._units = units
        self._stack = stack

    def batches(self, size: int = BATCH) -> Iterator[Any]:
        """Work in input order: for JSONL, :class:`Block` s; otherwise lists of up to ``size`` units."""
        if self.unit == "line":
            return iter(self._units)
        return jsonl.batched(self._units, size)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_source(path: Path, fmt: str = "auto", delimiter: str | None = None) -> Source:
    """Open ``path`` for reading in ``fmt`` (``auto``: by its name). Raises FileProblem."""
    auto = fmt == "auto"
    fmt = resolve_format(path, fmt)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    gz = is_gzip(path)
    if fmt == "parquet":
        return _open_parquet(path, gz)
    _check_text(path, gz)
    if fmt == "json" and _first_significant(path, gz) == b"{":
        if not auto:
            raise FileProblem("`format: json` expects one top-level JSON array of records, but the file starts "
                              "with '{'; if it holds one JSON object per line, use `format: jsonl`")
        fmt = "jsonl"
    stack = ExitStack()
    try:
        f = stack.enter_context(_open(path, gz))
        if fmt == "jsonl":
            return Source(path, fmt, "line", None, _guard(iter_blocks(f, None if gz else path), "line"), stack)
        if fmt == "json":
            return Source(path, fmt, "index", None, _guard(iter_array(f), "element"), stack)
        sep = delimiter or ("\t" if fmt == "tsv" else ",")
        header, rows = _csv(f, sep)
        return Source(path, fmt, "row", header, _guard(rows, "row"), stack)
    except BaseException:
        stack.close()
        raise


def _open(path: Path, gz: bool) -> IO[bytes]:
    return gzip.open(path, "rb") if gz else open(path, "rb")  # type: ignore[return-value]


def _check_text(path: Path, gz: bool) -> None:
    try:
        with _open(path, gz) as f:
            head = f.read(4)
    except (OSError, EOFError, zlib.error) as e:
        raise FileProblem(f"cannot decompress it ({e}); check that it is a complete gzip file") from None
    if head.startswith(_UTF16_BOMS):
        raise FileProblem("it is UTF-16 text; save it as UTF-8 (e.g. `iconv -f UTF-16 -t UTF-8`)")


def _first_significant(path: Path, gz: bool) -> bytes:
    """The first byte that is not white space (after a byte-order mark), or b''."""
    with _open(path, gz) as f:
        first = True
        while chunk := f.read(CHUNK):
            if first and chunk.startswith(_BOM):
                chunk = chunk[3:]
            first = False
            stripped = chunk.lstrip()
            if stripped:
                return stripped[:1]
    return b""


def _guard(units: Iterable[Any], noun: str) -> Iterator[Any]:
    """Re-raise a decompression failure as a FileProblem that says how far reading got."""
    last = None
    it = iter(units)
    while True:
        try:
            unit = next(it)
        except StopIteration:
            return
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            where = f"after {noun} {last}" if last is not None else "at its start"
            raise FileProblem(f"the gzip data is corrupt or truncated {where} ({e}); "
                              "compress the file again, or check that the copy is complete") from None
        last = unit.last_line if isinstance(unit, Block) else unit[0]
        yield unit


class Block(NamedTuple):
    """Whole lines of a JSONL file: ``data`` starts at byte ``offset`` and on line ``first_line``.

    ``offset`` is None for a decompressed stream (the block cannot be re-read from the file);
    :meth:`detached` drops ``data`` where it can, so that a worker process reads it itself.
    """

    first_line: int
    lines: int  # newline characters in data
    data: bytes | None
    path: str
    offset: int | None
    length: int

    @property
    def last_line(self) -> int:
        return self.first_line + max(self.lines - 1, 0)

    def detached(self) -> Block:
        return self._replace(data=None) if self.offset is not None else self

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as f:
            f.seek(self.offset or 0)
            return f.read(self.length)


def iter_blocks(f: IO[bytes], path: Path | None, size: int = BLOCK) -> Iterator[Block]:
    """Blocks of about ``size`` bytes of whole lines (the last line may lack its newline).

    ``path``: the file ``f`` reads, when a block can be re-read from it by offset (not compressed).
    """
    offset, line = 0, 1
    while data := f.read(size):
        if not data.endswith(b"\n"):
            data += f.readline()
        n = data.count(b"\n")
        yield Block(line, n, data, str(path or ""), offset if path else None, len(data))
        offset += len(data)
        line += n


def block_lines(data: bytes, first_line: int) -> Iterator[tuple[int, bytes]]:
    """``(line number, line)`` for the non-blank lines of a block, as :func:`tunepipe.data.jsonl.iter_lines`."""
    for lineno, raw in enumerate(data.split(b"\n"), start=first_line):
        line = raw.rstrip(b"\r")
        if lineno == 1 and line.startswith(_BOM):
            line = line[3:]  # a UTF-8 byte-order mark
        if line.strip():
            yield lineno, line


# ---------------------------------------------------------------------------------------------- JSON array

_OUTSIDE = re.compile(rb'[\[\]{}",]')
_INSIDE = re.compile(rb'["\\]')
_NONSPACE = re.compile(rb"\S")
_OPEN = {ord("["): ord("]"), ord("{"): ord("}")}
_AFTER_VALUE = "unexpected content after document"


class _Buffer:
    """The unread part of a stream, grown chunk by chunk; ``base`` is the stream offset of ``data[0]``."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self.f, self.size = f, size
        self.data = bytearray()
        self.base = 0
        self.eof = False

    def more(self) -> bool:
        if not self.eof:
            chunk = self.f.read(self.size)
            if chunk:
                self.data += chunk
                return True
            self.eof = True
        return False

    def drop(self, upto: int) -> None:
        del self.data[:upto]
        self.base += upto

    def skip_space(self, pos: int) -> int:
        """The index of the next byte that is not white space, or ``len(data)`` at the end of the stream."""
        while (m := _NONSPACE.search(self.data, pos)) is None:
            if not self.more():
                return len(self.data)
        return m.start()


def iter_array(f: IO[bytes], chunk_size: int = CHUNK) -> Iterator[tuple[int, bytes]]:
    """``(index, bytes)`` of each element of the top-level JSON array in ``f``, streamed.

    Memory holds about one element. Fast path: orjson parses from an element's start and says where
    that value ends ("unexpected content after document"); an element it cannot parse is delimited
    by :func:`_scan_element` (strings and brackets only), so that the caller can reject just that
    element. An empty element (``[1,,2]``, a trailing comma) comes out as ``b""``.
    """
    buf = _Buffer(f, chunk_size)
    while len(buf.data) < len(_BOM) and buf.more():
        pass
    if buf.data.startswith(_BOM):
        buf.drop(len(_BOM))
    pos = buf.skip_space(0)
    if pos == len(buf.data):
        return  # an empty file
    if buf.data[pos] != ord("["):
        what = buf.data[pos:pos + 1].decode("latin-1")
        raise FileProblem(f"expected a JSON array of records ('[' first), found {what!r} at byte {buf.base + pos}; "
                          "write the records as [{...}, {...}] or as JSON Lines")
    pos = buf.skip_space(pos + 1)
    index = 0
    if pos < len(buf.data) and buf.data[pos] == ord("]"):
        return _after_array(buf, pos + 1)
    guess = 0
    while True:
        end = _element_end(buf, pos, index, 2 * guess)
        guess = end - pos
        with memoryview(buf.data) as view:
            element = bytes(view[pos:end]).strip()
        yield index, element
        pos = buf.skip_space(end)
        if pos == len(buf.data):
            raise FileProblem(f"the JSON array is not closed: the file ends after element {index}; "
                              "check that the file is complete")
        c = buf.data[pos]
        if c == ord("]"):
            return _after_array(buf, pos + 1)
        if c != ord(","):
            raise FileProblem(f"unexpected {chr(c)!r} at byte {buf.base + pos} after element {index} (unbalanced "
                              "brackets?); fix the file's JSON (`python -m json.tool FILE` shows where)")
        index += 1
        pos += 1
        if pos >= buf.size:
            buf.drop(pos)
            pos = 0


def _element_end(buf: _Buffer, start: int, index: int, guess: int) -> int:
    """Where the element starting at ``start`` ends (exclusive, maybe before white space).

    orjson reads a window of about ``guess`` bytes (it checks all it is given, so the window is kept
    near the element's size), grown until the element fits. The same error twice means the element
    itself is not valid JSON: then :func:`_scan_element` finds its end.
    """
    import orjson

    size, last = max(guess, 4096), None
    while True:
        whole = start + size >= len(buf.data)  # the window reaches the end of what was read
        view = memoryview(buf.data)[start:start + size]
        try:
            orjson.loads(view)
            error = None
        except orjson.JSONDecodeError as e:
            error = (e.msg, e.pos)
        finally:
            view.release()
        if error is not None and error[0] == _AFTER_VALUE:
            return start + _byte_offset(buf.data, start, error[1])
        if error is not None and error == last:
            return _scan_element(buf, start, index)
        last = error
        if whole and buf.eof:  # the stream ends inside (or right after) the element
            return len(buf.data) if error is None else _scan_element(buf, start, index)
        size *= 2
        while len(buf.data) < start + size and buf.more():
            pass


def _byte_offset(data: bytearray, start: int, chars: int) -> int:
    """The byte length of the first ``chars`` characters of valid UTF-8 at ``data[start:]``."""
    if data[start:start + chars].isascii():
        return chars
    return len(bytes(data[start:start + 4 * chars]).decode("utf-8", "replace")[:chars].encode("utf-8"))


def _scan_element(buf: _Buffer, start: int, index: int) -> int:
    """The end of the element at ``start``: the next ',' or ']' outside strings and nested brackets."""
    closers = bytearray()
    in_string = escaped = False
    pos = start
    while True:
        n = len(buf.data)
        if pos >= n:
            if not buf.more():
                raise FileProblem(f"the JSON array is not closed: the file ends inside element {index}; "
                                  "check that the file is complete")
            continue
        if escaped:
            pos, escaped = pos + 1, False
            continue
        if in_string:
            m = _INSIDE.search(buf.data, pos)
            if m is None:
                pos = n
            elif buf.data[m.start()] == 0x5C:  # a backslash escapes the next byte, maybe not read yet
                pos = m.start() + 2
                if pos > n:
                    pos, escaped = n, True
            else:
                in_string, pos = False, m.end()
            continue
        m = _OUTSIDE.search(buf.data, pos)
        if m is None:
            pos = n
            continue
        c, at, pos = buf.data[m.start()], m.start(), m.end()
        if c == 0x22:  # "
            in_string = True
        elif c in _OPEN:
            closers.append(_OPEN[c])
        elif not closers and c in (0x2C, 0x5D):  # the ',' or ']' after the element
            return at
        elif c == 0x2C:
            continue
        elif not closers or c != closers[-1]:
            opened = "'['" if not closers or closers[-1] == 0x5D else "'{'"
            raise FileProblem(f"unbalanced brackets: {chr(c)!r} at byte {buf.base + at} (in element {index}) closes "
                              f"{opened}; fix the file's JSON (`python -m json.tool FILE` shows where)")
        else:
            closers.pop()


def _after_array(buf: _Buffer, pos: int) -> None:
    pos = buf.skip_space(pos)
    if pos < len(buf.data):
        raise FileProblem(f"unexpected text after the array's closing ']' at byte {buf.base + pos}; "
                          "a .json file must hold exactly one array (use JSON Lines for many records)")


# ------------------------------------------------------------------------------------------------- CSV/TSV

def _csv(f: IO[bytes], delimiter: str) -> tuple[tuple[str, ...], Iterator[tuple[int, Any, int]]]:
    """The header and an iterator of ``(row, values or problem, line)``."""
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    text = io.TextIOWrapper(f, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text, delimiter=delimiter, strict=True)
    header: tuple[str, ...] | None = None
    end = 0
    while header is None:
        try:
            values = next(reader)
        except StopIteration:
            return (), iter(())
        except csv.Error as e:
            raise FileProblem(f"cannot read the header row ({e}); the first row must name the columns") from None
        end = reader.line_num
        if not _blank(values):
            header = tuple(values)
    seen: set[str] = set()
    for name in header:
        if name and name in seen:
            raise FileProblem(f"the header names column {name!r} twice; rename one of them")
        seen.add(name)
    return header, _csv_rows(reader, end)


def _blank(values: list[str]) -> bool:
    return not values or (len(values) == 1 and not values[0].strip())


def _csv_rows(reader: Any, end: int) -> Iterator[tuple[int, Any, int]]:
    row = 0
    while True:
        start = end + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            end = reader.line_num
            row += 1
            yield row, f"not valid CSV ({e}); quote fields that hold the delimiter, quotes or line breaks", start
            continue
        end = reader.line_num
        if _blank(values):
            continue
        row += 1
        yield row, tuple(values), start


# ------------------------------------------------------------------------------------------------- Parquet

def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("reading Parquet files needs pyarrow, which is not installed: "
                        "pip install 'tunepipe[parquet]'") from None
    return pq


def _open_parquet(path: Path, gz: bool) -> Source:
    if gz:
        raise FileProblem("gzip-compressed Parquet is not supported (Parquet compresses its own columns); "
                          "decompress it with `gunzip`")
    pq = _pyarrow_parquet()
    import pyarrow as pa

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise FileProblem(f"not a readable Parquet file ({e})") from None
    columns = tuple(pf.schema_arrow.names)
    if len(set(columns)) != len(columns):
        dup = next(c for c in columns if columns.count(c) > 1)
        raise FileProblem(f"the file has two columns named {dup!r}; rename one of them")
    stack = ExitStack()
    stack.callback(pf.close)
    return Source(path, "parquet", "row", columns, _parquet_rows(pf, pa), stack)


def _parquet_rows(pf: Any, pa: Any) -> Iterator[tuple[int, tuple[Any, ...], None]]:
    row = 0
    batches = pf.iter_batches(batch_size=BATCH)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            raise FileProblem(f"cannot read the Parquet data after row {row} ({e})") from None
        for values in zip(*(column.to_pylist() for column in batch.columns)):
            row += 1
            yield row, values, None


def drop_nulls(value: Any) -> Any:
    """Nested structures without null members (Parquet structs have no 'absent', only null)."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def nested_without_nulls(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """A Parquet row whose list and struct values have their null members dropped (top-level nulls stay)."""
    return tuple(drop_nulls(v) if isinstance(v, (dict, list)) else v for v in values)


__all__ = ["BATCH", "BLOCK", "Block", "EXTENSIONS", "FORMATS", "FileProblem", "Source", "UNITS", "block_lines",
           "drop_nulls", "format_from_name", "is_gzip", "iter_array", "iter_blocks", "nested_without_nulls",
           "open_source", "resolve_format"]
