"""The rows of ``pipeline runs``: per run its outcome, stage counts, what changed since each
stage's previous run, and the headline metrics of its evaluate stages."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tunepipe.history.changes import Change, since_previous
from tunepipe.history.reports import Reports
from tunepipe.history.runs import History, Run
from tunepipe.status import Status

COUNTED = (Status.DONE, Status.CACHED, Status.FAILED)


@dataclass(frozen=True)
class Headline:
    """One metric of one evaluate stage: the base model's value and the tuned one's."""

    stage: str
    metric: str
    base: float | None
    tuned: float | None
    failed: bool = False  # from the report a failed stage kept in its scratch folder


@dataclass(frozen=True)
class RunRow:
    run: Run
    duration: float | None
    counts: dict[str, int]  # done, cached, failed, then any other stage status seen
    failed: list[str]
    changes: list[Change] | None  # None: the first run, nothing to compare with
    metrics: list[Headline] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        r = self.run
        return {"id": r.short, "run_id": r.run_id, "started": r.started, "finished": r.finished,
                "duration_s": None if self.duration is None else round(self.duration, 3), "status": r.status,
                "argv": r.record.get("argv"), "stages": self.counts, "failed": self.failed,
                "changes": None if self.changes is None else [c.to_json() for c in self.changes],
                "metrics": [{"stage": h.stage, "metric": h.metric, "base": h.base, "tuned": h.tuned,
                             "failed_stage": h.failed} for h in self.metrics],
                "record": str(r.file)}


def list_runs(history: History, limit: int | None) -> list[RunRow]:
    """The newest ``limit`` runs (all with None) as rows."""
    runs = history.require_runs()[:limit] if limit else history.require_runs()
    changes = since_previous(history.runs, {r.run_id for r in runs})
    reports = Reports(history.cache_root)
    rows = []
    for run in runs:
        statuses = Counter(run.stage_status(s) for s in run.stages)
        counts = {k: statuses.pop(k, 0) for k in COUNTED} | dict(statuses)
        failed = [s for s in run.stages if run.stage_status(s) == Status.FAILED]
        metrics = [Headline(stage, m, rep.value(m, "base"), rep.value(m), rep.from_scratch)
                   for stage, rep in reports.of(run).items() for m in rep.headline()]
        rows.append(RunRow(run, duration(run), counts, failed, changes.get(run.run_id), metrics))
    return rows


def duration(run: Run) -> float | None:
    """How long the run took; for a running one, so far; unknown for one that never finished."""
    if run.started is None:
        return None
    if run.finished is not None:
        return max(0.0, run.finished - run.started)
    return max(0.0, time.time() - run.started) if run.status == Status.RUNNING else None
