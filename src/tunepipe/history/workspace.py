"""The workspace (the pipeline file, its inputs and plugin code as they are now) as a run that
has not happened: each stage's key parts as ``pipeline run`` would compute them, and whether the
cache holds its result.

``pipeline diff`` compares it with the latest run, so "what did I change since the last run?" is
answered before paying for the run; ``pipeline compare`` uses it to mark branches whose recorded
results no longer match the pipeline. A stage that waits for a stale stage is planned as if that
stage gives again what it gave last time (its latest recorded outputs): it is ``pending``, and
its own changes still show. Plans only: nothing runs and no state is saved.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunepipe.history.runs import History, Run
from tunepipe.status import Freshness, PlanState

WORKSPACE = "workspace"  # the name users give the workspace in `pipeline diff FILE RUN workspace`


def plan_workspace(session: Any, history: History) -> Run:
    """The workspace as a :class:`Run` named ``workspace``: per stage its status (a
    :class:`Freshness`), key, parts, reasons and (fresh stages) outputs."""
    from tunepipe.plan import PENDING_NOTE, Planner
    from tunepipe.runner import resolve_selection

    planner = Planner(session.pipeline, session.store, session.registry)
    known: dict[str, Mapping[str, str]] = {}  # outputs the cache holds now
    assumed: dict[str, Mapping[str, str]] = {}  # a stale stage's outputs of its latest run
    stages: dict[str, dict[str, Any]] = {}
    for name in resolve_selection(session.pipeline, [], ()):
        plan = planner.prepare(name, {**assumed, **known}, False)
        entry: dict[str, Any] = {"key": plan.key, "parts": plan.parts, "reasons": plan.reasons}
        waits = [up for up in session.pipeline.stages[name].upstream() if up in assumed]
        if plan.state == PlanState.PENDING:
            entry["status"] = Freshness.PENDING
        elif plan.state == PlanState.CACHED and not waits and plan.record is not None:
            entry.update(status=Freshness.FRESH, outputs=plan.record["outputs"])
            known[name] = plan.record["outputs"]
        else:
            entry["status"] = Freshness.PENDING if plan.state == PlanState.CACHED else Freshness.STALE
            entry["reasons"] = plan.reasons or [f"waits for {', '.join(waits)}: {PENDING_NOTE}"]
        if name not in known and (outputs := latest_outputs(history, name)) is not None:
            assumed[name] = outputs
        stages[name] = entry
    record = {"run_id": WORKSPACE, "status": WORKSPACE, "stages": stages}
    return Run(WORKSPACE, session.store.root, record, WORKSPACE, None, WORKSPACE)


def latest_outputs(history: History, stage: str) -> Mapping[str, str] | None:
    """The stage's outputs in the newest run that recorded them."""
    for run in history.runs:
        outputs = run.stages.get(stage, {}).get("outputs")
        if isinstance(outputs, dict) and outputs:
            return outputs
    return None


def stale_reasons(workspace: Run, names: list[str]) -> dict[str, str]:
    """Of the named stages, those that are not fresh in the workspace, with their first reason."""
    out = {}
    for name in names:
        entry = workspace.stages.get(name)
        if entry is not None and entry.get("status") != Freshness.FRESH:
            reasons = entry.get("reasons") or []
            out[name] = str(reasons[0]) if reasons else str(entry.get("status"))
    return out
