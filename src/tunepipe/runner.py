"""The scheduler: run the selected stages in dependency order, independent ones concurrently.

For each ready stage: plan it (key, reasons) → cached? reuse : submit to the executor. A key is
computed only when the stage's upstream outputs exist, from their digests, so a rerun that
reproduces identical bytes stops the cascade.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from tunepipe.cache.store import Store
from tunepipe.errors import TunepipeError, UserError, with_stage
from tunepipe.execute import ArtifactRef, StageJob, StageResult
from tunepipe.executor import Executor, LocalExecutor
from tunepipe.graph import select
from tunepipe.plan import Planner, StagePlan
from tunepipe.records import RunRecord
from tunepipe.registry import Registry
from tunepipe.spec.model import Pipeline
from tunepipe.status import FINISHED, NOT_SUCCEEDED, PlanState, Status
from tunepipe.tracking.registry import chosen as chosen_trackers

INTERRUPTED_EXIT = 130


@dataclass
class RunOptions:
    targets: Sequence[str] = ()
    force_all: bool = False
    force: Sequence[str] = ()
    jobs: int | None = None  # stages at once; default 1 locally, all ready ones on Ray
    executor: str = ""  # local | ray; default: the pipeline file's, else local
    address: str = ""  # the Ray cluster (HOST:PORT, auto, local); default: the file's, $RAY_ADDRESS, local
    keep_going: bool = False
    dry_run: bool = False
    explain: bool = False
    argv: Sequence[str] = ()
    track: str = ""  # a tracker instead of the file's `tracking:` (``none``: none); see tunepipe.tracking


@dataclass
class StageOutcome:
    """What the run says of one stage: a :class:`Status`, or on a dry run a :class:`PlanState`."""

    name: str
    status: str  # cached | done | failed | skipped | cancelled | running; a dry run: cached | run | pending
    key: str | None = None
    duration: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    error: str = ""
    user_error: bool = False
    log_path: str = ""
    node: str = ""  # the cluster node that ran it (Ray executor)
    attempts: int = 1

    @classmethod
    def of(cls, plan: StagePlan, result: StageResult) -> StageOutcome:
        """The outcome of a stage that ran: its plan's key and reasons, and every field the worker's
        result shares with an outcome, copied by name (a field added to both cannot be left behind);
        a failure's error names the stage (:func:`~tunepipe.errors.with_stage`)."""
        shared = {f.name: getattr(result, f.name) for f in fields(cls) if f.name in _RESULT_FIELDS}
        if result.status == Status.FAILED:
            shared["error"] = with_stage(plan.name, result.error)
        return cls(plan.name, key=plan.key, reasons=plan.reasons, **shared)


_RESULT_FIELDS = frozenset(f.name for f in fields(StageResult))


@dataclass
class RunOutcome:
    pipeline: str
    stages: dict[str, StageOutcome]
    status: str  # a Status: ok | failed | interrupted | planned
    duration: float
    record_path: str = ""

    @property
    def exit_code(self) -> int:
        if self.status == Status.INTERRUPTED:
            return INTERRUPTED_EXIT
        failed = [s for s in self.stages.values() if s.status == Status.FAILED]
        if not failed:
            return 0
        return UserError.exit_code if all(s.user_error for s in failed) else 1


class Reporter(Protocol):
    def start(self, pipeline: Pipeline, selected: list[str], cache: str) -> None: ...
    def plan(self, plans: list[StagePlan]) -> None: ...
    def stage(self, outcome: StageOutcome) -> None: ...
    def progress(self, stage: str, note: str) -> None: ...
    def message(self, text: str) -> None: ...
    def finish(self, outcome: RunOutcome) -> None: ...


def stage_resources(registry: Registry, uses: str, params: dict[str, Any],
                    given: dict[str, Any]) -> dict[str, Any]:
    """What a stage asks a cluster for: the plugin's own default (optional ``resources(params)``
    hook, e.g. a training coordinator needs no CPU of its own), then the spec's ``resources:``."""
    hook = getattr(registry.load(uses).plugin, "resources", None)
    base = dict(hook(params) or {}) if callable(hook) else {}
    return {**base, **given}


