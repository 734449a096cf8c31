"""Two runs -> their differences, as plain data: what changed in each stage's key parts, and
every metric of every evaluate stage with old, new, delta and whether the change is outside the
bootstrap noise (see :mod:`tunepipe.history.significance`). Pure: the reports come in loaded."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tunepipe.errors import UserError
from tunepipe.history import significance as S
from tunepipe.history.changes import Change, run_changes
from tunepipe.history.reports import Report, Reports
from tunepipe.history.runs import History, Run
from tunepipe.history.workspace import WORKSPACE

PAIRED, OVERLAP, SAME, NONE = "paired", "overlap", "same", "none"
RECORDED = 50  # the workspace counts as run when one of this many newest runs had no change from it


@dataclass(frozen=True)
class DiffSide:
    id: str
    run_id: str
    started: float | None
    status: str

    @classmethod
    def of(cls, run: Run) -> DiffSide:
        return cls(run.short, run.run_id, run.started, run.status)


@dataclass(frozen=True)
class MetricChange:
    """One metric of the tuned model in one evaluate stage. ``low``/``high``: the interval of
    ``delta`` (basis ``paired``) or absent (``overlap``: the two runs' own intervals were compared)."""

    stage: str
    metric: str
    old: float | None
    new: float | None
    delta: float | None
    low: float | None = None
    high: float | None = None
    basis: str = NONE  # paired | overlap | same (one cached result) | none (a side has no value or interval)
    outside: bool | None = None  # the change is outside the bootstrap interval
    verdict: str = ""  # better | worse | higher | lower (no better direction) | within noise | same | ""
    note: str = ""


@dataclass(frozen=True)
class Evaluation:
    """How one evaluate stage's examples compare between the runs."""

    stage: str
    examples: int | None
    paired: bool
    why: str = ""  # why the examples are not paired, or why a side has no report
    confidence: float = S.DEFAULT_CONFIDENCE


@dataclass
class RunDiff:
    a: DiffSide
    b: DiffSide
    changes: list[Change] = field(default_factory=list)
    evaluations: list[Evaluation] = field(default_factory=list)
    metrics: list[MetricChange] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"a": asdict(self.a), "b": asdict(self.b), "changes": [c.to_json() for c in self.changes],
                "evaluations": [asdict(e) for e in self.evaluations], "metrics": [asdict(m) for m in self.metrics]}


def diff_history(history: History, given_a: str | None = None, given_b: str | None = None,
                 workspace: Callable[[], Run | None] | None = None) -> RunDiff:
    """The runs the user named, diffed with their evaluation reports read from the cache. None
    named: the latest run against the workspace when that differs from each of the last
    :data:`RECORDED` runs (``workspace`` plans it; None when it cannot be planned), else the two
    newest runs: after ``run -S ...`` the workspace is the run before, and the runs are compared.
    One: it against the newest.
    ``workspace`` (:data:`~tunepipe.history.workspace.WORKSPACE`) names the workspace."""
    a, b = pick(history, given_a, given_b, workspace or (lambda: None))
    reports = Reports(history.cache_root)
    return diff_runs(a, b, {s: r.with_rows() for s, r in reports.of(a).items()},
                     {s: r.with_rows() for s, r in reports.of(b).items()})


def pick(history: History, given_a: str | None, given_b: str | None,
         workspace: Callable[[], Run | None]) -> tuple[Run, Run]:
    runs = history.require_runs()
    if WORKSPACE in (given_a, given_b):
        return _with_workspace(history, given_a, given_b, workspace)
    if given_a is None:
        ws = workspace()
        if ws is not None and all(run_changes(run, ws) for run in runs[:RECORDED]):
            return runs[0], ws  # edits since the last run that no recent run has (else: runs with -S)
        if len(runs) < 2:
            same = " and the workspace matches it" if ws is not None else ""
            raise UserError(f"only one run of {history.spec} is recorded ({runs[0].short}){same}: a diff needs "
                            f"two; run `pipeline run {history.spec}` again after a change")
        return runs[1], runs[0]
    a = history.run(given_a)
    b = history.run(given_b) if given_b is not None else runs[0]
    if a.run_id == b.run_id:
        which = "the same run" if given_b is not None else "the latest run"
        raise UserError(f"run {a.short} is {which}: name another run to compare it with "
                        f"(`pipeline runs {history.spec}` lists them)")
    return a, b


