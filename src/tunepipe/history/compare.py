"""``pipeline compare``, as data: one row per branch of a matrix sweep with its swept values, its
status, the tuned metrics (with intervals) of the evaluate branch it feeds and the losses of its
train artifact, sorted by one metric; and whether the leader is really ahead
(:mod:`tunepipe.history.leader`).

Each stage's *latest* entry in the run records counts (newest run first), so a branch rerun alone
shows its new result, and one that failed last shows as failed even if an older result exists.
Reads records and artifacts only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunepipe.errors import UserError, without_stage
from tunepipe.history import training as T
from tunepipe.history.branches import NOT_RUN, OK, TRAINING, Cell, Column, Row
from tunepipe.history.leader import BEST, TIED, Verdict, judge
from tunepipe.history.reports import Reports
from tunepipe.history.runs import History, Run
from tunepipe.history.sweep import Sweep, find_sweep
from tunepipe.history.workspace import stale_reasons
from tunepipe.spec.model import Pipeline
from tunepipe.status import FINISHED, Status


@dataclass(frozen=True)
class Latest:
    """A stage's newest entry in the run records."""

    run: Run
    status: str
    name: str

    @property
    def entry(self) -> Mapping[str, Any]:
        return self.run.stages[self.name]


@dataclass
class SweepComparison:
    pipeline: str
    sweep: Sweep
    columns: list[Column]
    rows: list[Row]
    sort: Column | None
    verdict: Verdict
    not_in_pipeline: list[str] = field(default_factory=list)  # recorded branches the pipeline no longer has

    def to_json(self) -> dict[str, Any]:
        s = self.sort
        return {"pipeline": self.pipeline, "stage": self.sweep.stage, "keys": list(self.sweep.keys),
                "sort": None if s is None else {"column": s.name, "descending": s.higher_is_better is not False},
                "columns": [asdict(c) for c in self.columns], "rows": [r.to_json() for r in self.rows],
                "verdict": asdict(self.verdict), "not_in_pipeline": self.not_in_pipeline}


def compare_sweep(pipeline: Pipeline, history: History, stage: str | None, sort: str | None,
                  workspace: Run | None = None) -> SweepComparison:
    """The comparison of the matrix ``stage``'s branches, sorted by ``sort`` (default: see :func:`pick_sort`).
    ``workspace`` (:func:`tunepipe.history.workspace.plan_workspace`): marks the branches whose recorded
    results the pipeline as it is now would not reuse."""
    sweep = find_sweep(pipeline, stage, history.spec)
    names = [n for chain in sweep.chains.values() for n in chain]
    latest = latest_entries(history.require_runs(), names)
    if not latest:
        n = len(history.runs)
        where = f"the recorded run of {history.spec}" if n == 1 else f"any of the {n} recorded runs of {history.spec}"
        raise UserError(f"no branch of '{sweep.stage}' is in {where}: run `pipeline run {history.spec} "
                        f"{sweep.stage}` first")
    reports = Reports(history.cache_root)
    rows = [build_row(sweep, b, latest, reports, history.cache_root) for b in sweep.branches]
    if workspace is not None:
        for r in rows:
            done = [n for n in sweep.chains[r.branch] if n in latest and latest[n].status in FINISHED]
            r.stale = stale_reasons(workspace, done)
    columns = columns_of(rows)
    column = pick_sort(columns, rows, sort)
    rows = sort_rows(rows, column)
    verdict = judge(rows, column)
    if verdict.kind in (BEST, TIED):
        for r in rows:
            r.mark = verdict.kind if r.branch in verdict.leaders else ""
    others = sorted({n for run in history.runs for n in run.stages if n.startswith(sweep.stage + "@")}
                    - set(sweep.branches))
    return SweepComparison(history.spec, sweep, columns, rows, column, verdict, others)


def latest_entries(runs_newest_first: Sequence[Run], names: Sequence[str]) -> dict[str, Latest]:
    """Each named stage's entry in the newest run that has it."""
    out: dict[str, Latest] = {}
    for run in runs_newest_first:
        for name in names:
            if name not in out and name in run.stages:
                status = run.stage_status(name)
                if status == Status.RUNNING and run.status != Status.RUNNING:  # the run ended around it
                    status = run.status if run.status == Status.CRASHED else Status.INTERRUPTED
                out[name] = Latest(run, status, name)
        if len(out) == len(names):
            break
    return out


