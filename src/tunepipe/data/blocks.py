"""The one way a record stage reads JSONL: blocks of whole lines, and the lines in them, numbered.

Every record stage (ingest's JSONL reader, clean, format, split) and :func:`tunepipe.data.jsonl.iter_lines`
read lines by the same rules, so a record has the same line number in every stage's messages:

* a line ends at ``\\n``; carriage returns before it are dropped (CRLF files read like LF files);
* a UTF-8 byte-order mark at the very start of a file is dropped;
* a blank line (nothing but ASCII white space) is skipped, but counted: numbers are *physical*
  lines, 1-based, as an editor shows them.

A :class:`Block` is the unit of work a stage hands to :meth:`StageContext.map
<tunepipe.plugins.StageContext.map>`: about ``size`` bytes of whole lines of one file. Two ways to
cut a file:

* :func:`cut`: byte ranges only, found with a seek and a ``readline`` at each cut. The parent never
  reads the data: each worker reads its own block (pass ``local_files=True`` to ``ctx.map``), so
  nothing of the input goes through a pipe. The parent cannot count lines, so a worker numbers its
  block's lines from 1 and returns how many physical lines it held (:func:`count_lines`); the
  parent, taking results in input order, turns them into file lines with :class:`LineNumbers`.
* :func:`read_blocks`: the parent reads the bytes (a decompressed gzip stream, which no worker can
  seek), so each block knows its ``first_line`` and carries its ``data``; :meth:`Block.detached`
  drops the bytes of a block a worker can re-read from the file.

A stage's worker, for either kind::

    def work(block: Block) -> Result:
        data = block.read()
        for number, raw in block.lines(data):  # number: in the block (cut) or in the file (read_blocks)
            ...
        return Result(lines=count_lines(data), ...)

and its parent::

    files = jsonl_files(art, hint="pass ingest.records")
    blocks = list(cut(art, files))
    numbers = LineNumbers()
    for block, result in zip(blocks, ctx.map(work, blocks, local_files=True)):
        before = numbers.advance(block, result.lines)  # add it to a block-relative line number
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple

from tunepipe.errors import StageInputError

if TYPE_CHECKING:
    from tunepipe.plugins import Artifact

BOM = b"\xef\xbb\xbf"
BLOCK_BYTES = 1 << 20  # about 1,500 chat examples: few round trips to the workers, little memory


class Block(NamedTuple):
    """Whole lines of one file: bytes ``start`` to ``end`` (the last line may lack its newline).

    ``path`` is the file ("" when the bytes come from a stream and travel in ``data``); ``label``
    names it in provenance and messages. ``first_line`` is the physical line the block starts on,
    0 when the cutter did not count (:func:`cut`): :meth:`lines` then numbers from 1 within the
    block. ``nlines`` counts the newlines in the block when the cutter read it. ``index`` is the
    block's place among all blocks of the input (e.g. to name a worker's scratch file).
    """

    path: str
    start: int
    end: int
    label: str = ""
    first_line: int = 0
    nlines: int = 0
    data: bytes | None = None
    index: int = 0

    @property
    def last_line(self) -> int:
        """The physical line the block ends on (when ``first_line`` is known)."""
        return self.first_line + max(self.nlines - 1, 0)

    @property
    def rereadable(self) -> bool:
        """Whether a worker can read the block from its file (not a decompressed stream)."""
        return bool(self.path)

    def detached(self) -> Block:
        """The block without its bytes when a worker can re-read them (less to send to a process)."""
        return self._replace(data=None) if self.path and self.data is not None else self

    def read(self) -> bytes:
        """The block's bytes, as they are in the file (a byte-order mark included: :meth:`lines` drops it)."""
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as f:
            f.seek(self.start)
            return f.read(self.end - self.start)

    def lines(self, data: bytes | None = None) -> Iterator[tuple[int, bytes]]:
        """``(number, line)`` for each non-blank line (``data``: the block's bytes, if read already)."""
        return lines(self.read() if data is None else data, self.first_line or 1, file_start=self.start == 0)


