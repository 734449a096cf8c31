"""OutputFile: an output written in order, its SHA-256 taken on the way and handed to the cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tunepipe.cache import digests
from tunepipe.data import outfile
from tunepipe.data.outfile import OutputFile


def test_writes_and_appended_parts_land_in_order_and_the_digest_is_remembered(tmp_path: Path) -> None:
    part = tmp_path / "part"
    part.write_bytes(b"0123456789")
    out_path = tmp_path / "out.jsonl"
    with OutputFile(out_path) as out:
        out.write(b"head\n")
        out.append(part, offset=2, count=5)     # 23456
        fd = os.open(part, os.O_RDONLY)
        try:
            out.append(fd, offset=8)            # 89: to the end
        finally:
            os.close(fd)
        out.write(memoryview(b"x" * (outfile.CHUNK + 3)))  # a large write goes straight through
        out.append(part, remove=True)
    data = b"head\n23456" + b"89" + b"x" * (outfile.CHUNK + 3) + b"0123456789"
    assert out_path.read_bytes() == data and out.size == len(data) and not part.exists()
    assert digests.output_digest(out_path) == hashlib.sha256(data).hexdigest()


def test_a_remembered_digest_is_used_once_and_never_for_a_changed_file(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out"
    with OutputFile(path) as out:
        out.write(b"abc")
    read: list[Path] = []
    real = digests.file_digest
    monkeypatch.setattr(digests, "file_digest", lambda p: read.append(p) or real(p))
    assert digests.output_digest(path) == hashlib.sha256(b"abc").hexdigest() and read == []
    assert digests.output_digest(path) == hashlib.sha256(b"abc").hexdigest() and read == [path]  # used once
    with OutputFile(path) as out:
        out.write(b"abc")
    path.write_bytes(b"abcd")  # the stage changed it after closing: its digest is read again
    assert digests.output_digest(path) == hashlib.sha256(b"abcd").hexdigest() and read == [path, path]


def test_a_failed_write_leaves_no_digest_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out"
    with pytest.raises(OSError, match="ended 5 bytes early"), OutputFile(path) as out:
        (tmp_path / "short").write_bytes(b"12")
        out.append(tmp_path / "short", count=7)
    remembered: list[Path] = []
    monkeypatch.setattr(digests, "file_digest", lambda p: remembered.append(p) or "read")
    assert digests.output_digest(path) == "read" and remembered == [path]
