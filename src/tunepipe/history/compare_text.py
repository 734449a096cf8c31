"""``pipeline compare`` for a terminal: the table of branches, then what the order means (best,
tied, or why it is not tested) and what did not finish. (JSON is ``SweepComparison.to_json``; the page
is :mod:`tunepipe.history.compare_html`.)"""

from __future__ import annotations

from collections.abc import Sequence

from tunepipe.history.branches import NOT_RUN, OK, TRAINING, Cell, Row
from tunepipe.history.compare import SweepComparison
from tunepipe.history.leader import BEST, TIED
from tunepipe.history.render import number
from tunepipe.history.significance import settings

SUMMARY_WIDTH = 48


def cell_text(cell: Cell | None) -> str:
    if cell is None or cell.value is None:
        return "-"
    if cell.low is None or cell.high is None:
        return number(cell.value)
    return f"{number(cell.value)} [{number(cell.low)}, {number(cell.high)}]"


def status_text(row: Row) -> str:
    """``ok``, ``not run``, else the status with the stage (as written) that has it; ``, stale``
    when the pipeline as it is now would not reuse a result."""
    return _status_word(row) + (", stale" if row.stale else "")


def _status_word(row: Row) -> str:
    if row.status in (OK, NOT_RUN) or not row.problem:
        return row.status
    stage, status = row.problem["stage"].partition("@")[0], row.problem["status"]
    return f"{row.status} ({stage})" if status == row.status else f"{row.status} ({stage} {status})"


def summary_text(summary: dict[str, object]) -> str:
    text = " ".join(f"{k}={v}" for k, v in summary.items())
    return text if len(text) <= SUMMARY_WIDTH else text[:SUMMARY_WIDTH - 1] + "…"


def compare_text(c: SweepComparison) -> str:
    lines = [_title(c), ""]
    with_summary = not any(col.source != TRAINING for col in c.columns)
    head = ["", *c.sweep.keys, "status", *(col.name for col in c.columns), *(["summary"] if with_summary else []),
            "run"]
    body = [[r.mark, *(r.values.get(k, "") for k in c.sweep.keys), status_text(r),
             *(cell_text(r.cells.get(col.name)) for col in c.columns),
             *([summary_text(r.summary)] if with_summary else []), r.run or "-"] for r in c.rows]
    lines += table([head, *body])
    lines += [""] + verdict_lines(c) + problem_lines(c)
    return "\n".join(lines).rstrip()


def _title(c: SweepComparison) -> str:
    n = len(c.rows)
    text = f"sweep '{c.sweep.stage}' of {c.pipeline}: {n} branch{'es' if n != 1 else ''}"
    s = c.sort
    if s is None:
        return text + " (nothing to sort by)"
    what = "training" if s.source == TRAINING else f"{s.source}, tuned model, {_intervals(c)} intervals"
    order = "lowest first" if s.higher_is_better is False else "highest first"
    return f"{text}, sorted by {s.name} ({what}; {order})"


def _intervals(c: SweepComparison) -> str:
    """The confidence of the evaluate report's own intervals."""
    source = c.sort.source if c.sort else ""
    doc = next((r.reports[source].doc for r in c.rows if source in r.reports), {})
    return f"{settings(doc)[1]:.0%}"


def verdict_lines(c: SweepComparison) -> list[str]:
    v, s = c.verdict, c.sort
    if s is None or not v.leaders:
        return [f"note: {v.why}"] if v.why else []
    delta = f"{s.name} {number(v.delta, True)} [{number(v.low, True)}, {number(v.high, True)}]"
    over = f"over the same {v.examples} examples (paired bootstrap, {v.confidence:.0%})"
    if v.kind == BEST:
        return [f"best: {v.leaders[0]}: {delta} above the runner-up {v.runner_up}, {over}"]
    if v.kind == TIED:
        return [f"tied: {', '.join(v.leaders)}: the leader {v.leaders[0]} minus the runner-up {v.runner_up} is "
                f"{delta} {over}; the interval includes zero, so no branch is shown to be best"]
    return [f"leader by {s.name}: {v.leaders[0]}, not marked best: {v.why}"]


def problem_lines(c: SweepComparison) -> list[str]:
    lines = []
    unfinished = [r.problem["stage"] for r in c.rows if r.status != NOT_RUN and r.problem.get("status") == NOT_RUN]
    for r in c.rows:
        p = r.problem
        if r.status in (OK, NOT_RUN) or not p or p.get("status") == NOT_RUN:
            continue
        error = f": {p['error'].splitlines()[0]}" if p.get("error") else ""
        lines.append(f"{p['status']}: {p['stage']}{error} (`pipeline logs {c.pipeline} {p['stage']}`)")
    if unfinished:  # the branch ran, but a stage after it never did (e.g. only `run FILE evaluate` was asked)
        lines.append(f"not run yet: {', '.join(unfinished)} (`pipeline run {c.pipeline}` runs them)")
    stale = [f"{name} ({why})" for r in c.rows for name, why in list(r.stale.items())[:1]]  # what follows waits
    if stale:
        lines.append(f"stale: results from an older state of the pipeline, its inputs or code: {'; '.join(stale)} "
                     f"(`pipeline run {c.pipeline} {c.sweep.stage}` brings them up to date)")
    waiting = [r.branch for r in c.rows if r.status == NOT_RUN]
    if waiting:
        lines.append(f"not run yet: {', '.join(waiting)} (`pipeline run {c.pipeline} {c.sweep.stage}` runs them)")
    if c.not_in_pipeline:
        lines.append(f"recorded, but not branches of {c.pipeline} as it is now (not shown): "
                     f"{', '.join(c.not_in_pipeline)}")
    return lines


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
