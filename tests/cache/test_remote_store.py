"""RemoteStore against a real S3 server (moto over HTTP): publish, records, lazy fetch on another
"machine" (another working cache), damaged content, verify, and the lease lock between processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from s3 import SECRET, s3, s3_server  # noqa: F401  (pytest fixtures)

from tunepipe.cache.digests import tree_digest
from tunepipe.cache.remote import RemoteStore
from tunepipe.cache.remote_layout import build_manifest, manifest_digest
from tunepipe.errors import CacheError

KEY = "cd" + "1" * 62


def make_output(folder: Path) -> Path:
    """An artifact with what a tree digest sees: nested files, an empty file, an empty folder, an x bit."""
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "empty-dir").mkdir()
    (folder / "data.jsonl").write_text('{"a": 1}\n{"a": 2}\n', encoding="utf-8")
    (folder / "sub" / "deeper" / "weights.bin").write_bytes(bytes(range(256)) * 64)
    (folder / "sub" / "empty.txt").write_bytes(b"")
    tool = folder / "run.sh"
    tool.write_text("#!/bin/sh\necho hi\n", encoding="utf-8")
    tool.chmod(0o755)
    return folder


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_manifest_describes_exactly_the_tree_digest(tmp_path: Path) -> None:
    folder = make_output(tmp_path / "out")
    digest, manifest = build_manifest(folder)
    assert digest == tree_digest(folder) == manifest_digest(manifest)
    assert manifest["dirs"] == ["empty-dir", "sub", "sub/deeper"]
    assert [f["path"] for f in manifest["files"] if f["x"]] == ["run.sh"]
    manifest["files"][0]["x"] = not manifest["files"][0]["x"]  # an x bit is part of the content
    assert manifest_digest(manifest) != digest


def publish_one(store: RemoteStore, tmp_path: Path) -> tuple[str, dict]:
    digest = store.publish(make_output(store.staging(KEY) / "out"))
    record = {"key": KEY, "stage": "s", "parts": {}, "outputs": {"out": digest}, "summary": {"n": 2}}
    store.put_record(KEY, record)
    return digest, record


def test_a_second_machine_sees_the_record_and_fetches_identical_bytes(s3, tmp_path: Path) -> None:  # noqa: F811
    a = RemoteStore(s3.url, tmp_path / "node-a")
    assert a.location() == s3.url and a.root == tmp_path / "node-a"
    assert a.record(KEY) is None
    digest, record = publish_one(a, tmp_path)
    keys = s3.keys()
    manifest = f"cache/objects/{digest[:2]}/{digest}.json"
    assert {manifest, f"cache/keys/{KEY[:2]}/{KEY}.json", "cache/tunepipe-cache.json",
            f"cache/objects/{digest[:2]}/{digest}/sub/deeper/weights.bin"} <= set(keys)
    assert json.loads(s3.read(manifest))["digest"] == digest

    b = RemoteStore(s3.url, tmp_path / "node-b")
    assert b.record(KEY) == record
    assert not b.object_path(digest).exists()  # lazy: a record lookup downloads no artifact
    fetched = b.fetch(digest)
    assert fetched == b.object_path(digest) and tree_digest(fetched) == digest
    assert files_of(fetched) == files_of(a.object_path(digest))
    assert (fetched / "empty-dir").is_dir() and os.access(fetched / "run.sh", os.X_OK)
    assert (fetched / "data.jsonl").stat().st_mode & 0o222 == 0  # read-only, like local artifacts
    assert b.local.record(KEY) == record  # now complete here: the next lookup makes no request
    assert b.fetch(digest) == fetched


def test_a_damaged_artifact_is_never_published_and_verify_repairs_the_cache(s3, tmp_path: Path) -> None:  # noqa: F811
    a = RemoteStore(s3.url, tmp_path / "node-a")
    digest, _ = publish_one(a, tmp_path)
    b = RemoteStore(s3.url, tmp_path / "node-b")
    assert b.record(KEY) is not None  # b has seen the record (and not fetched the artifact)
    data = f"cache/objects/{digest[:2]}/{digest}/data.jsonl"
    s3.write(data, s3.read(data).replace(b"1", b"7"))  # same size, other bytes

    c = RemoteStore(s3.url, tmp_path / "node-c")
    assert c.record(KEY) is not None  # the manifest is there; the damage shows when the bytes are read
    with pytest.raises(CacheError, match="does not match its digest .data.jsonl differs") as err:
        c.fetch(digest)
    assert "cache verify --repair" in str(err.value)
    assert not c.object_path(digest).exists() and list((c.root / "tmp").iterdir()) == []

    report = c.verify()
    assert (report.objects, report.records, report.corrupt) == (1, 1, [digest])
    c.verify(repair=True)
    assert s3.keys() == ["cache/tunepipe-cache.json"]  # record first, then manifest, then files
    assert RemoteStore(s3.url, tmp_path / "node-d").record(KEY) is None  # recomputed next time
    assert c.record(KEY) is None

    assert b.record(KEY) is not None  # b trusts what it saw, without a request...
    with pytest.raises(CacheError, match=f"has no artifact {digest[:12]}.*run the pipeline again"):
        b.fetch(digest)  # ...until it misses the artifact: then it forgets the record
    assert b.record(KEY) is None

    said: list[str] = []
    a.say = said.append  # a still has the artifact and its record, intact: repair puts them back
    assert a.verify().clean and said[-1].startswith("1 artifacts this machine has are missing")
    a.verify(repair=True)
    assert said[-1] == f"{s3.url}: put back 1 artifacts and 1 records from this machine's intact copies"
    e = RemoteStore(s3.url, tmp_path / "node-e")
    assert files_of(e.fetch(e.record(KEY)["outputs"]["out"])) == files_of(a.object_path(digest))


# --- the lease lock between processes -------------------------------------------------------------

# Opens the cache as another machine would, takes the lock of KEY, says so, holds it until stdin closes.
HOLDER = """
import sys
from pathlib import Path
from tunepipe.cache.remote import RemoteStore
store = RemoteStore(sys.argv[1], Path(sys.argv[2]))
lock = store.lock(sys.argv[3], "stage train", lambda m: print("SAY", m, flush=True))
lock.acquire()
print("LOCKED", flush=True)
sys.stdin.read()
lock.release()
"""


def start_holder(url: str, root: Path, env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, url, str(root), KEY], env={**os.environ, **env}, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stdout.readline()
    if line.strip() != "LOCKED":
        proc.kill()
        pytest.fail(f"the lease holder did not start: {line!r} {proc.communicate()[1]}")
    return proc


def test_a_lease_of_a_machine_that_stopped_renewing_it_is_taken_over(s3, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setenv("TUNEPIPE_LEASE_TTL", "3")
    holder = start_holder(s3.url, tmp_path / "node-b", {**s3.env, "TUNEPIPE_LEASE_TTL": "3"})
    try:
        said: list[str] = []
        store = RemoteStore(s3.url, tmp_path / "node-a")
        lock = store.lock(KEY, "stage train", said.append)
        assert lock.try_acquire() is False  # another machine holds it (renewing it)
        time.sleep(3.5)
        assert lock.try_acquire() is False  # older than the ttl, but renewed: alive, however long it takes
        os.kill(holder.pid, signal.SIGSTOP)  # frozen, like a machine cut off from the storage
        t0 = time.monotonic()
        lock.acquire()
        waited = time.monotonic() - t0
        assert 1.0 < waited < 15, waited  # about the ttl (the server clock counts whole seconds)
        assert said[0].startswith(f"waiting for stage train: pid {holder.pid} on {socket.gethostname()}")
        assert said[-1].startswith(f"took over the lease of stage train from pid {holder.pid}")
        assert "which stopped renewing it" in said[-1]
        os.kill(holder.pid, signal.SIGCONT)  # it wakes up: its next renewal finds the lease gone
        line = holder.stdout.readline()
        assert line.startswith("SAY lost the lease of stage train") and "now held by pid" in line
        lease = json.loads(s3.read(f"cache/locks/{KEY}.lease"))
        assert lease["pid"] == os.getpid()
        lock.release()
        assert f"cache/locks/{KEY}.lease" not in s3.keys()
    finally:
        holder.kill()
        holder.communicate()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(s3, tmp_path: Path) -> None:  # noqa: F811
    holder = start_holder(s3.url, tmp_path / "node-b", s3.env)  # the default ttl: 60 s
    os.kill(holder.pid, signal.SIGKILL)
    holder.communicate()
    said: list[str] = []
    lock = RemoteStore(s3.url, tmp_path / "node-a").lock(KEY, "stage train", said.append)
    t0 = time.monotonic()
    with lock:
        assert time.monotonic() - t0 < 5
    assert said == [f"took over the lease of stage train from pid {holder.pid} on {socket.gethostname()} "
                    f"(since {said[0].split('(since ')[1].split(')')[0]}), which died"]


def test_nothing_written_holds_the_secret(s3, tmp_path: Path) -> None:  # noqa: F811
    a = RemoteStore(s3.url, tmp_path / "node-a")
    publish_one(a, tmp_path)
    with a.lock(KEY, "stage s", lambda _m: None):
        assert SECRET.encode() not in s3.all_bytes()  # the lease too
    b = RemoteStore(s3.url, tmp_path / "node-b")
    b.fetch(b.record(KEY)["outputs"]["out"])
    local = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and not stat.S_ISLNK(p.lstat().st_mode))
    assert SECRET.encode() not in local + s3.all_bytes()
    assert SECRET not in a.location() + repr(a.remote.error(PermissionError("denied"), "testing"))
