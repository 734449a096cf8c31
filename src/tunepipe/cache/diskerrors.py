"""What a failed write to the cache means for the user: a read-only folder, no permission, a full disk.

These are the user's to fix (exit 2 where the cache folder itself is at fault), never a traceback:
:func:`cache_write_error` turns such an ``OSError`` into a message that names the folder, what is
wrong (with the free space, for a full disk) and how to fix it.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from tunepipe.errors import UserError

READ_ONLY = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
DISK_ERRNOS = READ_ONLY | FULL


def is_disk_error(exc: BaseException) -> bool:
    """A write refused by the file system (read-only, permission, no space) rather than a bug."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


_roots: list[Path] = []


def remember_root(root: Path) -> None:
    """The cache folder this process uses: named when a refused write does not say its file."""
    if root not in _roots:
        _roots.append(root)


def describe(exc: OSError, doing: str, root: Path | None = None) -> str:
    """One message for a refused write while ``doing`` (e.g. "writing the run record"), naming the
    file's folder, else ``root``, else the cache folder this process opened."""
    if exc.filename:
        where = Path(exc.filename)
        folder = where if where.is_dir() else where.parent
    else:
        folder = root or (_roots[-1] if _roots else Path.cwd())
    if exc.errno in FULL:
        try:
            free = f", {_size(shutil.disk_usage(_existing(folder)).free)} free"
        except OSError:
            free = ""
        return (f"no space left on the device of {folder} while {doing}{free}: free some space "
                "(`pipeline cache gc` removes results no pipeline uses) or move the cache with --cache-dir "
                "or TUNEPIPE_CACHE")
    why = "is on a read-only file system" if exc.errno == errno.EROFS else "is not writable by this user"
    return (f"{folder} {why} ({os.strerror(exc.errno or 0)}) while {doing}: make the cache folder writable, "
            "or use another one with --cache-dir or TUNEPIPE_CACHE")


def cache_write_error(exc: OSError, doing: str) -> UserError:
    return UserError(describe(exc, doing))
