"""Content digests of files and folders, and the memo that avoids re-reading unchanged files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from tunepipe.cache.atomic import write_bytes
from tunepipe.cache.digests import RACY_SECONDS, DigestMemo, file_digest, tree_digest

HOUR_NS = 3600 * 10**9


def set_mtime_ns(path: Path, mtime_ns: int) -> None:
    os.utime(path, ns=(mtime_ns, mtime_ns))


def make_old(path: Path) -> int:
    """Put the file's mtime an hour into the past (well outside the racy window)."""
    old = time.time_ns() - HOUR_NS
    set_mtime_ns(path, old)
    return old


def rewrite_keeping_identity(path: Path, data: bytes) -> None:
    """Change the bytes of a file but keep (device, inode, size, mtime): invisible to the memo."""
    st = path.stat()
    assert len(data) == st.st_size
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns) == (
        st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


# file_digest -------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"", b"x", b"hello\n" * 1000, os.urandom(3 * 1024 * 1024 + 7)])
def test_file_digest_equals_sha256(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "f"
    p.write_bytes(data)
    assert file_digest(p) == hashlib.sha256(data).hexdigest()


# tree_digest -------------------------------------------------------------------------------

def build_tree(root: Path) -> Path:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.bin").write_bytes(b"\x00\x01\x02")
    (root / "sub" / "deeper" / "c.txt").write_text("gamma\n")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return build_tree(tmp_path / "tree")


def test_tree_digest_is_stable_and_location_independent(tmp_path: Path, tree: Path) -> None:
    first = tree_digest(tree)
    assert first == tree_digest(tree)
    assert len(first) == 64 and int(first, 16) >= 0
    copy = build_tree(tmp_path / "elsewhere" / "copy")
    assert tree_digest(copy) == first


def test_tree_digest_changes_with_file_content(tree: Path) -> None:
    before = tree_digest(tree)
    (tree / "sub" / "deeper" / "c.txt").write_text("gammA\n")  # same size, one byte differs
    assert tree_digest(tree) != before


def test_tree_digest_changes_with_file_name(tree: Path) -> None:
    before = tree_digest(tree)
    (tree / "a.txt").rename(tree / "a2.txt")
    assert tree_digest(tree) != before


def test_tree_digest_changes_when_file_moves_to_another_folder(tree: Path) -> None:
    before = tree_digest(tree)
    (tree / "sub" / "b.bin").rename(tree / "sub" / "deeper" / "b.bin")
    assert tree_digest(tree) != before


def test_tree_digest_changes_with_executable_bit(tree: Path) -> None:
    p = tree / "a.txt"
    before = tree_digest(tree)
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    with_x = tree_digest(tree)
    assert with_x != before
    p.chmod(p.stat().st_mode & ~stat.S_IXUSR)
    assert tree_digest(tree) == before


def test_tree_digest_changes_with_added_empty_folder(tree: Path) -> None:
    before = tree_digest(tree)
    (tree / "sub" / "empty").mkdir()
    assert tree_digest(tree) != before


def test_tree_digest_tells_empty_file_from_empty_folder(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "thing").mkdir()
    (b / "thing").write_bytes(b"")
    assert tree_digest(a) != tree_digest(b)


def test_tree_digest_ignores_mtime(tree: Path) -> None:
    before = tree_digest(tree)
    for p in [tree / "a.txt", tree / "sub", tree / "sub" / "b.bin"]:
        make_old(p)
    assert tree_digest(tree) == before


def test_tree_digest_ignores_write_permission(tree: Path) -> None:
    """Publishing makes files read-only; that must not change the digest."""
    before = tree_digest(tree)
    for p in tree.rglob("*"):
        if p.is_file():
            p.chmod(p.stat().st_mode & ~0o222)
    assert tree_digest(tree) == before


def test_tree_digest_uses_given_file_digest_function(tree: Path) -> None:
    seen: list[str] = []

    def digest_of(p: Path) -> str:
        seen.append(p.name)
        return file_digest(p)

    assert tree_digest(tree, digest_of) == tree_digest(tree)
    assert sorted(seen) == ["a.txt", "b.bin", "c.txt"]


# DigestMemo --------------------------------------------------------------------------------

def test_memo_digest_is_the_file_digest(tmp_path: Path) -> None:
    p = tmp_path / "data.csv"
    p.write_text("a,b\n1,2\n")
    make_old(p)
    memo = DigestMemo(None)
    assert memo.of_file(p) == file_digest(p)
    assert memo.of_file(p) == file_digest(p)


def test_memo_reuses_remembered_digest_of_unchanged_old_file(tmp_path: Path) -> None:
    p = tmp_path / "data.csv"
    p.write_bytes(b"original")
    make_old(p)
    memo = DigestMemo(None)
    remembered = memo.of_file(p)
    # Same dev/inode/size/mtime: the memo must answer without reading the file again,
    # which shows as the remembered (now stale) digest.
    rewrite_keeping_identity(p, b"ORIGINAL")
    assert memo.of_file(p) == remembered
    assert file_digest(p) != remembered


def test_memo_recomputes_after_content_change(tmp_path: Path) -> None:
    p = tmp_path / "data.csv"
    p.write_bytes(b"original")
    old = make_old(p)
    memo = DigestMemo(None)
    first = memo.of_file(p)
    p.write_bytes(b"changed content")
    set_mtime_ns(p, old + 10**9)
    assert memo.of_file(p) == file_digest(p) == hashlib.sha256(b"changed content").hexdigest()
    assert memo.of_file(p) != first


def test_memo_recomputes_when_only_mtime_changes(tmp_path: Path) -> None:
    p = tmp_path / "data.csv"
    p.write_bytes(b"original")
    old = make_old(p)
    memo = DigestMemo(None)
    memo.of_file(p)
    rewrite_keeping_identity(p, b"ORIGINAL")
    set_mtime_ns(p, old + 10**9)
    assert memo.of_file(p) == hashlib.sha256(b"ORIGINAL").hexdigest()


def test_memo_recomputes_when_file_is_replaced_with_same_size_and_mtime(tmp_path: Path) -> None:
    """A replaced file has a new inode, even if size and mtime were restored."""
    p = tmp_path / "data.csv"
    p.write_bytes(b"original")
    old = make_old(p)
    memo = DigestMemo(None)
    memo.of_file(p)
    inode = p.stat().st_ino
    keep = tmp_path / "keep-inode-busy"
    os.link(p, keep)  # so the old inode number cannot be reused by the new file
    write_bytes(p, b"ORIGINAL")
    set_mtime_ns(p, old)
    assert p.stat().st_ino != inode
    assert memo.of_file(p) == hashlib.sha256(b"ORIGINAL").hexdigest()


def test_memo_does_not_remember_recently_modified_file(tmp_path: Path) -> None:
    p = tmp_path / "fresh.csv"
    p.write_bytes(b"first")
    set_mtime_ns(p, time.time_ns())  # modified just now: inside RACY_SECONDS
    store = tmp_path / "memo.json"
    memo = DigestMemo(store)
    assert memo.of_file(p) == hashlib.sha256(b"first").hexdigest()
    # A same-tick rewrite keeps size and mtime; the memo must not have trusted them.
    rewrite_keeping_identity(p, b"FIRST")
    assert memo.of_file(p) == hashlib.sha256(b"FIRST").hexdigest()
    memo.save()
    saved = json.loads(store.read_text()) if store.exists() else {}
    assert str(p.absolute()) not in saved


def test_memo_remembers_file_just_outside_racy_window(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    set_mtime_ns(p, time.time_ns() - int((RACY_SECONDS + 30) * 1e9))
    memo = DigestMemo(None)
    remembered = memo.of_file(p)
    rewrite_keeping_identity(p, b"xyz")
    assert memo.of_file(p) == remembered


def test_memo_persists_across_instances_via_save(tmp_path: Path) -> None:
    p = tmp_path / "big.bin"
    p.write_bytes(b"payload-1")
    make_old(p)
    store = tmp_path / "digests.json"
    first = DigestMemo(store)
    remembered = first.of_file(p)
    first.save()
    saved = json.loads(store.read_text())
    assert saved[str(p.absolute())][-1] == remembered

    rewrite_keeping_identity(p, b"PAYLOAD-1")
    second = DigestMemo(store)
    assert second.of_file(p) == remembered  # taken from the saved memo, not from the file
    assert DigestMemo(None).of_file(p) != remembered


def test_memo_without_save_persists_nothing(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    make_old(p)
    store = tmp_path / "digests.json"
    DigestMemo(store).of_file(p)
    assert not store.exists()


def test_memo_save_drops_entries_of_deleted_files(tmp_path: Path) -> None:
    keep, gone = tmp_path / "keep", tmp_path / "gone"
    for p in (keep, gone):
        p.write_bytes(p.name.encode())
        make_old(p)
    store = tmp_path / "digests.json"
    memo = DigestMemo(store)
    memo.of_file(keep)
    memo.of_file(gone)
    gone.unlink()
    memo.save()
    assert set(json.loads(store.read_text())) == {str(keep.absolute())}


def test_memo_tolerates_corrupt_store_file(tmp_path: Path) -> None:
    store = tmp_path / "digests.json"
    store.write_text("{not json")
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    make_old(p)
    memo = DigestMemo(store)
    assert memo.of_file(p) == file_digest(p)
    memo.save()
    assert str(p.absolute()) in json.loads(store.read_text())


def test_memo_path_of_folder_is_tree_digest(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "t")
    memo = DigestMemo(None)
    assert memo.path(root) == tree_digest(root)
    assert memo.path(root / "a.txt") == file_digest(root / "a.txt")


def test_memo_path_of_folder_notices_changed_file(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "t")
    for p in root.rglob("*"):
        make_old(p)
    memo = DigestMemo(None)
    before = memo.path(root)
    f = root / "sub" / "b.bin"
    f.write_bytes(b"\x09\x09\x09\x09")
    set_mtime_ns(f, time.time_ns() - HOUR_NS // 2)
    after = memo.path(root)
    assert after != before
    assert after == tree_digest(root)


def test_memo_copy_of_tree_has_same_digest(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "t")
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert DigestMemo(None).path(copy) == DigestMemo(None).path(root)
