"""Read the run records of one pipeline, newest first, whatever tunepipe version wrote them.

A pipeline's records live in ``<cache>/runs/<name>-<hash>/<run_id>.json`` (:class:`tunepipe.records.
RunRecord`), ``<hash>`` of the pipeline file's path: the folders are found from the path alone, so
no plugin is loaded, nothing is validated, and a pipeline that was renamed keeps its history. A
record that cannot be read (cut short, not JSON, not an object) is skipped and named, never fatal;
a field an older version did not write reads as unknown.
"""

from __future__ import annotations

import calendar
import functools
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunepipe.errors import UserError
from tunepipe.history.ids import match, short_ids
from tunepipe.status import RUN_ENDS, Status


@dataclass(frozen=True, eq=False)
class Run:
    """One run record as read; every accessor tolerates a missing or mistyped field."""

    run_id: str
    file: Path
    record: Mapping[str, Any]
    status: str  # a Status: ok | failed | interrupted | running | crashed (running, its process gone) | unknown
    started: float | None
    short: str = ""  # the unique id prefix shown to people (see tunepipe.history.ids)

    @property
    def finished(self) -> float | None:
        return _number(self.record.get("finished"))

    @functools.cached_property
    def stages(self) -> dict[str, Mapping[str, Any]]:
        stages = self.record.get("stages")
        if not isinstance(stages, dict):
            return {}
        return {str(k): v for k, v in stages.items() if isinstance(v, dict)}

    def stage_status(self, stage: str) -> str:
        return str(self.stages.get(stage, {}).get("status", Status.UNKNOWN))

    def parts(self, stage: str) -> Mapping[str, Any] | None:
        parts = self.stages.get(stage, {}).get("parts")
        return parts if isinstance(parts, dict) else None

    def log_path(self, stage: str) -> Path:
        """Where the runner writes the stage's log (the record's own ``log`` field names it on failure)."""
        given = self.stages.get(stage, {}).get("log")
        standard = self.file.parent / self.run_id / f"{stage}.log"
        if isinstance(given, str) and given and not standard.is_file():
            return Path(given)
        return standard

    @property
    def pid(self) -> int | None:
        tail = self.run_id.rpartition("-")[2]
        return int(tail) if tail.isdigit() else None


@dataclass(frozen=True)
class Unreadable:
    file: Path
    why: str


@dataclass
class History:
    """The runs of one pipeline file (newest first) and the records that could not be read."""

    spec: str  # the pipeline file as the user named it
    cache_root: Path
    runs: list[Run] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)

    def require_runs(self) -> list[Run]:
        if not self.runs:
            raise UserError(f"no runs of {self.spec} are recorded in {self.cache_root} yet: "
                            f"run `pipeline run {self.spec}` first")
        return self.runs

    def run(self, given: str) -> Run:
        """The run a user names by a unique prefix of its short id or run id."""
        return match(self.require_runs(), given, self.spec)


def path_hash(spec_path: Path) -> str:
    """The ``<hash>`` of :func:`tunepipe.records.pipeline_id`: of the pipeline file's absolute path."""
    return hashlib.sha256(str(spec_path.absolute()).encode()).hexdigest()[:10]


def runs_folders(cache_root: Path, spec_path: Path) -> list[Path]:
    """The record folders of the pipeline file (one per name it has had)."""
    return sorted(p for p in (cache_root / "runs").glob(f"*-{path_hash(spec_path)}") if p.is_dir())


def read_history(cache_root: Path, spec_path: Path, display: str) -> History:
    """Every run of the pipeline file in the cache, newest first, with unique short ids."""
    history = History(display, cache_root)
    for folder in runs_folders(cache_root, spec_path):
        for file in folder.glob("*.json"):
            found = read_run(file)
            (history.runs if isinstance(found, Run) else history.unreadable).append(found)
    history.runs.sort(key=lambda r: (r.started or 0.0, r.run_id), reverse=True)
    ids = short_ids([r.run_id for r in history.runs])
    history.runs = [Run(r.run_id, r.file, r.record, r.status, r.started, ids[r.run_id]) for r in history.runs]
    return history


def read_run(file: Path) -> Run | Unreadable:
    try:
        raw = file.read_bytes()
    except OSError as e:
        return Unreadable(file, f"cannot be read ({e.strerror or e})")
    try:
        data = json.loads(raw)
    except ValueError as e:  # UnicodeDecodeError included
        return Unreadable(file, f"is not valid JSON (cut short?): {e}" if raw.strip() else "is empty")
    if not isinstance(data, dict):
        return Unreadable(file, f"holds a JSON {type(data).__name__}, not a run record")
    run_id = str(data.get("run_id") or file.stem)
    started = _number(data.get("started")) or _stamp_time(run_id)
    return Run(run_id, file, data, _status(data, run_id), started)


def _status(data: Mapping[str, Any], run_id: str) -> str:
    from tunepipe.procs import alive

    status = data.get("status")
    if status in RUN_ENDS:
        return str(status)
    if status == Status.RUNNING:
        tail = run_id.rpartition("-")[2]
        return Status.RUNNING if not tail.isdigit() or alive(int(tail)) else Status.CRASHED
    return str(status) if isinstance(status, str) and status else Status.UNKNOWN


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _stamp_time(run_id: str) -> float | None:
    """The start time a run id carries (``20261207T051813-15650``, UTC), for records without one."""
    try:
        return float(calendar.timegm(time.strptime(run_id.partition("-")[0], "%Y%m%dT%H%M%S")))
    except ValueError:
        return None


def open_history(spec_file: str, cache_dir: str | None) -> History:
    """The history of the pipeline file ``spec_file`` in its cache (as ``pipeline run`` finds it:
    ``--cache-dir``, ``$TUNEPIPE_CACHE``, else ``.tunepipe`` beside the file). Creates nothing."""
    from tunepipe.session import cache_location

    location = cache_location(Path(spec_file), cache_dir)
    if "://" in location:  # object storage: the records are in this machine's working cache
        from tunepipe.cache.remote_layout import default_local_root

        root = default_local_root(location).absolute()
    else:
        root = Path(location).absolute()
    history = read_history(root, Path(spec_file), spec_file)
    if not history.runs and not history.unreadable and not Path(spec_file).is_file():
        raise UserError(f"{spec_file}: no such pipeline file, and no runs of it are recorded in {root}")
    return history
