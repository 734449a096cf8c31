"""Is the leader of a sweep ahead of the runner-up beyond the noise of which examples were drawn?

The leader is called ``best`` only when its paired difference from the runner-up, over the same
examples (:mod:`tunepipe.history.significance`: the evaluate stage's own seeded bootstrap of the
per-example scores), has an interval that excludes zero; otherwise it and every branch within
noise of it are ``tied``. A loss, a corpus statistic, a metric with no better direction or
examples that do not pair leave the order ``untested``, and say why.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunepipe.history import significance as S
from tunepipe.history.branches import TRAINING, Column, Row
from tunepipe.history.reports import Report

BEST, TIED, UNTESTED, NONE = "best", "tied", "untested", "none"


@dataclass(frozen=True)
class Verdict:
    """Whether the leader by the sort metric is ahead of the runner-up beyond the bootstrap noise."""

    kind: str  # best | tied | untested (no paired test applies: why) | none (fewer than two values)
    leaders: tuple[str, ...] = ()
    runner_up: str | None = None
    delta: float | None = None  # leader - runner-up, on the examples both scored
    low: float | None = None
    high: float | None = None
    examples: int = 0
    confidence: float = S.DEFAULT_CONFIDENCE
    why: str = ""


def judge(rows: list[Row], column: Column | None) -> Verdict:
    """Best, tied, or why no paired test applies; ``rows`` are sorted by ``column``."""
    if column is None:
        return Verdict(NONE, why="nothing to sort by: no evaluate report or training loss was found")
    valued = [r for r in rows if r.value(column.name) is not None]
    if len(valued) < 2:
        return Verdict(NONE, tuple(r.branch for r in valued),
                       why=f"{len(valued) or 'no'} branch{'es' if len(valued) != 1 else ''} with a value of "
                           f"{column.name}: nothing to compare")
    leader, runner = valued[0], valued[1]
    why = _untestable(column)
    if why:
        return Verdict(UNTESTED, (leader.branch,), runner.branch, why=why)
    loaded = {r.branch: r.reports[column.source].with_rows() for r in valued}
    tests = {r.branch: _paired(loaded[leader.branch], loaded[r.branch], column.metric) for r in valued[1:]}
    first = tests[runner.branch]
    if isinstance(first, str) or first.excludes_zero is None:
        return Verdict(UNTESTED, (leader.branch,), runner.branch,
                       why=first if isinstance(first, str) else "no example was scored by both branches")
    if first.excludes_zero:
        leaders: tuple[str, ...] = (leader.branch,)
    else:
        leaders = (leader.branch, *(b for b, t in tests.items() if not isinstance(t, str) and t.excludes_zero is False))
    return Verdict(BEST if first.excludes_zero else TIED, leaders, runner.branch, first.delta, first.low, first.high,
                   first.n, S.settings(loaded[leader.branch].doc)[1])


def _untestable(column: Column) -> str:
    if column.source == TRAINING:
        return f"{column.name} has no per-example scores to pair: the order is not tested against noise"
    if column.higher_is_better is None:
        return f"{column.name} has no better direction: no branch is best by it"
    if column.aggregate != "mean":
        return f"{column.name} is a corpus statistic (per-example scores do not add up to it): not paired"
    return ""


def _paired(leader: Report, other: Report, metric: str) -> S.Paired | str:
    """leader - other on the examples both scored, or why they cannot be paired."""
    pairs = S.pairing(other.rows, leader.rows)
    if isinstance(pairs, str):
        return pairs.replace("the runs", "the branches").replace("a run's", "a branch's")
    samples, confidence, seed = S.settings(leader.doc)
    return S.paired(S.scores(other.rows or (), pairs[0], metric), S.scores(leader.rows or (), pairs[1], metric),
                    samples=samples, confidence=confidence, seed=seed)