def lines(data: bytes, first: int = 1, *, file_start: bool = False) -> Iterator[tuple[int, bytes]]:
    """``(number, line)`` for the non-blank lines of ``data``, numbered from ``first``; the line has
    no line end. ``file_start``: ``data`` starts the file, so a byte-order mark there is dropped.

    Pairs, not a named tuple: a stage unpacks them at once, and this loop runs once per record.
    """
    if file_start and data.startswith(BOM):
        data = data[3:]
    for number, raw in enumerate(data.split(b"\n"), start=first):
        if raw[-1:] == b"\r":
            raw = raw.rstrip(b"\r")
        if raw and not raw.isspace():
            yield number, raw


def count_lines(data: bytes) -> int:
    """The physical lines in a block's bytes (a last line without a newline counts)."""
    return newlines(data) + (1 if data and not data.endswith(b"\n") else 0)


def newlines(data: bytes) -> int:
    """How many newlines ``data`` holds: removing them runs at memchr speed (0.04 s per 640 MiB
    here), where ``bytes.count`` of one byte is a plain loop (0.18 s)."""
    return len(data) - len(data.replace(b"\n", b""))


class LineNumbers:
    """File line numbers for blocks cut without counting (:func:`cut`), kept by the parent.

    Call :meth:`advance` for each block's result, in input order (``ctx.map`` keeps it).
    """

    def __init__(self) -> None:
        self._lines: dict[str, int] = {}  # physical lines of each file's blocks so far

    def advance(self, block: Block, lines: int) -> int:
        """The lines of ``block``'s file before it (add them to its block-relative numbers); then
        counts the block's own ``lines``."""
        before = self._lines.get(block.path, 0)
        self._lines[block.path] = before + lines
        return before


def cut(art: Artifact, files: Sequence[Path], size: int = BLOCK_BYTES) -> Iterator[Block]:
    """The files as blocks of whole lines of about ``size`` bytes (a longer line is a block of its
    own), without reading them: a seek and a ``readline`` at each cut."""
    index = 0
    for path in files:
        label = art.label(path)
        total = path.stat().st_size
        with open(path, "rb") as f:
            start = 0
            while start < total:
                end = min(total, start + size)
                if end < total:
                    f.seek(end)
                    end += len(f.readline())  # to the end of the line the cut falls in
                yield Block(str(path), start, end, label, index=index)
                index += 1
                start = end


def read_blocks(f: IO[bytes], path: Path | None, label: str = "", size: int = BLOCK_BYTES) -> Iterator[Block]:
    """Blocks of about ``size`` bytes of whole lines read from ``f``, numbered as they come.

    ``path``: the file ``f`` reads, when a worker can re-read a block from it (not a stream).
    """
    start, line, index = 0, 1, 0
    while data := f.read(size):
        if not data.endswith(b"\n"):
            data += f.readline()
        n = data.count(b"\n")
        yield Block(str(path or ""), start, start + len(data), label, line, n, data, index)
        start += len(data)
        line += n
        index += 1


def file_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line number, line)`` for each non-blank line of a whole file, reading a block at a time."""
    with open(path, "rb") as f:
        for block in read_blocks(f, path):
            yield from block.lines()


def jsonl_files(art: Artifact, hint: str, prefer: str | None = None) -> list[Path]:
    """The JSONL files of a stage's input: the file itself, or a folder's ``*.jsonl`` files, sorted.

    ``prefer``: a file name that, when the folder holds it, is the only one read (split reads a
    format output's ``examples.jsonl``). No file raises a StageInputError ending with ``hint``,
    which says what to connect instead.
    """
    if art.path.is_file():
        return [art.path]
    if prefer is not None and (art.path / prefer).is_file():
        return [art.path / prefer]
    files = [p for p in art.files() if p.name.endswith(".jsonl")]
    if not files:
        raise StageInputError(f"{art.name or art.path}: holds no .jsonl file; {hint}")
    return files
