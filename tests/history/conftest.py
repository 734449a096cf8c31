"""Fixtures of the history commands' tests (``pipeline runs``, ``logs``, ``diff``)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from history_helpers import SPEC

import tunepipe.records


class _Stamps:
    """``time`` for tunepipe.records whose ``strftime`` moves one second per call: a run id is the
    start second and the process id, so runs made in one test process within a second would share
    one (and one record file). Everything else is the real ``time``."""

    def __init__(self) -> None:
        self.calls = 0

    def strftime(self, fmt: str, _t: Any = None) -> str:
        self.calls += 1
        return time.strftime(fmt, time.gmtime(time.time() + self.calls))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture(autouse=True)
def _distinct_run_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tunepipe.records, "time", _Stamps())


@pytest.fixture
def hist(project):
    """A project with SPEC and its input file, not run yet."""
    project.write("data/in.txt", "in")
    project.spec(SPEC)
    return project
