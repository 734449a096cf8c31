"""The line between a ``workers: N`` stage and its Ray Train workers (:mod:`tunepipe.hf.distributed`).

Ray Train gives the coordinator no channel to its workers but the final result, so a small actor on
the stage's node, :class:`Link`, carries the rest: rank 0's progress notes, log lines and messages,
a cancel either way, a user error, and the stage node's files for workers on nodes that cannot see
them (:mod:`tunepipe.hf.node_files`). :class:`Relay` shows what arrives on the stage;
:func:`worker_ctx` gives each worker a StageContext that talks through it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunepipe.plugins import StageContext

POLL_SECONDS = 0.3  # the coordinator's pace for progress notes, log lines and a cancel


# --- the coordinator's end ----------------------------------------------------------------------

class Link:
    """The stage's end of a run, an actor on the stage's node: progress notes, log lines and
    messages from rank 0, a stop request from the stage, a user error or a cancel from the
    workers, and the stage node's files for workers on other nodes."""

    def __init__(self) -> None:
        self._note: str | None = None
        self._lines: list[tuple[int, str]] = []
        self._says: list[str] = []
        self._stop = False
        self._error: str | None = None
        self._cancelled = False

    def note(self, text: str) -> None:
        self._note = text

    def line(self, level: int, text: str) -> None:
        self._lines.append((level, text))

    def say(self, text: str) -> None:
        self._says.append(text)

    def fail(self, message: str) -> None:
        if self._error is None:
            self._error = message

    def cancelled(self) -> None:
        self._cancelled = True

    def stop(self) -> None:
        self._stop = True

    def stopping(self) -> bool:
        return self._stop

    def drain(self) -> dict[str, Any]:
        out = {"note": self._note, "lines": self._lines, "says": self._says, "error": self._error,
               "cancelled": self._cancelled}
        self._note, self._lines, self._says = None, [], []
        return out

    def files(self, origin: str) -> list[tuple[str, int]]:
        """(path relative to ``origin``, size) of a folder's files; ("", size) for a file."""
        root = Path(origin)
        if root.is_file():
            return [("", root.stat().st_size)]
        return [(p.relative_to(root).as_posix(), p.stat().st_size) for p in sorted(root.rglob("*")) if p.is_file()]

    def read(self, path: str, offset: int, size: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)


def start_link(ray: Any) -> Any:
    """A Link on this node (it serves this node's files), holding no CPU."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(num_cpus=0, max_restarts=0)(Link)
    return actor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()


class Relay(threading.Thread):
    """Shows rank 0's progress and log lines on the stage while Ray Train runs, and passes a
    cancel of the stage on to the workers."""

    def __init__(self, ray: Any, ctx: StageContext, link: Any) -> None:
        super().__init__(name=f"tunepipe-ray-train-{ctx.stage}", daemon=True)
        self.ray, self.ctx, self.link = ray, ctx, link
        self.done = threading.Event()
        self.error: str | None = None
        self.cancelled = False
        self.asked_stop = False

    def run(self) -> None:
        while not self.done.wait(POLL_SECONDS):
            self.pump()

    def pump(self) -> None:
        try:
            got = self.ray.get(self.link.drain.remote(), timeout=60)
        except Exception as e:  # the link is gone (node lost): the run's own error says more
            self.ctx.log.warning("lost the Ray Train link: %s", e)
            self.done.set()
            return
        for level, text in got["lines"]:
            self.ctx.log.log(level, "%s", text)
        for text in got["says"]:
            self.ctx.say(text)
        if got["note"]:
            self.ctx.progress(got["note"])
        self.error, self.cancelled = got["error"], got["cancelled"]
        if self.ctx.cancelled and not self.asked_stop:
            self.asked_stop = True
            self.link.stop.remote()

    def close(self) -> None:
        self.done.set()
        self.join()
        self.pump()  # what came after the last poll


# --- the workers' end ---------------------------------------------------------------------------

class _LinkHandler(logging.Handler):
    """Rank 0's log lines, sent to the stage's log through the link."""

    def __init__(self, link: Any) -> None:
        super().__init__(logging.INFO)
        self.link = link

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.link.line.remote(record.levelno, record.getMessage())
        except Exception:  # logging must never break training
            self.handleError(record)


class _WorkerContext(StageContext):
    """A worker's StageContext: what it says goes to the stage, which logs it (once)."""

    def say(self, text: str) -> None:
        if self._say is not None:
            self._say(text)


def worker_ctx(config: Mapping[str, Any], rank: int, scratch: Path, cancel: threading.Event) -> StageContext:
    """A StageContext for a worker: rank 0 talks to the stage through the link, the others are quiet."""
    link = config["link"]
    log = logging.getLogger(f"tunepipe.ray-train.{config['stage']}.{config['key'][:12]}.{rank}")
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
    log.addHandler(_LinkHandler(link) if rank == 0 else logging.NullHandler())
    talk = rank == 0
    return _WorkerContext(stage=config["stage"], key=config["key"], outputs={}, scratch=scratch, log=log,
                          threads=config["threads"], engine="ray", _cancel=cancel,
                          _progress=(lambda text: link.note.remote(text)) if talk else None,
                          _say=(lambda text: link.say.remote(text)) if talk else None)
