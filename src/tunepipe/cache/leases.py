"""Per-key locks across machines: a lease object on object storage, next to the local file lock.

:class:`~tunepipe.cache.locks.KeyLock` works only where processes share a kernel (or a POSIX
file system). Machines that share an object-storage cache coordinate through a *lease*: a small
object ``locks/<key>.lease`` that is

* **created** with ``If-None-Match: *`` (a conditional PUT: of two machines only one gets it),
* **renewed** by a heartbeat thread every ``ttl/4`` seconds with ``If-Match: <its ETag>``
  (each renewal changes the body, hence the ETag, so a takeover can tell renewals apart),
* **taken over** when its holder stopped renewing it for ``ttl`` seconds, again with
  ``If-Match`` so that of two waiters only one wins, and
* **deleted** on release with ``If-Match`` (never someone else's lease).

A lease's age is measured on the server's clock (the response's ``Date`` minus the object's
``Last-Modified``), so clock skew between machines does not matter. A holder on this same host
whose process is gone is taken over at once, as ``KeyLock`` does. AWS S3 supports these
conditional writes since 2024, and so do MinIO and moto.

A lost lease (the holder was frozen or cut off for longer than ``ttl`` and someone took over)
costs at most a duplicate computation: artifacts are content-addressed and records are
rewritten whole, so the cache stays correct; the holder says that it lost the lease.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tunepipe.cache.locks import KeyLock, describe_owner
from tunepipe.procs import alive
from tunepipe.errors import TunepipeError, UserError

if TYPE_CHECKING:
    from tunepipe.cache.s3 import Remote

TTL_ENV = "TUNEPIPE_LEASE_TTL"
DEFAULT_TTL = 60.0
MIN_TTL = 2.0


def lease_ttl() -> float:
    """Seconds a lease lives without renewal (``$TUNEPIPE_LEASE_TTL``, default 60)."""
    raw = os.environ.get(TTL_ENV, "").strip()
    if not raw:
        return DEFAULT_TTL
    try:
        ttl = float(raw)
    except ValueError:
        ttl = -1.0
    if not ttl >= MIN_TTL:
        raise UserError(f"{TTL_ENV}={raw!r} is not a number of seconds of at least {MIN_TTL:g}: it is how long "
                        "a machine that stops renewing its lease on a stage keeps it (default 60). "
                        f"Unset it or give e.g. {TTL_ENV}=60")
    return ttl


@dataclass
class LeaseState:
    """What a waiter sees of a lease: its holder, ETag and age on the server's clock."""

    owner: dict[str, Any]
    etag: str
    age: float

    @property
    def dead_here(self) -> bool:
        """The holder ran on this host and its process is gone (no need to wait for the ttl)."""
        return self.owner.get("host") == socket.gethostname() and not alive(int(self.owner.get("pid") or 0))

    @property
    def expired(self) -> bool:
        return self.dead_here or self.age > float(self.owner.get("ttl") or DEFAULT_TTL)

    def why_expired(self) -> str:
        if self.dead_here:
            return "died"
        return f"stopped renewing it {self.age:.0f} s ago"


def read_lease(remote: Remote, rel: str) -> LeaseState | None:
    """The lease at ``rel``, or None when there is none (an unreadable body counts as expired)."""
    head = remote.head(rel)
    if head is None:
        return None
    try:
        owner = json.loads(remote.get(rel) or b"{}")
        if not isinstance(owner, dict):
            raise ValueError
    except ValueError:
        owner = {"ttl": 0}  # a lease nobody can read protects nothing
    return LeaseState(owner, head.etag, head.age)


