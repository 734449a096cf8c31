"""What one spec may cost, and reading a spec file within it.

A pipeline file is a few kilobytes and nests about ten levels. These bounds only stop hostile or
broken files (a device, a pipe, an alias bomb, megabytes of keys) at once, with a message,
instead of after minutes, gigabytes or a RecursionError. No yaml import here: the reuse of a
validated spec reads the file too, and stays light.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_SPEC_BYTES = 10_000_000  # a spec file, and each file it includes
MAX_DEPTH = 100  # nesting levels of mappings and lists, aliases expanded
MAX_NODES = 50_000  # keys, values and list items, aliases expanded (about a second of parsing)


class Refused(Exception):
    """A file tunepipe will not read as a spec: ``what`` it is, and a hint (callers add where)."""

    def __init__(self, what: str, hint: str) -> None:
        super().__init__(what)
        self.what, self.hint = what, hint


_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def special_kind(mode: int) -> str | None:
    """What a file that is neither a regular file nor a folder is ("a named pipe (FIFO)"), else None."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def read_spec(path: Path) -> bytes:
    """A spec file's bytes, refusing a device, a pipe or a socket (reading one blocks or never
    ends) and a file over MAX_SPEC_BYTES. Raises OSError (IsADirectoryError for a folder) or Refused."""
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(21, "Is a directory", str(path))
    kind = special_kind(st.st_mode)
    if kind is not None:
        raise Refused(f"{kind}, not a regular file",
                      "name a YAML file: tunepipe does not read pipelines from devices, pipes or sockets")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced since the stat
            raise Refused("not a regular file", "name a YAML file")
        raw = f.read(MAX_SPEC_BYTES + 1)
    if len(raw) > MAX_SPEC_BYTES:
        raise Refused(f"{max(st.st_size, len(raw)) / 1e6:.1f} MB, more than the {MAX_SPEC_BYTES // 1_000_000} MB "
                      "a pipeline file may have",
                      "a pipeline file describes stages: keep data in input files and read them with `inputs:`")
    return raw
