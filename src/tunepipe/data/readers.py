"""Streaming readers for the ``ingest`` stage: JSONL, JSON arrays, CSV/TSV and Parquet, gzip-aware.

A reader turns one file into batches of *raw units*; it does not parse records (the stage does that,
possibly in worker processes). Every unit carries its position, counted as its medium counts:

* JSONL (``.jsonl``, ``.ndjson``): *blocks* of whole lines, about 1 MiB each
  (:class:`tunepipe.data.blocks.Block`, the block every record stage reads). A block of a plain
  file is a byte range, without its bytes: the worker process that parses it reads it itself;
  the reader only counts the block's newlines (:func:`counted_blocks`; a memchr-speed count, about
  0.04 s of CPU per 128 MB), because ingest writes each record's line into its output and a worker
  must know where its block starts. A block of a gzip stream carries its bytes (no worker can seek
  into the stream). ``block.lines()`` yields ``(line, bytes)``: the 1-based physical line; blank
  lines are skipped but counted; a UTF-8 byte-order mark is dropped.
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
import zlib
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

from tunepipe.data import jsonl
from tunepipe.data.blocks import BLOCK_BYTES, BOM, Block, newlines, read_blocks
from tunepipe.data.file_problem import FileProblem
from tunepipe.data.json_array import CHUNK, iter_array
from tunepipe.errors import UserError

FORMATS = ("jsonl", "json", "csv", "tsv", "parquet")
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
              ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet"}
UNITS = {"jsonl": "line", "json": "index", "csv": "row", "tsv": "row", "parquet": "row"}
GZIP_MAGIC = b"\x1f\x8b"
BATCH = 1000
BLOCK = BLOCK_BYTES  # the kit's (256 KiB blocks cost ingest 0.65 s more at 1M records: 2,500 round trips, not 650)
CSV_FIELD_LIMIT = 1 << 28  # 256 MiB: the csv module's default (128 KiB) is too small for long replies

_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


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
            blocks = read_blocks(f, None, size=BLOCK) if gz else counted_blocks(f, path, BLOCK)
            return Source(path, fmt, "line", None, _guard(blocks, "line"), stack)
        if fmt == "json":
            return Source(path, fmt, "index", None, _guard(iter_array(f), "element"), stack)
        sep = delimiter or ("\t" if fmt == "tsv" else ",")
        header, rows = _csv(f, sep)
        return Source(path, fmt, "row", header, _guard(rows, "row"), stack)
    except BaseException:
        stack.close()
        raise


def counted_blocks(f: IO[bytes], path: Path, size: int = BLOCK) -> Iterator[Block]:
    """Blocks of about ``size`` bytes of whole lines of the plain file ``f`` reads (``path``),
    numbered, without their bytes (a worker reads its block from the file).

    As :func:`tunepipe.data.blocks.read_blocks`, but the bytes are only counted, not joined or kept
    (:func:`~tunepipe.data.blocks.newlines`, at memchr speed). This process must count them: ingest
    writes each record's line number into its output, so the worker of a block needs the line it
    starts on before it writes anything.
    """
    start, line, index = 0, 1, 0
    while data := f.read(size):
        rest = b"" if data.endswith(b"\n") else f.readline()
        n = newlines(data) + newlines(rest)
        end = start + len(data) + len(rest)
        yield Block(str(path), start, end, "", line, n, None, index)
        start, line, index = end, line + n, index + 1


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
            if first and chunk.startswith(BOM):
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


__all__ = ["BATCH", "BLOCK", "Block", "EXTENSIONS", "FORMATS", "FileProblem", "Source", "UNITS", "counted_blocks",
           "drop_nulls", "format_from_name", "is_gzip", "iter_array", "nested_without_nulls", "open_source",
           "resolve_format"]
