"""An ordered, bounded parallel map over batches: all cores, deterministic output, flat memory.

``multiprocessing.Pool.imap`` reads its whole input ahead (its feeder thread does not wait), so
memory would grow with the file. Here at most ``window`` batches are in flight; results come back
in input order, so a stage's output does not depend on scheduling. The workers end with the
process that owns the pool, however it ends (Ctrl-C, SIGTERM, ``kill -9``; :mod:`tunepipe.data.pool`).

On a Ray cluster (``engine="ray"``: the stage runs as a Ray task, or in a driver connected to a
cluster) the same map runs on **Ray Data** across the cluster instead of a local process pool, with
the same items, the same function and the same order, so the stage writes the same bytes
(:mod:`tunepipe.cluster.ray_data` says how). The local path never imports Ray, nor that module: the
local executor works without them.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import TypeVar

from tunepipe.data.pool import process_pool, submit

T = TypeVar("T")
R = TypeVar("R")


def worker_count(threads: int | None = None, engine: str = "local") -> int:
    """How many workers to use: the stage's thread budget, else the machine's cores; on a Ray
    cluster, the CPUs Ray Data can use there (the cluster's, less those the stage's task holds),
    since the stage's own budget is one task's, not the cluster's."""
    if engine == "ray" and _on_ray():
        from tunepipe.cluster import ray_data

        return max(1, ray_data.ray_cpus(same_node=False))
    return max(1, threads if threads else (os.cpu_count() or 1))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, window: int | None = None,
                initializer: Callable[..., None] | None = None, initargs: tuple = (),
                engine: str = "local", same_node: bool = False) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` processes, in order, with at most ``window`` items in flight.

    ``fn`` and the items must be picklable (module-level functions, plain data). With one worker it
    runs in this process (no pickling, easier to debug). With ``engine="ray"`` while Ray is
    initialised (and more than one worker) it runs on Ray Data
    (:func:`tunepipe.cluster.ray_data.ray_map`); ``same_node``
    keeps that work on this node, for items that name files only this node has.
    """
    if workers > 1 and engine == "ray" and _on_ray():
        from tunepipe.cluster import ray_data

        yield from ray_data.ray_map(fn, items, workers, window, initializer, initargs, same_node)
        return
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(fn, items)
        return
    window = window or workers * 3
    pending: deque[Future[R]] = deque()
    with process_pool(workers, initializer, initargs, _pool_context()) as (pool, forks):
        try:
            for item in items:
                pending.append(submit(pool, fn, item, hold=forks))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


def _pool_context() -> multiprocessing.context.BaseContext | None:
    """How the pool starts its workers: forked (the default: fast, tokenizers already loaded),
    except in a process where Ray runs. Ray's C++ threads (gRPC, its core worker) may hold locks at
    the moment of a fork, and a forked child then blocks on them for good; a ``forkserver`` starts
    from a clean interpreter instead, at the price of importing the stage's modules once per worker."""
    return multiprocessing.get_context("forkserver") if _on_ray() else None


# ------------------------------------------------------------------------------------------- on Ray

def _on_ray() -> bool:
    """This process is connected to a Ray cluster (a Ray task, or a driver). Ray can only be
    initialised where it was imported, so this never imports it (the local path stays Ray-free)."""
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())
