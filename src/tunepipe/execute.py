"""Run one stage: lock its key, run the plugin in private folders, publish, record.

This is the worker side: it takes a :class:`StageJob` of plain data, so an executor can run it
in this process (threads) or ship it elsewhere (a cluster worker) with the cache on shared storage.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tunepipe.cache.diskerrors import describe as describe_disk_error
from tunepipe.cache.diskerrors import is_disk_error
from tunepipe.cache.store import Store, fetch_intact
from tunepipe.crash import crashpoint
from tunepipe.errors import TunepipeError, UserError
from tunepipe.plugins import Artifact, Cancelled, StageContext
from tunepipe.redact import redact
from tunepipe.registry import Registry
from tunepipe.status import Status


class ArtifactRef(NamedTuple):
    """An input :class:`~tunepipe.plugins.Artifact` as plain data, for a worker that may be on
    another node. ``stored``: a published stage output, which that worker finds by ``digest`` in
    its store (``path`` is where the driver sees it)."""

    path: str
    digest: str
    name: str
    stored: bool = False

    @classmethod
    def of(cls, art: Artifact, store: Store) -> ArtifactRef:
        """The artifact as a worker receives it: stored when its path is its object in ``store``."""
        return cls(str(art.path), art.digest, art.name, art.path == store.object_path(art.digest))

    def artifact(self, store: Store) -> Artifact:
        """The artifact where this worker sees it: a stored one is fetched first (an s3:// cache)."""
        path = fetch_intact(store, self.digest, self.name) if self.stored else Path(self.path)
        return Artifact(path, self.digest, self.name)


@dataclass
class StageJob:
    """Everything needed to run one stage, as plain data."""

    stage: str
    uses: str
    key: str
    parts: dict[str, Any]
    params: dict[str, Any]
    inputs: dict[str, list[ArtifactRef]]
    multiple: dict[str, bool]
    outputs: list[str]
    log_path: str
    threads: int = 1
    force: bool = False  # run even if the key is already recorded (--force)
    engine: str = "local"  # where it runs: "local" (this machine) or "ray" (a Ray task); see StageContext
    resources: dict[str, Any] = field(default_factory=dict)  # what the stage asks for: cpus, gpus, memory


@dataclass
class StageResult:
    """What a worker says of the stage it ran; the runner makes it a ``StageOutcome``."""

    stage: str
    status: Status  # done | cached (another process computed it meanwhile) | failed | cancelled
    outputs: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    duration: float = 0.0
    error: str = ""
    user_error: bool = False
    log_path: str = ""
    node: str = ""  # which node ran it (a Ray node id; empty on the local executor)
    node_ip: str = ""
    pid: int = 0  # the worker process that ran it (on Ray: one per stage; its logs are Ray's worker-*-PID.*)
    attempts: int = 1  # how many times it was started (a cluster retries a task whose node died)
    lost_on: list[str] = field(default_factory=list)  # nodes of earlier attempts, lost mid-stage

    def placement(self) -> dict[str, Any]:
        """Where a cluster ran it, for the run record (nothing on the local executor)."""
        if not self.node:
            return {}
        out: dict[str, Any] = {"node": self.node, "node_ip": self.node_ip, "pid": self.pid,
                               "attempts": self.attempts}
        if self.lost_on:
            out["lost_on"] = self.lost_on
        return out


class _Redacting(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _QuietFileHandler(logging.FileHandler):
    """A stage log that cannot be written (a full disk) is lost quietly: the stage's own result
    says what went wrong, and logging's traceback on stderr would only hide it."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        pass


def _stage_logger(job: StageJob) -> tuple[logging.Logger, logging.Handler]:
    Path(job.log_path).parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"tunepipe.stage.{job.stage}.{job.key[:12]}.{threading.get_ident()}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = _QuietFileHandler(job.log_path, encoding="utf-8")
    handler.setFormatter(_Redacting("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger, handler


def _file_identity(inputs: dict[str, list[ArtifactRef]]) -> dict[str, tuple[int, int]]:
    out = {}
    for refs in inputs.values():
        for path, _, _, stored in refs:
            p = Path(path)
            if not stored and p.is_file():
                st = p.stat()
                out[path] = (st.st_size, st.st_mtime_ns)
    return out


def execute(job: StageJob, store: Store, registry: Registry, cancel: threading.Event,
            progress: Callable[[str], None], say: Callable[[str], None]) -> StageResult:
    """Run ``job`` unless another process already has (then reuse its result). A cache folder
    that refuses the stage's lock, staging or log (read-only, full) fails the stage as a user error."""
    try:
        return _execute(job, store, registry, cancel, progress, say)
    except OSError as e:
        if not is_disk_error(e):
            raise
        return StageResult(job.stage, Status.FAILED, error=describe_disk_error(e, "preparing the stage", store.root),
                           user_error=True)


def _execute(job: StageJob, store: Store, registry: Registry, cancel: threading.Event,
             progress: Callable[[str], None], say: Callable[[str], None]) -> StageResult:
    lock = store.lock(job.key, f"stage '{job.stage}'", say)
    lock.acquire()
    try:
        rec = None if job.force else store.record(job.key)
        if rec is not None:  # another process computed it while we waited for the lock
            return StageResult(job.stage, Status.CACHED, rec["outputs"], rec.get("summary", {}), log_path="")
        store.clear_staging(job.key)
        return _run_locked(job, store, registry, cancel, progress, say)
    finally:
        lock.release()


def _run_locked(job: StageJob, store: Store, registry: Registry, cancel: threading.Event,
                progress: Callable[[str], None], say: Callable[[str], None]) -> StageResult:
    staging = store.staging(job.key)
    outputs = {name: staging / name for name in job.outputs}
    for folder in outputs.values():
        folder.mkdir()
    logger, handler = _stage_logger(job)
    ctx = StageContext(stage=job.stage, key=job.key, outputs=outputs, scratch=store.scratch(job.key),
                       log=logger, threads=job.threads, _cancel=cancel, _progress=progress,
                       _shared=store.shared, _say=lambda text: say(f"{job.stage}: {redact(text)}"),
                       engine=job.engine)
    before = _file_identity(job.inputs)
    started = time.time()
    t0 = time.monotonic()
    result = StageResult(job.stage, Status.FAILED, log_path=job.log_path)
    logger.info("stage %s (%s) key %s", job.stage, job.uses, job.key)
    try:
        inputs: dict[str, Any] = {}  # stored inputs may need a download (an s3:// cache): a failure is the stage's
        for name, refs in job.inputs.items():
            arts = [ref.artifact(store) for ref in refs]
            inputs[name] = arts if job.multiple.get(name) else (arts[0] if arts else None)
        plugin = registry.load(job.uses).plugin
        summary = plugin.run(ctx, inputs, dict(job.params)) or {}
        if not isinstance(summary, dict):
            raise TypeError(f"run() must return a dict summary, not {type(summary).__name__}")
        summary = _json_summary(summary)
        changed = [p for p, ident in before.items() if _identity_now(p) != ident]
        if changed:
            raise UserError(f"the input file {changed[0]} changed while the stage ran; run again")
        crashpoint("after-plugin")
        digests = {name: store.publish(folder) for name, folder in outputs.items()}
        crashpoint("after-publish")
        duration = time.monotonic() - t0
        store.put_record(job.key, {
            "key": job.key, "stage": job.stage, "parts": job.parts, "outputs": digests, "summary": summary,
            "duration_s": round(duration, 4), "created": started})
        crashpoint("after-record")
        store.drop_scratch(job.key)
        logger.info("done in %.3fs: %s", duration, json.dumps(summary))
        result = StageResult(job.stage, Status.DONE, digests, summary, duration, log_path=job.log_path)
    except Cancelled as e:
        result.status, result.error = Status.CANCELLED, str(e)
    except TunepipeError as e:
        logger.error("%s", e)
        result.error, result.user_error = redact(str(e)), isinstance(e, UserError)
    except Exception as e:  # the plugin's bug: keep the traceback in the log, show one line
        logger.error("%s", traceback.format_exc())
        if is_disk_error(e):  # a full or read-only cache while the stage wrote: say which and how to fix it
            result.error = describe_disk_error(e, "running the stage", store.root)
        else:
            result.error = redact(f"{type(e).__name__}: {e}")
    finally:
        handler.close()
        logger.removeHandler(handler)
        shutil.rmtree(staging, ignore_errors=True)
    result.duration = time.monotonic() - t0
    return result


def _identity_now(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _json_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary as plain JSON, secrets redacted, in the plugin's own key order (it shows it)."""
    try:
        text = json.dumps(summary, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"the summary returned by run() is not JSON: {e}") from None
    return json.loads(redact(text))