def build_row(sweep: Sweep, branch: str, latest: Mapping[str, Latest], reports: Reports, cache_root: Path) -> Row:
    """The branch's row: its status, the first evaluation report of each evaluate stage it feeds,
    and the first finished stage's output that holds a trained model (the train artifact)."""
    chain = sweep.chains[branch]
    row = Row(branch, sweep.values[branch], {n: latest[n].status if n in latest else NOT_RUN for n in chain})
    row.status, row.problem = _status(row.stages, latest)
    mine = [latest[n] for n in chain if n in latest]
    row.run = max(mine, key=lambda x: x.run.started or 0.0).run.short if mine else None
    summary = latest[branch].entry.get("summary") if branch in latest else None
    row.summary = dict(summary) if isinstance(summary, Mapping) else {}
    for name in (n for n in chain if n in latest):
        source = name.partition("@")[0]  # the stage as written: a branch is named STAGE@KEY=LABEL,...
        report = reports.of(latest[name].run).get(name)  # a failed gate's report too, kept in scratch
        if report is not None and source not in row.reports:
            row.reports[source], row.evaluations[source] = report, name
        elif report is None and row.model is None and latest[name].status in FINISHED:
            row.model = _model_folder(latest[name].entry, cache_root)
    return row


def _status(stages: Mapping[str, str], latest: Mapping[str, Latest]) -> tuple[str, dict[str, str]]:
    """The row's status and the first stage that did not finish, with its error less the
    ``stage 'NAME': `` the runner starts it with (the row names the stage)."""
    seen = list(stages.values())
    problem = next(({"stage": n, "status": s, "error": _error(latest[n].entry, n) if n in latest else ""}
                    for n, s in stages.items() if s not in FINISHED), {})
    if all(s == NOT_RUN for s in seen):
        return NOT_RUN, problem
    word = next((w for w in (Status.FAILED, Status.RUNNING, Status.CRASHED, Status.INTERRUPTED) if w in seen), None)
    return word or (OK if not problem else "incomplete"), problem


def _error(entry: Mapping[str, Any], stage: str) -> str:
    return without_stage(stage, str(entry.get("error") or ""))


def _model_folder(entry: Mapping[str, Any], cache_root: Path) -> Path | None:
    outputs = entry.get("outputs")
    for digest in outputs.values() if isinstance(outputs, Mapping) else ():
        folder = cache_root / "objects" / str(digest)[:2] / str(digest)
        if isinstance(digest, str) and digest and T.is_model(folder):
            return folder
    return None


def columns_of(rows: list[Row]) -> list[Column]:
    """The evaluate metrics (prefixed by their stage when there are several), then the losses;
    fills each row's cells."""
    sources = list(dict.fromkeys(s for r in rows for s in r.reports))
    columns: list[Column] = []
    for source in sources:
        docs = [r.reports[source] for r in rows if source in r.reports]
        for metric in dict.fromkeys(m for d in docs for m in d.metrics):
            entry = next(d.metrics[metric] for d in docs if metric in d.metrics)
            name = metric if len(sources) == 1 else f"{source}.{metric}"
            better = entry.get("higher_is_better")
            columns.append(Column(name, source, metric, better if isinstance(better, bool) else None,
                                  str(entry.get("aggregate", "mean"))))
            for r in rows:
                if source in r.reports:
                    rep = r.reports[source]
                    r.cells[name] = Cell(rep.value(metric), rep.value(metric, stat="ci_low"),
                                         rep.value(metric, stat="ci_high"))
    found = {r.branch: T.losses(r.model) for r in rows if r.model is not None}
    for loss in T.LOSSES:
        if any(v[loss] is not None for v in found.values()):
            columns.append(Column(loss, TRAINING, loss, False))
            for r in rows:
                if r.branch in found:
                    r.cells[loss] = Cell(found[r.branch][loss])
    return columns


def pick_sort(columns: list[Column], rows: list[Row], given: str | None) -> Column | None:
    """``given`` (a column name, or STAGE.METRIC), else the evaluate stage's rank_by, else rouge_l,
    else the validation loss; None when there is nothing to sort by."""
    by_name = {c.name: c for c in columns} | {f"{c.source}.{c.metric}": c for c in columns if c.source != TRAINING}
    if given is not None:
        if given not in by_name:
            known = ", ".join(c.name for c in columns) or "none: no evaluate report or train loss was found"
            raise UserError(f"--sort {given}: no such metric in this sweep (metrics: {known})")
        return by_name[given]
    first = next((r.reports[c.source].doc for c in columns for r in rows if c.source in r.reports), {})
    for name in (str(first.get("rank_by") or ""), "rouge_l", "val_loss"):
        found = next((c for c in columns if c.metric == name), None)
        if found is not None:
            return found
    return None


def sort_rows(rows: list[Row], column: Column | None) -> list[Row]:
    """Rows with a value first, best first (higher first unless lower is better); then the others,
    in branch order."""
    if column is None:
        return rows
    sign = 1 if column.higher_is_better is False else -1
    valued = [r for r in rows if r.value(column.name) is not None]
    valued.sort(key=lambda r: sign * (r.value(column.name) or 0.0))
    return valued + [r for r in rows if r.value(column.name) is None]