class LeaseLock:
    """Exclusive lock for one key across machines: the local ``KeyLock`` (cheap waiting among this
    machine's processes), then the remote lease. Has ``KeyLock``'s interface."""

    def __init__(self, local: KeyLock, remote: Remote, rel: str, what: str, say: Callable[[str], None],
                 ttl: float | None = None) -> None:
        self.local, self.remote, self.rel, self.what, self.say = local, remote, rel, what, say
        self.ttl = ttl if ttl is not None else lease_ttl()
        self.poll = min(5.0, self.ttl / 4)
        self._etag: str | None = None
        self._body: dict[str, Any] = {}
        self._stop = threading.Event()
        self._heart: threading.Thread | None = None
        self.lost = False

    # the lease itself ------------------------------------------------------------------------
    def _body_bytes(self) -> bytes:
        return json.dumps(self._body, sort_keys=True).encode()

    def _take(self) -> LeaseState | None:
        """One attempt: create the lease, or take over an expired one. None when we hold it now,
        else what we found (whom we wait for)."""
        self._body = {"holder": uuid.uuid4().hex, "pid": os.getpid(), "host": socket.gethostname(),
                      "since": time.time(), "renewals": 0, "ttl": self.ttl, "what": self.what}
        for _ in range(3):  # it changed between our attempt and our look: look again at once
            etag = self.remote.put(self.rel, self._body_bytes(), create=True)
            if etag is not None:
                self._etag = etag
                return None
            state = read_lease(self.remote, self.rel)
            if state is None:
                continue
            if state.expired:
                etag = self.remote.put(self.rel, self._body_bytes(), if_match=state.etag)
                if etag is not None:
                    self._etag = etag
                    self.say(f"took over the lease of {state.owner.get('what', self.what)} from "
                             f"{describe_owner(state.owner)}, which {state.why_expired()}")
                    return None
                continue  # another waiter took it over first: look again
            return state
        return LeaseState({}, "", 0.0)

    def _renew(self) -> None:
        """The heartbeat: rewrite the lease every ttl/4 while we hold it."""
        failing = False
        while not self._stop.wait(self.ttl / 4):
            self._body["renewals"] += 1
            self._body["renewed"] = time.time()
            try:
                etag = self.remote.put(self.rel, self._body_bytes(), if_match=self._etag)
            except TunepipeError as e:
                if not failing:
                    self.say(f"could not renew the lease of {self.what} ({e}); retrying")
                failing = True
                continue
            failing = False
            if etag is None:
                self.lost = True
                state = read_lease(self.remote, self.rel)
                who = describe_owner(state.owner) if state and state.owner else "nobody"
                self.say(f"lost the lease of {self.what} (not renewed for {self.ttl:g} s, e.g. this machine was "
                         f"suspended); now held by {who}. Both may compute it; the cache stays correct")
                return
            self._etag = etag

    # KeyLock's interface ---------------------------------------------------------------------
    def try_acquire(self) -> bool:
        if not self.local.try_acquire():
            return False
        try:
            got = self._take() is None
        except BaseException:
            self.local.release()
            raise
        if not got:
            self.local.release()
            return False
        self._start()
        return True

    def acquire(self) -> None:
        self.local.acquire()
        try:
            announced = False
            while (state := self._take()) is not None:
                if not announced and state.owner:
                    self.say(f"waiting for {self.what}: {describe_owner(state.owner)} is computing it")
                    announced = True
                time.sleep(self.poll)
        except BaseException:
            self.local.release()
            raise
        self._start()

    def _start(self) -> None:
        self.lost = False
        self._stop.clear()
        self._heart = threading.Thread(target=self._renew, name=f"tunepipe-lease-{self.rel[-12:]}", daemon=True)
        self._heart.start()

    def release(self) -> None:
        self._stop.set()
        if self._heart is not None:
            self._heart.join()
            self._heart = None
        try:
            if self._etag is not None and not self.lost:
                self.remote.delete(self.rel, if_match=self._etag)
        except TunepipeError as e:
            self.say(f"could not remove the lease of {self.what} ({e}); it expires in {self.ttl:g} s")
        finally:
            self._etag = None
            self.local.release()

    def __enter__(self) -> LeaseLock:
        self.acquire()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
