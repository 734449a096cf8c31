"""Per-key locks between processes: one process computes a key, the others wait and reuse it.

The lock is an OS file lock (``filelock``), which the kernel releases when its holder dies,
even by ``kill -9``. Next to it an owner file records who holds it, so a waiting process can
say whom it waits for, and a process that finds the owner file of a dead holder says that it
takes the lock over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from tunepipe.procs import alive


def describe_owner(owner: dict) -> str:
    started = time.strftime("%H:%M:%S", time.localtime(owner.get("since", 0)))
    return f"pid {owner.get('pid')} on {owner.get('host')} (since {started})"


class KeyLock:
    """Exclusive lock for one key. Use as a context manager."""

    def __init__(self, folder: Path, key: str, what: str, say: Callable[[str], None]) -> None:
        self.path = folder / f"{key}.lock"
        self.owner_path = folder / f"{key}.owner"
        self.what = what
        self.say = say
        from filelock import FileLock  # imported here: a cached rerun takes no lock

        self._lock = FileLock(str(self.path), thread_local=False)

    def read_owner(self) -> dict | None:
        try:
            return json.loads(self.owner_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def try_acquire(self) -> bool:
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            return False
        self._claim()
        return True

    def acquire(self) -> None:
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            owner = self.read_owner()
            who = describe_owner(owner) if owner else "another process"
            self.say(f"waiting for {self.what}: {who} is computing it")
            self._lock.acquire()
        self._claim()

    def _claim(self) -> None:
        old = self.read_owner()
        here = socket.gethostname()
        if old and (old.get("pid"), old.get("host")) != (os.getpid(), here):
            # We hold the OS lock, so the recorded owner does not: it died without cleaning up.
            state = "died" if old.get("host") != here or not alive(old.get("pid", 0)) else "no longer holds it"
            self.say(f"took over the lock of {old.get('what', self.what)} from {describe_owner(old)}, which {state}")
        me = {"pid": os.getpid(), "host": here, "since": time.time(), "what": self.what}
        tmp = self.owner_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(me), encoding="utf-8")
        os.replace(tmp, self.owner_path)

    def release(self) -> None:
        try:
            self.owner_path.unlink()
        except FileNotFoundError:
            pass
        self._lock.release()

    def __enter__(self) -> KeyLock:
        self.acquire()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
