"""Find a stage's log in the run records and print or follow it. Only stages that ran have one:
a stage reused from the cache writes none, so the latest log may be several runs back."""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from tunepipe.errors import UserError
from tunepipe.history.ids import short_ids
from tunepipe.history.runs import History, Run, read_run, runs_folders
from tunepipe.status import FINISHED, NOT_SUCCEEDED, Status

POLL_S = 0.25
STAGE_DONE = FINISHED | NOT_SUCCEEDED  # the stage ended, whatever became of it
CHUNK = 1 << 16


@dataclass(frozen=True)
class StageLog:
    run: Run
    stage: str
    path: Path


def find_log(history: History, stage: str, given: str | None = None) -> StageLog:
    """The stage's log in run ``given``, else in the newest run that has one."""
    runs = history.require_runs()
    check_stage(history, stage)
    if given is not None:
        run = history.run(given)
        if not run.log_path(stage).is_file():
            raise UserError(f"stage '{stage}' has no log in run {run.short}: {_why_none(run, stage)}"
                            f"{_latest_hint(history, stage)}")
        return StageLog(run, stage, run.log_path(stage))
    for run in runs:
        if run.log_path(stage).is_file():
            return StageLog(run, stage, run.log_path(stage))
    raise UserError(f"stage '{stage}' has no log in any of the {len(runs)} recorded runs of {history.spec}: "
                    "a stage reused from the cache writes none; `pipeline run "
                    f"{history.spec} --force={stage}` reruns it")


def latest_log(cache_root: Path, spec_path: Path, stage: str) -> StageLog | None:
    """For ``pipeline show``: the stage's newest log, or None. Cheap on a long history: records are
    taken newest first by file name (the run's start second) and only the one with the log is read."""
    files = sorted((f for d in runs_folders(cache_root, spec_path) for f in d.glob("*.json")),
                   key=lambda f: f.stem, reverse=True)
    ids = short_ids(f.stem for f in files)
    for file in files:
        log = file.parent / file.stem / f"{stage}.log"
        if log.is_file() and isinstance(run := read_run(file), Run):
            return StageLog(replace(run, short=ids[file.stem]), stage, log)
    return None


def check_stage(history: History, stage: str) -> None:
    """A user error unless some run has the stage (a matrix stage as written names its branches)."""
    names = list(dict.fromkeys(n for r in history.runs for n in r.stages))
    if stage in names:
        return
    branches = [n for n in names if n.startswith(stage + "@")]
    if branches:
        raise UserError(f"'{stage}' is a matrix stage with {len(branches)} branches: name one of {', '.join(branches)}")
    close = difflib.get_close_matches(stage, names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UserError(f"no recorded run of {history.spec} has a stage '{stage}'.{hint} Stages: {', '.join(names)}")


def follow(log: StageLog, out: BinaryIO, poll: float = POLL_S, say: Callable[[str], None] = lambda _: None) -> str:
    """Copy the log to ``out`` as it grows, until the stage or its run ends (or its process is
    gone); the log may not exist yet. Returns the stage's final status in the record."""
    pos, said = 0, False
    while True:
        now = read_run(log.run.file)
        run = now if isinstance(now, Run) else log.run
        status = run.stage_status(log.stage)
        over = run.status != Status.RUNNING or status in STAGE_DONE
        if log.path.is_file():
            pos = _copy(log.path, pos, out)
        elif not (said or over):
            say(f"waiting for stage '{log.stage}' to start in run {log.run.short}")
            said = True
        if over:
            return status
        time.sleep(poll)


def copy_all(path: Path, out: BinaryIO) -> None:
    _copy(path, 0, out)


def _copy(path: Path, pos: int, out: BinaryIO) -> int:
    with open(path, "rb") as f:
        f.seek(pos)
        while chunk := f.read(CHUNK):
            out.write(chunk)
            pos += len(chunk)
    out.flush()
    return pos


def _why_none(run: Run, stage: str) -> str:
    status = run.stage_status(stage)
    if stage not in run.stages:
        return "the stage was not part of that run"
    if status == Status.CACHED:
        return "it was reused from the cache in that run (a cached stage writes no log)"
    return f"its status there is {status}"


def _latest_hint(history: History, stage: str) -> str:
    newest = next((r for r in history.runs if r.log_path(stage).is_file()), None)
    return f"; its latest log is in run {newest.short}" if newest else ""


def to_follow(history: History, stage: str, given: str | None) -> tuple[StageLog, bool]:
    """The log ``-f`` follows, and whether its run is still going: the given run, else the newest
    one when it is running (its stage may not have started yet), else the latest log as without -f."""
    run = history.run(given) if given is not None else history.require_runs()[0]
    if run.status != Status.RUNNING:
        return find_log(history, stage, given), False
    if stage not in run.stages and any(n.startswith(stage + "@") for r in history.runs for n in r.stages):
        check_stage(history, stage)  # a matrix stage as written: the error names its branches
    return StageLog(run, stage, run.log_path(stage)), True
