"""Content digests of files and folders, remembered by file identity.

A large input that has not changed is not re-read: its digest is kept under its path with the
file's (device, inode, size, mtime). Entries for files modified within the last
``RACY_SECONDS`` are not kept, because a write in the same clock tick would go unnoticed
(git calls this the "racy" case).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from pathlib import Path

from tunepipe.cache.atomic import write_json
from tunepipe.errors import UserError

RACY_SECONDS = 2.0


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# SHA-256s of files this process has just written, taken by their writer on the way
# (:class:`tunepipe.data.outfile.OutputFile`): (device, inode) -> (size, mtime_ns, digest).
_written: dict[tuple[int, int], tuple[int, int, str]] = {}
_written_lock = threading.Lock()


def remember_written(path: Path, digest: str) -> None:
    """Remember the SHA-256 of a file just written and closed, so that publishing it need not read
    it again (a stage's 600 MB output took 0.6-0.9 s on one core to re-read and hash)."""
    st = os.stat(path)
    with _written_lock:
        _written[(st.st_dev, st.st_ino)] = (st.st_size, st.st_mtime_ns, digest)


def output_digest(path: Path) -> str:
    """The SHA-256 of an output file: the one its writer remembered, if the file is still the same
    (same inode, size and modification time; used once), else read from the file."""
    st = os.stat(path)
    with _written_lock:
        hit = _written.pop((st.st_dev, st.st_ino), None)
    if hit is not None and hit[:2] == (st.st_size, st.st_mtime_ns):
        return hit[2]
    return file_digest(path)


def folder_digest(folder: Path) -> str:
    """A digest of a folder's files (relative names and contents), for identities outside the
    store (a model folder whose replies are cached)."""
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def tree_entries(root: Path) -> list[tuple[str, Path, os.stat_result]]:
    """Every entry below ``root`` as (relative posix path, path, lstat), sorted by path.

    Symbolic links are listed as links (not followed), so a broken one can be reported.
    """
    out: list[tuple[str, Path, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in dirnames + filenames:
            p = base / name
            out.append((p.relative_to(root).as_posix(), p, p.lstat()))
    out.sort(key=lambda e: e[0])
    return out


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def tree_digest(root: Path, digest_of=file_digest) -> str:
    """A digest of a folder: names, kinds, executable bits and file contents, nothing else."""
    h = hashlib.sha256(b"tunepipe-tree-v1\n")
    for rel, p, st in tree_entries(root):
        if stat.S_ISLNK(st.st_mode):
            st = p.stat()  # an input folder may link to files: their content counts
        if stat.S_ISDIR(st.st_mode):
            h.update(f"d {rel}\n".encode())
        elif not stat.S_ISREG(st.st_mode):  # a pipe or device would block or never end
            raise UserError(f"{p} is not a regular file ({_kind(st.st_mode)}), so it cannot be part of an input "
                            f"folder's content: remove it from {root} or point the input at the files themselves")
        else:
            x = "x" if st.st_mode & stat.S_IXUSR else "-"
            h.update(f"f {x} {digest_of(p)} {rel}\n".encode())
    return h.hexdigest()


class DigestMemo:
    """Digests of input files remembered by (device, inode, size, mtime_ns); thread-safe."""

    def __init__(self, file: Path | None) -> None:
        self.store_path = file
        self._lock = threading.Lock()
        self._entries: dict[str, list] = {}
        self._dirty = False
        if file is not None:
            try:
                self._entries = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._entries = {}

    def of_file(self, path: Path) -> str:
        st = path.stat()
        ident = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]
        key = str(path.absolute())
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None and hit[:4] == ident:
            return hit[4]
        digest = file_digest(path)
        if time.time() - st.st_mtime_ns / 1e9 > RACY_SECONDS:
            with self._lock:
                self._entries[key] = ident + [digest]
                self._dirty = True
        return digest

    def path(self, path: Path) -> str:
        """The digest of a file, or the tree digest of a folder."""
        return tree_digest(path, self.of_file) if path.is_dir() else self.of_file(path)

    def save(self) -> None:
        if self.store_path is None or not self._dirty:
            return
        with self._lock:
            entries = {k: v for k, v in self._entries.items() if os.path.exists(k)}
            self._dirty = False
        try:
            write_json(self.store_path, entries)
        except OSError:
            pass  # the memo is only a speed-up
