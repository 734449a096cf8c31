"""How a ready stage is run. The runner only submits :class:`StageJob` s and waits on futures.

:class:`LocalExecutor` runs stages on threads of this process (``-j N``). A cluster executor
(e.g. Ray tasks) implements the same two methods and runs :func:`tunepipe.execute.execute` on
a worker, with the cache on shared storage.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from tunepipe.cache.store import Store
from tunepipe.execute import StageJob, StageResult, execute
from tunepipe.registry import Registry


class Executor(Protocol):
    def submit(self, job: StageJob) -> Future[StageResult]: ...
    def shutdown(self) -> None: ...


class LocalExecutor:
    """Runs up to ``jobs`` stages at once on threads."""

    def __init__(self, jobs: int, store: Store, registry: Registry, cancel: threading.Event,
                 progress: Callable[[str, str], None], say: Callable[[str], None]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="tunepipe-stage")
        self.store, self.registry, self.cancel = store, registry, cancel
        self.progress, self.say = progress, say

    def submit(self, job: StageJob) -> Future[StageResult]:
        return self._pool.submit(execute, job, self.store, self.registry, self.cancel,
                                 lambda note, s=job.stage: self.progress(s, note), self.say)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
