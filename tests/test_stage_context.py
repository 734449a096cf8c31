"""StageContext.map: the ordered parallel map the framework gives a stage (threads, processes and
Ray stay out of the stage's code)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tunepipe.plugins import StageContext


def pid_and_square(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


def context(tmp_path: Path, threads: int) -> StageContext:
    return StageContext(stage="s", key="k", outputs={}, scratch=tmp_path, log=logging.getLogger("t"), threads=threads)


@pytest.mark.parametrize("threads", [1, 2])
def test_map_returns_results_in_input_order_on_the_stages_share_of_the_cores(tmp_path: Path, threads: int) -> None:
    ctx = context(tmp_path, threads)
    got = list(ctx.map(pid_and_square, range(200)))
    assert ctx.workers == threads
    assert [r for _, r in got] == [x * x for x in range(200)]
    assert ({p for p, _ in got} == {os.getpid()}) == (threads == 1)  # one thread: no worker process


def test_map_serial_runs_in_this_process(tmp_path: Path) -> None:
    got = list(context(tmp_path, 2).map(pid_and_square, range(20), serial=True, local_files=True))
    assert {p for p, _ in got} == {os.getpid()} and [r for _, r in got] == [x * x for x in range(20)]
