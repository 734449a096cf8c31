"""The words for where a stage or a run stands, one enum each, so a typo is an error, not a state.

They are :class:`~enum.StrEnum` members: each *is* its string, so run records, JSON output and
comparisons with what older versions wrote stay the same (``Status.DONE == "done"``).
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """A stage's status (in a run record and the terminal view) and a run's outcome."""

    # a stage
    RUNNING = "running"  # also a run that has not finished
    DONE = "done"
    CACHED = "cached"  # reused: computed by an earlier run or, meanwhile, by another process
    FAILED = "failed"  # also a run where a stage failed
    SKIPPED = "skipped"  # an upstream stage did not succeed, or the run stopped before it
    CANCELLED = "cancelled"  # stopped by Ctrl-C or SIGTERM
    WAITING = "waiting"  # the live view only: not started yet
    # a run
    OK = "ok"
    INTERRUPTED = "interrupted"
    PLANNED = "planned"  # --dry-run
    # what the history reads from a record, never written
    CRASHED = "crashed"  # recorded as running, and its process is gone
    UNKNOWN = "unknown"  # no status recorded (an older or damaged record)


FINISHED = frozenset({Status.DONE, Status.CACHED})  # a stage whose outputs exist
NOT_SUCCEEDED = frozenset({Status.FAILED, Status.SKIPPED, Status.CANCELLED})  # its downstream is skipped
RUN_ENDS = (Status.OK, Status.FAILED, Status.INTERRUPTED)  # how a run that finished ended


class PlanState(StrEnum):
    """What the planner decided for a stage before it runs."""

    CACHED = "cached"  # the cache holds its result
    RUN = "run"  # it must run
    PENDING = "pending"  # it waits for an upstream stage that will run


class Freshness(StrEnum):
    """A :class:`PlanState` as users read it (``status``, ``status --json``, ``show``, ``diff``)."""

    FRESH = "fresh"  # the cache holds the result for the stage as it is now
    STALE = "stale"  # it runs next time
    PENDING = "pending"  # it waits for a stale stage upstream; it reruns only if that changes its inputs


FRESHNESS = {PlanState.CACHED: Freshness.FRESH, PlanState.RUN: Freshness.STALE, PlanState.PENDING: Freshness.PENDING}
