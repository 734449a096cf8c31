"""The one way a record stage writes a large output file: in order, hashed on the way.

A stage's workers write their blocks' lines to part files in scratch; the parent appends them to
the output, in input order, as the results come in (:meth:`OutputFile.append`), and writes its own
bytes with :meth:`OutputFile.write`. Every byte is hashed (SHA-256) as it goes to the file, and on
:meth:`~OutputFile.close` the digest is handed to the cache (:func:`remember_written
<tunepipe.cache.digests.remember_written>`), so publishing the output does not read it again.

Why: re-reading and hashing a 600 MB output after the stage took 0.6-0.9 s on one core while the
other sat idle, in each of the four data stages; hashing while appending overlaps with the workers
still formatting later blocks. The parts are read back through this process (``pread``, not
``sendfile``) for that reason; they were just written, so they come from the page cache.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import AbstractContextManager
from pathlib import Path

from tunepipe.cache.digests import remember_written

CHUNK = 1 << 20  # bytes per read of a part file, and the write buffer's size


class OutputFile(AbstractContextManager["OutputFile"]):
    """An output file written front to back (created empty, or truncated), with its SHA-256 taken
    on the way. A failed stage's half-written file is never published (the executor discards
    the stage's outputs), so nothing here is atomic."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0  # bytes written so far
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._hash = hashlib.sha256()
        self._buf = bytearray()
        self._read_buf: bytearray | None = None  # reused: a fresh 1 MiB per read is a fresh mapping to fault in

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes (small writes are gathered into one)."""
        if len(data) >= CHUNK:
            self._flush()
            self._put(data)
            return
        self._buf += data
        if len(self._buf) >= CHUNK:
            self._flush()

    def append(self, part: Path | int, offset: int = 0, count: int | None = None, remove: bool = False) -> None:
        """Append ``count`` bytes (default: to its end) of the file ``part`` (a path or an open
        descriptor) from ``offset``; ``remove``: delete the part file after (a path only)."""
        self._flush()
        fd = os.open(part, os.O_RDONLY) if isinstance(part, Path | str) else part
        try:
            left = os.fstat(fd).st_size - offset if count is None else count
            if self._read_buf is None:
                self._read_buf = bytearray(CHUNK)
            buf = self._read_buf
            while left > 0:
                view = memoryview(buf)[:min(left, CHUNK)]
                n = _read_into(fd, view, offset)
                if not n:
                    raise OSError(f"{part}: the part file ended {left} bytes early")
                self._put(view[:n])
                offset += n
                left -= n
        finally:
            if fd is not part:
                os.close(fd)
        if remove and isinstance(part, Path | str):
            os.unlink(part)

    def close(self) -> None:
        """Write what is buffered, close the file and hand its digest to the cache."""
        if self._fd < 0:
            return
        try:
            self._flush()
        finally:
            os.close(self._fd)
            self._fd = -1
        remember_written(self.path, self._hash.hexdigest())

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        elif self._fd >= 0:  # a failed stage: its outputs are discarded, so there is no digest to keep
            os.close(self._fd)
            self._fd = -1

    def _flush(self) -> None:
        if self._buf:
            self._put(self._buf)
            self._buf = bytearray()

    def _put(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self.size += len(data)


def _read_into(fd: int, view: memoryview, offset: int) -> int:
    """``os.preadv`` into ``view`` where the platform has it, else a ``pread`` copied in."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    chunk = os.pread(fd, len(view), offset)
    view[:len(chunk)] = chunk
    return len(chunk)
