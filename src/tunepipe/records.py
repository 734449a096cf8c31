"""Run records and pipeline state, both written atomically.

* The *state* of a pipeline maps each stage to the key of its last successful run (and the
  operational values it ran with, which are not in the key): it is what ``status`` compares
  against and what ``--explain`` diffs with.
* A *run record* is one JSON file per ``pipeline run``: per stage the key, its parts, status,
  duration, output digests, the reasons it ran, and the plugin's summary. It is rewritten after
  every stage, so a crash keeps everything up to the last finished stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from tunepipe.cache.atomic import write_json
from tunepipe.status import Status


def pipeline_id(spec_path: Path, name: str) -> str:
    digest = hashlib.sha256(str(spec_path.absolute()).encode()).hexdigest()[:10]
    return f"{name}-{digest}"


class PipelineState:
    """The last successful key of each stage of one pipeline (one file per pipeline)."""

    def __init__(self, cache_root: Path, spec_path: Path, name: str) -> None:
        self.file = cache_root / "state" / f"{pipeline_id(spec_path, name)}.json"
        self.spec_path = spec_path
        self.name = name

    def read(self) -> dict[str, Any]:
        try:
            return json.loads(self.file.read_text(encoding="utf-8")).get("stages", {})
        except (OSError, ValueError):
            return {}

    def last_key(self, stage: str) -> str | None:
        return self.read().get(stage, {}).get("key")

    def update(self, stage: str, key: str, operational: dict[str, Any] | None = None) -> str:
        """Remember ``key`` (and the operational values it last ran or was reused with). Returns why
        it could not (a read-only or full cache: the state is a convenience, the run goes on), or ""."""
        from filelock import FileLock

        try:
            with FileLock(str(self.file) + ".lock"):
                stages = self.read()
                stages[stage] = {"key": key, "at": time.time(), "operational": operational or {}}
                write_json(self.file, {"spec": str(self.spec_path), "name": self.name, "stages": stages})
        except OSError as e:
            from tunepipe.cache.diskerrors import describe, is_disk_error

            if not is_disk_error(e):
                raise
            return describe(e, "remembering the stage's latest result")
        return ""


def all_state_keys(cache_root: Path) -> set[str]:
    """Keys any pipeline's state still points at (what ``cache gc`` keeps)."""
    keys: set[str] = set()
    for f in (cache_root / "state").glob("*.json"):
        try:
            keys.update(s["key"] for s in json.loads(f.read_text(encoding="utf-8"))["stages"].values())
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return keys


class RunRecord:
    """The record of one ``pipeline run``; safe to update from several threads."""

    def __init__(self, cache_root: Path, spec_path: Path, name: str, argv: list[str]) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.run_id = f"{stamp}-{os.getpid()}"
        folder = cache_root / "runs" / pipeline_id(spec_path, name)
        with contextlib.suppress(OSError):  # a read-only cache: _write says why
            folder.mkdir(parents=True, exist_ok=True)
        self.file = folder / f"{self.run_id}.json"
        self.log_dir = folder / self.run_id
        self.write_error = ""
        self._lock = threading.Lock()
        self.data: dict[str, Any] = {
            "run_id": self.run_id, "pipeline": name, "spec": str(spec_path), "argv": argv,
            "started": time.time(), "finished": None, "status": Status.RUNNING, "stages": {},
        }
        self._write()

    def log_path(self, stage: str) -> Path:
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            from tunepipe.cache.diskerrors import cache_write_error, is_disk_error

            if not is_disk_error(e):
                raise
            raise cache_write_error(e, f"starting stage '{stage}', which must run") from None
        return self.log_dir / f"{stage}.log"

    def stage(self, name: str, **fields: Any) -> None:
        with self._lock:
            self.data["stages"].setdefault(name, {}).update(fields)
            self._write()

    def finish(self, status: Status) -> None:
        with self._lock:
            self.data["finished"] = time.time()
            self.data["status"] = status
            self._write()

    def _write(self) -> None:
        """Write the record; a cache that refuses the write (read-only, full) costs the record, not
        the run: ``write_error`` says why, and the runner tells the user once."""
        if self.write_error:
            return
        try:
            write_json(self.file, self.data)
        except OSError as e:
            from tunepipe.cache.diskerrors import describe, is_disk_error

            if not is_disk_error(e):
                raise
            self.write_error = describe(e, "writing the run record")
