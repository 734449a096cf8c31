"""An ordered, bounded parallel map over batches: both cores, deterministic output, flat memory.

``multiprocessing.Pool.imap`` reads its whole input ahead (its feeder thread does not wait), so
memory would grow with the file. Here at most ``window`` batches are in flight; results come back
in input order, so a stage's output does not depend on scheduling.
"""

from __future__ import annotations

import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def worker_count(threads: int | None = None) -> int:
    """How many worker processes to use: the stage's thread budget, else the machine's cores."""
    return max(1, threads if threads else (os.cpu_count() or 1))


def _init_worker(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    """Workers leave Ctrl-C to the runner, which stops the run and cleans up; no worker tracebacks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, window: int | None = None,
                initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` processes, in order, with at most ``window`` items in flight.

    ``fn`` and the items must be picklable (module-level functions, plain data). With one worker it
    runs in this process (no pickling, easier to debug).
    """
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(fn, items)
        return
    window = window or workers * 3
    pending: deque[Future[R]] = deque()
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                             initargs=(initializer, initargs)) as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()