def resolve_selection(pipeline: Pipeline, targets: Sequence[str], force: Sequence[str]) -> list[str]:
    """The targets and what they need; unknown names are a user error with a suggestion. A matrix
    stage's written name stands for all its branches."""
    import difflib

    targets, force = pipeline.expand_names(list(targets)), pipeline.expand_names(list(force))
    for name in list(targets) + list(force):
        if name not in pipeline.stages:
            close = difflib.get_close_matches(name, list(pipeline.stages), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UserError(f"there is no stage '{name}' in {pipeline.path.name}.{hint} "
                            f"Stages: {', '.join(pipeline.stages)}")
    selected = select(pipeline.deps(), pipeline.order, targets or pipeline.order)
    outside = [name for name in force if name not in selected]
    if outside:
        raise UserError(f"--force={outside[0]} names a stage this run does not select (it runs "
                        f"{', '.join(targets)} and what {'they need' if len(targets) > 1 else 'it needs'}), so "
                        f"it would be ignored: add {outside[0]} to the stages to run, or leave out --force={outside[0]}")
    return selected


def executor_setting(pipeline: Pipeline, opts: RunOptions) -> tuple[str, dict[str, Any]]:
    """Which executor runs the stages and its options: the command line, then the file, then local.
    ``--address`` alone means Ray."""
    given = pipeline.executor
    kind = opts.executor or ("ray" if opts.address else given.get("type", "local"))
    if kind != "ray":
        return "local", {}
    address = opts.address or (given.get("address", "") if given.get("type") == "ray" else "")
    return "ray", {"address": address or None, "max_retries": given.get("max_retries", 3)}


def run(pipeline: Pipeline, store: Store, registry: Registry, opts: RunOptions, reporter: Reporter,
        executor_factory: Callable[..., Executor] | None = None) -> RunOutcome:
    """Run (or, with ``dry_run``, only plan) the selected stages."""
    t_start = time.monotonic()
    selected = resolve_selection(pipeline, opts.targets, opts.force)
    trackers = chosen_trackers(pipeline.tracking, opts.track)  # an unknown --track: a user error, now
    forced = set(selected) if opts.force_all else set(pipeline.expand_names(list(opts.force)))
    planner = Planner(pipeline, store, registry)
    reporter.start(pipeline, selected, str(store.root))
    if not opts.dry_run:
        store.sweep_leftovers(say=reporter.message)
    if opts.dry_run:
        plans = planner.plan(selected, forced, preview=True)
        reporter.plan(plans)
        stages = {p.name: StageOutcome(p.name, p.state, p.key, reasons=p.reasons) for p in plans}
        outcome = RunOutcome(pipeline.name, stages, Status.PLANNED, time.monotonic() - t_start)
        planner.save()
        return outcome
    kind, options = executor_setting(pipeline, opts)
    if executor_factory is None:
        if kind == "ray":
            from tunepipe.cluster.ray_executor import RayExecutor

            executor_factory = functools.partial(RayExecutor, **options)
        else:
            executor_factory = LocalExecutor
    jobs = opts.jobs or (len(selected) if kind == "ray" else 1)  # on Ray, the cluster's resources limit
    return _Scheduler(pipeline, store, registry, opts, reporter, planner, selected, forced,
                      executor_factory, kind, jobs, trackers).run(t_start)


class _Scheduler:
    def __init__(self, pipeline: Pipeline, store: Store, registry: Registry, opts: RunOptions,
                 reporter: Reporter, planner: Planner, selected: list[str], forced: set[str],
                 executor_factory: Callable[..., Executor], engine: str, jobs: int,
                 trackers: dict[str, Any] | None = None) -> None:
        self.pipeline, self.store, self.registry, self.opts = pipeline, store, registry, opts
        self.reporter, self.planner = reporter, planner
        self.selected, self.forced = selected, forced
        self.deps = pipeline.deps()
        self.outputs: dict[str, dict[str, str]] = {}
        self.outcomes: dict[str, StageOutcome] = {}
        self.pending = list(selected)
        self.running: dict[Future[StageResult], StagePlan] = {}
        self.cancel = threading.Event()
        self.stopping = False
        self.record = RunRecord(store.root, pipeline.path, pipeline.name, list(opts.argv))
        self.engine, self.jobs = engine, jobs
        self.threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
        self.record.data["executor"] = engine
        self._factory = executor_factory
        self.warned: set[str] = set()
        self._executor: Executor | None = None  # made at the first stage to run: a cached run starts no cluster
        self.trackers = trackers or {}  # tracker name -> settings: where the finished run is logged

    def run(self, t_start: float) -> RunOutcome:
        status = Status.OK
        try:
            while self.pending or self.running:
                self._schedule()
                if not self.running:
                    break
                done, _ = wait(list(self.running), timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in done:
                    self._finished(self.running.pop(fut), fut.result())
        except TunepipeError:  # e.g. the cluster cannot be reached: the record must not stay "running"
            self.record.finish(Status.FAILED)
            self._track(Status.FAILED)
            raise
        except KeyboardInterrupt:
            status = Status.INTERRUPTED
            self.cancel.set()
            self.reporter.message("interrupted: stopping; finished stages are kept, the rest reruns next time")
            for plan in self.running.values():
                self._set(StageOutcome(plan.name, Status.CANCELLED, plan.key, error="interrupted"))
        finally:
            if self._executor is not None:
                self._executor.shutdown()
        for name in self.pending:
            if name not in self.outcomes:
                self._set(StageOutcome(name, Status.SKIPPED, reasons=["the run stopped before it"]))
        if status == Status.OK and any(o.status == Status.FAILED for o in self.outcomes.values()):
            status = Status.FAILED
        self.planner.save()
        self.record.finish(status)
        if self.record.write_error:
            self.reporter.message(f"the run record was not written: {self.record.write_error}")
        outcome = RunOutcome(self.pipeline.name, {n: self.outcomes[n] for n in self.selected if n in self.outcomes},
                             status, time.monotonic() - t_start, str(self.record.file))
        self._track(status)
        self.reporter.finish(outcome)
        return outcome

    def _track(self, status: str) -> None:
        """Log the finished run to its trackers; their errors are warnings (tunepipe.tracking.report)."""
        if self.trackers:
            from tunepipe.tracking.report import track

            track(self.trackers, self.pipeline, self.store, self.record.data, status, self.reporter.message)

    def _schedule(self) -> None:
        """Start every ready stage (cached ones resolve at once, which may make more ready)."""
        progressed = True
        while progressed and not self.stopping:
            progressed = False
            for name in list(self.pending):
                bad = [d for d in self.deps[name] if self.outcomes.get(d) and
                       self.outcomes[d].status in NOT_SUCCEEDED]
                if bad:
                    self.pending.remove(name)
                    self._set(StageOutcome(name, Status.SKIPPED, reasons=[f"'{bad[0]}' did not succeed"]))
                    progressed = True
                    continue
                if not all(d in self.outputs for d in self.deps[name]):
                    continue
                if len(self.running) >= max(1, self.jobs):
                    return
                self.pending.remove(name)
                progressed = True
                plan = self.planner.prepare(name, self.outputs, name in self.forced)
                if plan.state == PlanState.CACHED and plan.record is not None:
                    self._accept(plan, plan.record["outputs"])
                    self._set(StageOutcome(name, Status.CACHED, plan.key, summary=plan.record.get("summary", {}),
                                           reasons=plan.unkeyed), write=False, parts=plan.parts)
                    continue
                spec = self.pipeline.stages[name]
                resources = stage_resources(self.registry, spec.uses, spec.params, spec.resources)
                job = StageJob(
                    stage=name, uses=spec.uses, key=plan.key or "", parts=plan.parts or {},
                    params=spec.params,
                    inputs={k: [ArtifactRef.of(a, self.store) for a in v] for k, v in plan.inputs.items()},
                    multiple=self.pipeline.stages[name].multiple, outputs=list(self.pipeline.stages[name].outputs),
                    log_path=str(self.record.log_path(name)), force=name in self.forced, engine=self.engine,
                    resources=resources,
                    threads=max(1, math.ceil(resources.get("cpus", 1))) if self.engine == "ray" else self.threads)
                if self._executor is None:
                    self._executor = self._factory(self.jobs, self.store, self.registry, self.cancel,
                                                   self.reporter.progress, self.reporter.message)
                self.reporter.stage(StageOutcome(name, Status.RUNNING, plan.key, reasons=plan.reasons))
                self.record.stage(name, status=Status.RUNNING, key=plan.key, parts=plan.parts, reasons=plan.reasons)
                self.running[self._executor.submit(job)] = plan

    def _finished(self, plan: StagePlan, result: StageResult) -> None:
        if result.status in FINISHED:
            self._accept(plan, result.outputs)
        self._set(StageOutcome.of(plan, result), extra=result.placement())
        if result.status == Status.FAILED and not self.opts.keep_going:
            self.stopping = True

    def _accept(self, plan: StagePlan, outputs: dict[str, str]) -> None:
        self.outputs[plan.name] = outputs
        problem = self.planner.remember(plan)
        if problem and problem not in self.warned:
            self.warned.add(problem)
            self.reporter.message(f"could not keep the pipeline's state: {problem}")

    def _set(self, outcome: StageOutcome, write: bool = True, parts: dict[str, Any] | None = None,
             extra: dict[str, Any] | None = None) -> None:
        self.outcomes[outcome.name] = outcome
        self.reporter.stage(outcome)
        fields: dict[str, Any] = {"status": outcome.status, "key": outcome.key,
                                  "duration_s": round(outcome.duration, 4), "summary": outcome.summary}
        if outcome.key and outcome.name in self.outputs:
            fields["outputs"] = self.outputs[outcome.name]
        if parts is not None:
            fields["parts"] = parts
        if outcome.reasons:
            fields["reasons"] = outcome.reasons
        if outcome.error:
            fields["error"], fields["log"] = outcome.error, outcome.log_path
        fields.update(extra or {})
        if write:
            self.record.stage(outcome.name, **fields)
        else:
            self.record.data["stages"].setdefault(outcome.name, {}).update(fields)
