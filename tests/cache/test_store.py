"""LocalStore on a real folder: publish, records, verify, gc and leftover sweeping."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tunepipe.cache.digests import tree_digest
from tunepipe.cache.store import LocalStore
from tunepipe.errors import OutputError, UserError

K1, K2, K3 = ("1" * 64, "2" * 64, "3" * 64)

HOLDER = """
import sys
from pathlib import Path
from tunepipe.cache.locks import KeyLock
lock = KeyLock(Path(sys.argv[1]), sys.argv[2], "stage busy", lambda m: None)
lock.acquire()
print("LOCKED", flush=True)
sys.stdin.read()
lock.release()
"""


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "cache")


def make_output(store: LocalStore, key: str, files: dict[str, bytes]) -> Path:
    folder = store.staging(key)
    for rel, data in files.items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return folder


def publish(store: LocalStore, key: str, files: dict[str, bytes]) -> str:
    return store.publish(make_output(store, key, files))


def objects(store: LocalStore) -> list[str]:
    return sorted(p.name for p in (store.root / "objects").glob("*/*"))


def record_keys(store: LocalStore) -> list[str]:
    return [k for k, _ in store.iter_records()]


# layout ------------------------------------------------------------------------------------

def test_new_store_creates_layout_and_cachedir_tag(tmp_path: Path) -> None:
    s = LocalStore(tmp_path / "c")
    for sub in ("objects", "keys", "locks", "tmp", "scratch", "state", "runs", "compiled"):
        assert (s.root / sub).is_dir()
    assert (s.root / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    LocalStore(tmp_path / "c")  # reopening an existing cache is fine


def test_store_on_unusable_folder_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot use the cache folder"):
        LocalStore(blocker / "cache")


# publish -----------------------------------------------------------------------------------

def test_publish_moves_folder_into_sharded_object(store: LocalStore) -> None:
    files = {"model.bin": b"\x00weights\x01", "sub/metrics.json": b'{"acc": 0.9}\n', "sub/empty.txt": b""}
    folder = make_output(store, K1, files)
    (folder / "run.sh").write_text("#!/bin/sh\n")
    (folder / "run.sh").chmod(0o755)
    (folder / "emptydir").mkdir()
    expected = tree_digest(folder)

    digest = store.publish(folder)

    assert digest == expected
    dest = store.root / "objects" / digest[:2] / digest
    assert store.object_path(digest) == dest
    assert dest.is_dir()
    assert not folder.exists()
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data
    assert (dest / "emptydir").is_dir()
    assert tree_digest(dest) == digest  # permissions change does not change the digest
    for p in dest.rglob("*"):
        if p.is_file():
            assert stat.S_IMODE(p.stat().st_mode) & 0o222 == 0, f"{p} is writable"
    assert (dest / "run.sh").stat().st_mode & stat.S_IXUSR


def test_publish_identical_content_twice_yields_one_object(store: LocalStore) -> None:
    files = {"a.txt": b"same", "d/b.txt": b"bytes"}
    first_folder = make_output(store, K1, files)
    second_folder = make_output(store, K2, files)
    d1 = store.publish(first_folder)
    d2 = store.publish(second_folder)
    assert d1 == d2
    assert objects(store) == [d1]
    assert not second_folder.exists()
    assert list((store.root / "tmp").iterdir()) == []
    assert (store.object_path(d1) / "d" / "b.txt").read_bytes() == b"bytes"


def test_publish_different_content_yields_different_objects(store: LocalStore) -> None:
    d1 = publish(store, K1, {"a.txt": b"one"})
    d2 = publish(store, K2, {"a.txt": b"two"})
    assert d1 != d2
    assert objects(store) == sorted([d1, d2])


def test_publish_rejects_symbolic_link(store: LocalStore) -> None:
    folder = make_output(store, K1, {"real.txt": b"data"})
    os.symlink(folder / "real.txt", folder / "link.txt")
    with pytest.raises(OutputError, match="^the output [^ ]+ contains a symbolic link"):
        store.publish(folder)
    assert objects(store) == []
    assert folder.is_dir()  # nothing was moved


def test_publish_rejects_symbolic_link_to_folder(store: LocalStore) -> None:
    folder = make_output(store, K1, {"d/real.txt": b"data"})
    os.symlink(folder / "d", folder / "d-link")
    with pytest.raises(OutputError, match=r"symbolic link \(d-link\)"):
        store.publish(folder)
    assert objects(store) == []


def test_publish_rejects_dangling_symbolic_link(store: LocalStore) -> None:
    folder = make_output(store, K1, {"real.txt": b"data"})
    os.symlink("does-not-exist", folder / "broken")
    with pytest.raises(OutputError, match="^the output [^ ]+ contains a symbolic link"):
        store.publish(folder)


# records -----------------------------------------------------------------------------------

def test_record_round_trip(store: LocalStore) -> None:
    d = publish(store, K1, {"x": b"1"})
    rec = {"outputs": {"out": d}, "parts": {"plugin": "p"}, "summary": "ok"}
    store.put_record(K1, rec)
    assert store.record_path(K1) == store.root / "keys" / K1[:2] / f"{K1}.json"
    assert store.record(K1) == rec
    assert record_keys(store) == [K1]


def test_record_of_unknown_key_is_none(store: LocalStore) -> None:
    assert store.record(K3) is None


def test_record_returns_none_when_an_output_object_is_missing(store: LocalStore) -> None:
    d1 = publish(store, K1, {"a": b"1"})
    d2 = publish(store, K2, {"b": b"2"})
    store.put_record(K1, {"outputs": {"model": d1, "metrics": d2}})
    assert store.record(K1) is not None
    shutil.rmtree(store.object_path(d2))
    assert store.record(K1) is None
    assert store.record_path(K1).exists()  # the record itself is left alone


def test_unreadable_record_is_none(store: LocalStore) -> None:
    path = store.record_path(K1)
    path.parent.mkdir(parents=True)
    path.write_text("{truncated")
    assert store.record(K1) is None


# verify ------------------------------------------------------------------------------------

def corrupt_one_byte(obj: Path, rel: str) -> None:
    p = obj / rel
    p.chmod(0o644)
    data = bytearray(p.read_bytes())
    data[0] ^= 0xFF
    p.write_bytes(bytes(data))


def test_verify_clean_store(store: LocalStore) -> None:
    d = publish(store, K1, {"a": b"1"})
    store.put_record(K1, {"outputs": {"out": d}})
    report = store.verify()
    assert report.clean
    assert (report.objects, report.records) == (1, 1)


def test_verify_reports_and_repairs_corrupt_and_missing(store: LocalStore) -> None:
    good = publish(store, K1, {"good.txt": b"fine"})
    bad = publish(store, K2, {"model.bin": b"weights-v1"})
    gone = publish(store, K3, {"g.txt": b"will vanish"})
    store.put_record(K1, {"outputs": {"out": good}})
    store.put_record(K2, {"outputs": {"out": bad}})
    store.put_record(K3, {"outputs": {"out": gone, "also": good}})
    corrupt_one_byte(store.object_path(bad), "model.bin")
    shutil.rmtree(store.object_path(gone))

    report = store.verify()
    assert not report.clean
    assert report.corrupt == [bad]
    assert report.missing == [(K3, gone)]
    assert report.unreadable == []
    assert (report.objects, report.records) == (2, 3)
    # Without repair, nothing is removed.
    assert store.object_path(bad).is_dir()
    assert sorted(record_keys(store)) == sorted([K1, K2, K3])

    repaired = store.verify(repair=True)
    assert repaired.corrupt == [bad]
    assert repaired.missing == [(K3, gone)]
    assert not store.object_path(bad).exists()
    assert record_keys(store) == [K1]
    assert store.record(K1) == {"outputs": {"out": good}}

    after = store.verify()
    assert after.clean
    assert (after.objects, after.records) == (1, 1)


def test_verify_reports_and_repairs_unreadable_record(store: LocalStore) -> None:
    path = store.record_path(K1)
    path.parent.mkdir(parents=True)
    path.write_text('{"no_outputs": 1}')
    report = store.verify()
    assert report.unreadable == [K1]
    assert not report.clean
    store.verify(repair=True)
    assert not path.exists()
    assert store.verify().clean


# gc ----------------------------------------------------------------------------------------

@pytest.fixture
def populated(store: LocalStore) -> dict[str, str]:
    shared = publish(store, "s" * 64, {"shared.txt": b"used by both"})
    only1 = publish(store, "a" * 64, {"one.txt": b"k1 only"})
    only2 = publish(store, "b" * 64, {"two.txt": b"k2 only"})
    orphan = publish(store, "c" * 64, {"orphan.txt": b"no record"})
    store.put_record(K1, {"outputs": {"x": only1, "s": shared}})
    store.put_record(K2, {"outputs": {"y": only2, "s": shared}})
    (store.root / "compiled" / "spec.json").write_text("{}")
    return {"shared": shared, "only1": only1, "only2": only2, "orphan": orphan}


def test_gc_removes_unkept_records_and_their_objects(store: LocalStore, populated: dict[str, str]) -> None:
    report = store.gc(keep={K1})
    assert report.records == [K2]
    assert sorted(report.objects) == sorted([populated["only2"], populated["orphan"]])
    assert report.freed_bytes == len(b"k2 only") + len(b"no record")
    assert record_keys(store) == [K1]
    assert objects(store) == sorted([populated["shared"], populated["only1"]])
    assert store.record(K1) == {"outputs": {"x": populated["only1"], "s": populated["shared"]}}
    assert store.verify().clean
    assert list((store.root / "compiled").iterdir()) == []


def test_gc_dry_run_removes_nothing(store: LocalStore, populated: dict[str, str]) -> None:
    before_objects, before_records = objects(store), record_keys(store)
    leftover = store.root / "tmp" / f"{K3}.99999.0"
    leftover.mkdir()
    report = store.gc(keep={K1}, dry_run=True)
    assert report.records == [K2]
    assert sorted(report.objects) == sorted([populated["only2"], populated["orphan"]])
    assert report.leftovers == [leftover.name]
    assert objects(store) == before_objects
    assert record_keys(store) == before_records
    assert leftover.is_dir()
    assert (store.root / "compiled" / "spec.json").exists()


def test_gc_keeping_nothing_empties_store(store: LocalStore, populated: dict[str, str]) -> None:
    report = store.gc(keep=set())
    assert sorted(report.records) == sorted([K1, K2])
    assert objects(store) == []
    assert record_keys(store) == []


def test_gc_keeping_everything_removes_only_orphans(store: LocalStore, populated: dict[str, str]) -> None:
    report = store.gc(keep={K1, K2})
    assert report.records == []
    assert report.objects == [populated["orphan"]]
    assert sorted(record_keys(store)) == sorted([K1, K2])


# staging, scratch and leftovers --------------------------------------------------------------

def test_staging_folders_are_private_and_cleared(store: LocalStore) -> None:
    a, b = store.staging(K1), store.staging(K1)
    assert a != b
    assert a.parent == b.parent == store.root / "tmp"
    assert a.name.startswith(f"{K1}.{os.getpid()}.")
    other = store.staging(K2)
    (a / "f").write_text("x")
    (a / "f").chmod(0o444)
    a.chmod(0o555)  # a failed stage may leave read-only folders
    store.clear_staging(K1)
    assert not a.exists() and not b.exists()
    assert other.is_dir()


def test_scratch_survives_until_dropped(store: LocalStore) -> None:
    s = store.scratch(K1)
    (s / "ckpt").write_text("step 10")
    assert store.scratch(K1) == s
    assert (s / "ckpt").read_text() == "step 10"
    store.drop_scratch(K1)
    assert not s.exists()


def test_sweep_leftovers_removes_free_but_not_locked_folders(store: LocalStore) -> None:
    dead = store.root / "tmp" / f"{K1}.424242.0"
    (dead / "partial").mkdir(parents=True)
    (dead / "partial" / "half.bin").write_bytes(b"half")
    busy = store.root / "tmp" / f"{K2}.{os.getpid() + 1}.3"
    busy.mkdir()
    (busy / "running.txt").write_text("in progress")

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store.root / "locks"), K2],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        said: list[str] = []
        assert store.sweep_leftovers(dry_run=True, say=said.append) == [dead.name]
        assert dead.is_dir()
        removed = store.sweep_leftovers(say=said.append)
        assert removed == [dead.name]
        assert not dead.exists()
        assert busy.is_dir()
        assert (busy / "running.txt").read_text() == "in progress"
        assert said == []
        # The holder's lock is untouched by the sweep.
        assert store.lock(K2, "probe", said.append).try_acquire() is False
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()
    # Once the holder is gone, its folder is a leftover too.
    assert store.sweep_leftovers() == [busy.name]
    assert list((store.root / "tmp").iterdir()) == []


def test_sweep_leftovers_after_holder_killed(store: LocalStore) -> None:
    leftover = store.root / "tmp" / f"{K1}.1.0"
    leftover.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store.root / "locks"), K1],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        assert store.sweep_leftovers() == []
        holder.kill()
        holder.wait(timeout=30)
        said: list[str] = []
        assert store.sweep_leftovers(say=said.append) == [leftover.name]
        assert not leftover.exists()
        assert any(f"pid {holder.pid}" in m and "took over the lock" in m for m in said)
        assert not (store.root / "locks" / f"{K1}.owner").exists()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        holder.stdin.close()
        holder.stdout.close()


def test_record_file_is_valid_json_on_disk(store: LocalStore) -> None:
    d = publish(store, K1, {"a": b"1"})
    store.put_record(K1, {"outputs": {"out": d}, "note": "ünïcode"})
    assert json.loads(store.record_path(K1).read_text(encoding="utf-8"))["note"] == "ünïcode"
    assert [p.name for p in store.record_path(K1).parent.iterdir()] == [f"{K1}.json"]
