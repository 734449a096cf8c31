"""A local process pool whose workers end with the process that owns it, however it ends.

A worker left behind (after Ctrl-C, SIGTERM or ``kill -9`` of its owner) blocks for good on the
pool's pipes and holds the run's stdout and stderr, so whatever captures them (CI, a pipe) hangs.
:func:`process_pool` makes workers that die with their owner; :func:`stop_workers` kills them at
once for a process on its way out; :func:`submit` keeps a signal from reaching a worker before it
has set its own handlers.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.context
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

from tunepipe.procs import alive

T = TypeVar("T")
R = TypeVar("R")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PR_SET_PDEATHSIG = 1  # prctl(2) on Linux: a signal the kernel sends this process when its parent dies
PARENT_POLL_S = 0.5  # where the kernel cannot tell, a worker looks for its owner this often

_POOLS: set[ProcessPoolExecutor] = set()  # the pools open in this process, for stop_workers


def _init_worker(owner: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    """A worker dies with the process that owns its pool (``owner``), even one killed with ``kill -9``:
    a worker left behind blocks for good on the pool's pipes and holds the run's stdout and stderr,
    so whatever captures them (CI, a pipe) hangs. Ctrl-C is the owner's to handle and SIGTERM ends a
    worker at once, so a worker never prints a KeyboardInterrupt traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):  # blocked across the fork by _submit; handled as above from now on
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    _die_with(owner)
    if initializer is not None:
        initializer(*initargs)


def _die_with(owner: int) -> None:
    """End this worker when ``owner`` ends. A forked worker's parent is ``owner`` (for the kernel, the
    thread that forked it: the one that uses the pool, which outlives it), and on Linux the kernel
    kills the worker when it dies; the request is checked after it is made, since the parent may
    have died before. Otherwise (a forkserver's worker: the forkserver outlives ``owner`` for as
    long as its workers live; or no such request) a thread watches ``owner``."""
    if os.getppid() == owner and _set_parent_death_signal():
        if os.getppid() != owner:  # re-parented: the owner died before the request
            os._exit(1)
        return
    import threading

    threading.Thread(target=_watch_owner, args=(owner,), name="tunepipe-owner-watch", daemon=True).start()


def _set_parent_death_signal() -> bool:
    """``prctl(PR_SET_PDEATHSIG, SIGKILL)``: False where there is no such call (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_owner(owner: int) -> None:
    """Exit once ``owner`` has ended: told by the kernel (a pidfd, Linux 5.3+: no pid reuse, and a
    zombie counts as ended), else by looking every ``PARENT_POLL_S`` (a forked worker: whether it
    was re-parented, which also happens to a zombie's children)."""
    import select

    forked = os.getppid() == owner
    try:
        fd = os.pidfd_open(owner)
    except (AttributeError, OSError):  # no pidfds here, or the owner is already gone
        fd = None
    if fd is not None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)  # readable once the process has ended
        poller.poll()
    else:
        while os.getppid() == owner if forked else alive(owner):
            time.sleep(PARENT_POLL_S)
    os._exit(1)


def submit(pool: ProcessPoolExecutor, fn: Callable[[T], R], item: T, hold: bool) -> Future[R]:
    """``pool.submit``; with ``hold`` (a forking pool), with Ctrl-C and SIGTERM held back in this
    thread: a submit may fork a worker, which inherits this process's handlers (Ctrl-C raises
    KeyboardInterrupt) until ``_init_worker`` replaces them; with the signals blocked, one that comes
    before waits for that. The process itself still gets them at once: the kernel hands them to a
    thread that does not block them. Not around a forkserver's start: it would keep them blocked."""
    if not hold or not hasattr(signal, "pthread_sigmask"):
        return pool.submit(fn, item)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return pool.submit(fn, item)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def stop_workers() -> None:
    """Kill the workers of every pool of this process now, without waiting for their items.

    For a process on its way out (Ctrl-C, SIGTERM: the CLI calls it before ``os._exit``), so that no
    worker outlives it even where the kernel does not kill them (not Linux). A pool whose workers
    were killed is broken: never call this in a process that goes on using its pools.
    """
    for pool in tuple(_POOLS):
        for proc in tuple((getattr(pool, "_processes", None) or {}).values()):
            try:
                proc.kill()
            except Exception:  # noqa: BLE001 - already gone, or not started: nothing to stop
                pass


_QUIETED = False


def _quiet_broken_pool_race() -> None:
    """Keep CPython's pool manager thread from printing a traceback when the pool breaks (its
    workers killed by a signal to the process group) just as an item is cancelled: before 3.12 its
    ``terminate_broken`` sets the exception of an already cancelled future and dies on the
    InvalidStateError (CPython gh-107219, fixed by ignoring it). Ignored here too, in that thread
    only; every other thread's exception goes to the hook as before."""
    global _QUIETED
    if _QUIETED or sys.version_info >= (3, 12):
        return
    _QUIETED = True
    import threading
    from concurrent.futures import InvalidStateError
    from concurrent.futures.process import _ExecutorManagerThread  # type: ignore[attr-defined]

    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (args.exc_type is InvalidStateError and isinstance(args.thread, _ExecutorManagerThread)):
            previous(args)

    threading.excepthook = hook


@contextlib.contextmanager
def process_pool(workers: int, initializer: Callable[..., None] | None, initargs: tuple,
                 context: multiprocessing.context.BaseContext | None = None
                 ) -> Iterator[tuple[ProcessPoolExecutor, bool]]:
    """A process pool whose workers die with this process (`_init_worker`), and whether it
    forks them; while it is open, :func:`stop_workers` can kill them. Closing it waits for the items
    under way, as before."""
    context = context or multiprocessing.get_context()  # what the pool would take by itself
    _quiet_broken_pool_race()
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                               initargs=(os.getpid(), initializer, initargs), mp_context=context)
    _POOLS.add(pool)
    try:
        with pool:
            yield pool, context.get_start_method() == "fork"
    finally:
        _POOLS.discard(pool)