def _with_workspace(history: History, given_a: str | None, given_b: str | None,
                    workspace: Callable[[], Run | None]) -> tuple[Run, Run]:
    if given_a == WORKSPACE and given_b is not None:
        raise UserError(f"the workspace is the newer side: `pipeline diff {history.spec} RUN {WORKSPACE}`")
    ws = workspace()
    if ws is None:
        raise UserError(f"the workspace of {history.spec} cannot be planned here")
    old = history.run(given_a) if given_a not in (None, WORKSPACE) else history.runs[0]
    return old, ws


def diff_runs(a: Run, b: Run, reports_a: Mapping[str, Report], reports_b: Mapping[str, Report]) -> RunDiff:
    """Run ``a`` (old) against run ``b`` (new). Reports should carry their rows (``with_rows``)."""
    out = RunDiff(DiffSide.of(a), DiffSide.of(b), run_changes(a, b))
    for stage in list(reports_b) + [s for s in reports_a if s not in reports_b]:
        old, new = reports_a.get(stage), reports_b.get(stage)
        if old is None or new is None:
            missing = a if old is None else b
            status = missing.stage_status(stage)
            why = (f"the workspace has no evaluation report of stage '{stage}' yet ({status}: run the pipeline "
                   "to get its metrics)" if missing.run_id == WORKSPACE else
                   f"run {missing.short} has no evaluation report of stage '{stage}' (stage {status})")
            out.evaluations.append(Evaluation(stage, None, False, why))
            continue
        evaluation, metrics = compare_reports(stage, old, new)
        out.evaluations.append(evaluation)
        out.metrics.extend(metrics)
    return out


def compare_reports(stage: str, old: Report, new: Report) -> tuple[Evaluation, list[MetricChange]]:
    samples, confidence, seed = S.settings(new.doc)
    pairs = S.pairing(old.rows, new.rows)
    n = new.doc.get("examples") if isinstance(new.doc.get("examples"), int) else None
    evaluation = Evaluation(stage, n, not isinstance(pairs, str), pairs if isinstance(pairs, str) else "", confidence)
    names = list(new.metrics) + [m for m in old.metrics if m not in new.metrics]
    metrics = []
    for m in names:
        o, nv = old.value(m), new.value(m)
        base = MetricChange(stage, m, o, nv, None if o is None or nv is None else nv - o)
        if old.folder == new.folder:
            metrics.append(_judged(base, new, basis=SAME, outside=False))
        elif isinstance(pairs, str) or _aggregate(new, m) != "mean" or _aggregate(old, m) != "mean":
            why = "" if isinstance(pairs, str) else \
                "a corpus statistic (per-example scores do not add up to it): intervals compared"
            metrics.append(_by_overlap(base, old, new, why))
        else:
            p = S.paired(S.scores(old.rows or (), pairs[0], m), S.scores(new.rows or (), pairs[1], m),
                         samples=samples, confidence=confidence, seed=seed)
            note = "" if p.n == len(pairs[0]) else f"paired on the {p.n} examples both runs scored"
            metrics.append(_judged(MetricChange(stage, m, o, nv, base.delta, p.low, p.high, note=note), new,
                                   basis=PAIRED, outside=p.excludes_zero))
    return evaluation, metrics


def _by_overlap(change: MetricChange, old: Report, new: Report, note: str) -> MetricChange:
    m = change.metric
    overlapping = S.overlap((old.value(m, stat="ci_low"), old.value(m, stat="ci_high")),
                            (new.value(m, stat="ci_low"), new.value(m, stat="ci_high")))
    return _judged(MetricChange(change.stage, m, change.old, change.new, change.delta, note=note), new,
                   basis=OVERLAP if overlapping is not None else NONE,
                   outside=None if overlapping is None else not overlapping)


def _judged(change: MetricChange, new: Report, *, basis: str, outside: bool | None) -> MetricChange:
    """``change`` with its basis, whether it is outside the noise, and what that means for the metric."""
    if change.delta is None:
        return change
    verdict = ""
    if basis == SAME or change.delta == 0:
        verdict = "same"
    elif outside is False:
        verdict = "within noise"
    elif outside:
        better = new.metrics.get(change.metric, {}).get("higher_is_better")
        up = change.delta > 0
        verdict = ("higher" if up else "lower") if better is None else ("better" if up == bool(better) else "worse")
    fields = {**asdict(change), "basis": basis, "outside": outside, "verdict": verdict}
    return MetricChange(**fields)


def _aggregate(report: Report, metric: str) -> str:
    return str(report.metrics.get(metric, {}).get("aggregate", "mean"))
