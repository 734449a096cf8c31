"""The local process pool's guard against CPython's broken-pool race (tunepipe.data.pool)."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import InvalidStateError
from concurrent.futures.process import _ExecutorManagerThread  # type: ignore[attr-defined]

import pytest

from tunepipe.data import pool


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="fixed in CPython 3.12 (gh-107219)")
def test_only_the_manager_threads_invalid_state_error_is_kept_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[type[BaseException]] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_type))
    monkeypatch.setattr(pool, "_QUIETED", False)
    with pool.process_pool(1, None, ()) as (executor, _):
        assert executor.submit(abs, -3).result() == 3
    manager = object.__new__(_ExecutorManagerThread)  # what the race's traceback names (no thread started)
    other = threading.Thread(target=print)

    def report(exc: BaseException, thread: threading.Thread) -> None:
        threading.excepthook(threading.ExceptHookArgs([type(exc), exc, None, thread]))

    report(InvalidStateError("CANCELLED"), manager)      # the race: quiet
    report(InvalidStateError("CANCELLED"), other)        # the same error elsewhere: reported
    report(RuntimeError("a real failure"), manager)      # another error of the manager: reported
    assert seen == [InvalidStateError, RuntimeError]
