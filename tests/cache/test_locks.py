"""KeyLock between real processes: exclusion, waiting, and takeover after kill -9."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tunepipe.cache.locks import KeyLock, describe_owner

KEY = "ab" + "0" * 62

# Takes the lock, says so, then holds it until stdin closes (or it is killed).
HOLDER = """
import sys
from pathlib import Path
from tunepipe.cache.locks import KeyLock
lock = KeyLock(Path(sys.argv[1]), sys.argv[2], sys.argv[3], lambda m: print("SAY", m, flush=True))
lock.acquire()
print("LOCKED", flush=True)
sys.stdin.read()
lock.release()
print("RELEASED", flush=True)
"""

# Tries the lock once and prints whether it got it.
PROBE = """
import sys
from pathlib import Path
from tunepipe.cache.locks import KeyLock
lock = KeyLock(Path(sys.argv[1]), sys.argv[2], "probe", lambda m: None)
got = lock.try_acquire()
print("GOT" if got else "BUSY", flush=True)
if got:
    lock.release()
"""


def start_holder(folder: Path, key: str = KEY, what: str = "stage train") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), key, what],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "LOCKED":
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"lock holder did not start: {line!r} {err}")
    return proc


def probe(folder: Path, key: str = KEY) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE, str(folder), key],
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def kill9(proc: subprocess.Popen) -> None:
    proc.kill()  # SIGKILL on POSIX
    proc.wait(timeout=30)
    assert proc.returncode == -9


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    f = tmp_path / "locks"
    f.mkdir()
    return f


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()
        for stream in (p.stdin, p.stdout, p.stderr):
            if stream:
                stream.close()


def test_lock_held_by_killed_process_is_taken_over(folder: Path, procs: list) -> None:
    holder = start_holder(folder)
    procs.append(holder)
    said: list[str] = []
    lock = KeyLock(folder, KEY, "stage train", said.append)

    assert lock.try_acquire() is False
    owner = lock.read_owner()
    assert owner is not None
    assert owner["pid"] == holder.pid
    assert owner["what"] == "stage train"
    assert said == []

    kill9(holder)
    # The dead holder could not clean up its owner file; the kernel freed the OS lock.
    assert lock.owner_path.exists()
    lock.acquire()
    try:
        assert len(said) == 1
        msg = said[0]
        assert "took over the lock" in msg
        assert f"pid {holder.pid}" in msg
        assert "stage train" in msg
        assert msg.endswith("which died")
        owner = lock.read_owner()
        assert owner is not None and owner["pid"] == os.getpid()
        assert probe(folder) == "BUSY"
    finally:
        lock.release()
    assert not lock.owner_path.exists()
    assert probe(folder) == "GOT"


def test_try_acquire_after_kill_also_takes_over(folder: Path, procs: list) -> None:
    holder = start_holder(folder)
    procs.append(holder)
    said: list[str] = []
    lock = KeyLock(folder, KEY, "x", said.append)
    assert lock.try_acquire() is False
    kill9(holder)
    assert lock.try_acquire() is True
    lock.release()
    assert any("took over the lock" in m and f"pid {holder.pid}" in m for m in said)
    assert not lock.owner_path.exists()


def test_acquire_waits_for_live_holder_and_names_it(folder: Path, procs: list) -> None:
    holder = start_holder(folder, what="stage prep")
    procs.append(holder)
    said: list[str] = []
    lock = KeyLock(folder, KEY, "stage prep", said.append)
    got = threading.Event()

    def take() -> None:
        lock.acquire()
        got.set()

    t = threading.Thread(target=take, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not said and time.monotonic() < deadline:
        time.sleep(0.01)
    assert said, "acquire() did not report that it waits"
    assert said[0].startswith("waiting for stage prep: ")
    assert f"pid {holder.pid} on {socket.gethostname()}" in said[0]
    assert "is computing it" in said[0]
    assert not got.is_set()

    # The holder finishes normally: its owner file goes, so there is no takeover.
    holder.stdin.close()
    assert holder.stdout.readline().strip() == "RELEASED"
    holder.wait(timeout=30)
    t.join(timeout=30)
    assert got.is_set()
    try:
        assert len(said) == 1
        assert lock.read_owner()["pid"] == os.getpid()
    finally:
        lock.release()
    assert not lock.owner_path.exists()


def test_context_manager_writes_and_removes_owner_file(folder: Path) -> None:
    said: list[str] = []
    with KeyLock(folder, KEY, "stage eval", said.append) as lock:
        owner = json.loads(lock.owner_path.read_text())
        assert owner["pid"] == os.getpid()
        assert owner["host"] == socket.gethostname()
        assert owner["what"] == "stage eval"
        # Another lock object on the same key is excluded, even in the same process.
        assert KeyLock(folder, KEY, "other", said.append).try_acquire() is False
    assert not (folder / f"{KEY}.owner").exists()
    assert said == []
    again = KeyLock(folder, KEY, "again", said.append)
    assert again.try_acquire() is True
    again.release()
    assert [p.name for p in folder.iterdir() if p.name.endswith((".owner", ".tmp"))] == []


def test_release_on_exception_in_with_block(folder: Path) -> None:
    with pytest.raises(RuntimeError):
        with KeyLock(folder, KEY, "s", lambda m: None):
            raise RuntimeError("stage crashed")
    assert not (folder / f"{KEY}.owner").exists()
    other = KeyLock(folder, KEY, "s", lambda m: None)
    assert other.try_acquire() is True
    other.release()


def test_different_keys_do_not_exclude_each_other(folder: Path, procs: list) -> None:
    procs.append(start_holder(folder, key=KEY))
    other = KeyLock(folder, "cd" + "1" * 62, "other", lambda m: None)
    assert other.try_acquire() is True
    other.release()


@pytest.mark.parametrize(("host", "state"), [("same", "no longer holds it"), ("elsewhere", "died")])
def test_stale_owner_file_without_os_lock(folder: Path, host: str, state: str) -> None:
    """An owner file whose process lives but holds no OS lock (or is on another host)."""
    live_pid = os.getppid()
    hostname = socket.gethostname() if host == "same" else "some-other-host.invalid"
    owner = {"pid": live_pid, "host": hostname, "since": 0, "what": "stage old"}
    (folder / f"{KEY}.owner").write_text(json.dumps(owner))
    said: list[str] = []
    lock = KeyLock(folder, KEY, "stage new", said.append)
    assert lock.try_acquire() is True
    lock.release()
    assert said == [f"took over the lock of stage old from {describe_owner(owner)}, which {state}"]


def test_unreadable_owner_file_is_ignored(folder: Path) -> None:
    (folder / f"{KEY}.owner").write_text("{broken")
    said: list[str] = []
    lock = KeyLock(folder, KEY, "s", said.append)
    assert lock.read_owner() is None
    assert lock.try_acquire() is True
    assert lock.read_owner()["pid"] == os.getpid()
    lock.release()
    assert said == []


def test_describe_owner() -> None:
    text = describe_owner({"pid": 42, "host": "node7", "since": 0})
    assert text.startswith("pid 42 on node7 (since ")
    assert text.endswith(")")
