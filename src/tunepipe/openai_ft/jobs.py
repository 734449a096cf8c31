"""One fine-tuning job per stage key: find it, decide, create it once, follow it to the end.

Exactly once
------------
Every job carries ``metadata.tunepipe_key`` (the first 32 hex digits of the stage key; the stage
key covers the data, the parameters and the code). A run first looks in the stage's scratch for
the job id (written durably the moment ``create`` returns); without one it lists the account's jobs
with that tag (``jobs.list(metadata=...)``, filtered again here because not every server filters)
and decides with :func:`decide`:

* a job that did not fail and was not cancelled (running, queued, paused or succeeded) is
  re-attached: never a second job, and a succeeded one is not paid for twice (with several, the one
  :func:`survivor` picks);
* otherwise a new job is created, except when a re-run would only repeat a failure: the latest
  failed job's error names a parameter (``training_file``, ``model``...: the same stage key sends
  the same request, so it would fail the same way), or ``MAX_FAILED`` jobs of this key already
  failed. Then a UserError says what to change.

Creating sends one POST with the SDK's retries off: a dropped connection or a 5xx after OpenAI
accepted the request would otherwise create a second job on retry. On such an error the job list is
consulted again (a job with the tag that is not failed or cancelled is the one just created) before
trying again. The OpenAI API documents no idempotency key for this endpoint, so the tag is the guard.

Across machines
---------------
Runs with separate caches share no lock: both may find no job and both create one. So every run
reconciles right after creating (:func:`duplicates`): it lists the key's jobs again, keeps the same
one (:func:`survivor`: a succeeded job, else the earliest created) and cancels the others, which are
then still validating their files or queued, before any token is trained and billed. A run whose
followed job is cancelled this way re-attaches to the survivor. The window left: a duplicate whose
run dies between its create and its reconcile is cancelled by the next run of that key that
reconciles, or by a run that re-attaches while it is still live.

Following
---------
``retrieve`` on a back-off (``poll_seconds``, times 1.5, at most 60 s), sleeping in slices of 0.1 s so
Ctrl-C (``ctx.check_cancelled``) stops within a fraction of a second. Transient errors (429, 5xx,
dropped connections: after the SDK's own retries) are retried on the same back-off, up to
``MAX_POLL_FAILURES`` in a row. New events are logged oldest first, each once (the last event id seen
is kept in scratch); the latest shows as the stage's progress. A status is an open string: anything
but succeeded, failed and cancelled (``paused`` included) means wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tunepipe.errors import StageFailed
from tunepipe.openai_ft.config import MAX_POLL_SECONDS, META_KEY
from tunepipe.openai_ft.results import ENDED_BADLY, TERMINAL, describe_error, get, job_error

MAX_FAILED = 3  # failed jobs of one stage key after which a plain re-run is refused
MAX_LIST_PAGES = 20  # pages of 100 jobs searched for this key's jobs
MAX_POLL_FAILURES = 30  # transient errors in a row while following a job before giving up (it keeps running)
CREATE_ATTEMPTS = 4
SLICE_S = 0.1
EVENT_PAGE = 100


# ---------------------------------------------------------------------------------------------
# finding and deciding

def jobs_for_key(client: Any, tag: str) -> list[Any]:
    """The account's jobs tagged ``tunepipe_key == tag``, newest first."""
    found: list[Any] = []
    page = client.fine_tuning.jobs.list(metadata={META_KEY: tag}, limit=100)
    for _ in range(MAX_LIST_PAGES):
        found.extend(j for j in page.data if (get(j, "metadata") or {}).get(META_KEY) == tag)
        if not page.has_next_page():
            break
        page = page.get_next_page()
    return sorted(found, key=lambda j: get(j, "created_at") or 0, reverse=True)


def survivor(live: Sequence[Any]) -> Any:
    """The one job of a stage key that every run keeps: a succeeded one, else the earliest created.

    ``live`` is newest first, in the server's order (ties in ``created_at``, whole seconds, keep it),
    so every run that sees the same jobs picks the same one.
    """
    done = [j for j in live if get(j, "status") == "succeeded"]
    return (done or live)[-1]


def duplicates(client: Any, job: Any, tag: str) -> tuple[Any, list[Any]]:
    """After creating (or finishing) ``job``: the job to keep and the unfinished duplicates to cancel.

    OpenAI has no idempotency key for creating a job, so two runs with separate caches (two
    machines, two CI jobs) can both find no job and both create one. Each run reconciles right
    after: it lists this key's jobs again, keeps :func:`survivor` and cancels the others.
    """
    found = jobs_for_key(client, tag)
    if all(get(j, "id") != get(job, "id") for j in found):
        found = [job, *found]  # not listed yet: it is the newest
    live = [j for j in found if get(j, "status") not in ENDED_BADLY]
    keep = survivor(live)
    return keep, [j for j in live if get(j, "id") != get(keep, "id") and get(j, "status") not in TERMINAL]


@dataclass(frozen=True)
class Decision:
    action: str  # attach | create | refuse
    job: Any = None
    message: str = ""


def ended_entry(job: Any) -> dict[str, Any]:
    """How scratch remembers a job that failed or was cancelled."""
    return {"id": get(job, "id"), "status": get(job, "status"), "created_at": get(job, "created_at"),
            "error": job_error(job)}


def decide(jobs: Sequence[Any], remembered: Sequence[Mapping[str, Any]] = ()) -> Decision:
    """What to do given this key's jobs on the account (newest first) and those scratch remembers ended.

    Pure: see the module's docstring for the rules.
    """
    live = [j for j in jobs if get(j, "status") not in ENDED_BADLY]
    if live:
        return Decision("attach", survivor(live))
    ended = {e["id"]: dict(e) for e in remembered if e.get("id")}
    for j in jobs:
        ended[get(j, "id")] = ended_entry(j)
    if not ended:
        return Decision("create")
    history = sorted(ended.values(), key=lambda e: e.get("created_at") or 0, reverse=True)
    failed = [e for e in history if e.get("status") == "failed"]
    latest = history[0]
    what = f"job {latest['id']} ({latest.get('status')}: {describe_error(latest.get('error'))})"
    if latest.get("status") == "failed" and (latest.get("error") or {}).get("param"):
        return Decision("refuse", message=(
            f"the last fine-tuning job of this stage, {what}, failed on a parameter of the request. Nothing has "
            "changed since (same data, parameters and code), so a new job would fail the same way: fix what the "
            "error names (the data, or the train stage's parameters) and run again. To retry unchanged anyway, "
            "change the seed."))
    if len(failed) >= MAX_FAILED:
        return Decision("refuse", message=(
            f"{len(failed)} fine-tuning jobs of this stage with exactly this configuration have failed (the "
            f"latest: {what}); tunepipe does not start another one unchanged. Check the errors (the stage log "
            "and the OpenAI dashboard), fix the data or parameters, or change the seed to retry on purpose."))
    more = f" ({len(failed)} failed so far; after {MAX_FAILED} a re-run is refused)" if failed else ""
    return Decision("create", message=(
        f"the previous fine-tuning job of this stage, {what}, did not succeed: creating a new job{more}"))


# ---------------------------------------------------------------------------------------------
# creating once

def create_job(client: Any, request: Mapping[str, Any], tag: str, *, log: Any, sleep: Callable[[float], None],
               check: Callable[[], None], describe: Callable[[BaseException], str]) -> Any:
    """``jobs.create(**request)``, once: see the module's docstring. Non-transient errors propagate, and
    a transient one after ``CREATE_ATTEMPTS`` (the next run's look-up then finds a job it did create)."""
    from tunepipe.openai_ft.client import is_transient

    creator = client.with_options(max_retries=0)
    delay = 1.0
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        check()
        try:
            return creator.fine_tuning.jobs.create(**request)
        except Exception as e:
            if not is_transient(e) or attempt == CREATE_ATTEMPTS:
                raise
            log.warning("creating the job: %s (attempt %d of %d); checking whether OpenAI created it anyway",
                        describe(e), attempt, CREATE_ATTEMPTS)
            sleep(max(delay, _retry_after(e)))
            delay *= 2
            live = [j for j in jobs_for_key(client, tag) if get(j, "status") not in ENDED_BADLY]
            if live:
                log.info("job %s exists although its create request's answer was lost: using it", get(live[0], "id"))
                return live[0]
    raise AssertionError("unreachable")


def _retry_after(exc: Any) -> float:
    response = getattr(exc, "response", None)
    try:
        value = float(response.headers.get("retry-after", "0")) if response is not None else 0.0
    except (TypeError, ValueError):
        return 0.0
    return min(max(value, 0.0), 60.0)


# ---------------------------------------------------------------------------------------------
# following

def new_events(client: Any, job_id: str, last_id: str | None) -> list[Any]:
    """The job's events after ``last_id``, oldest first (the API lists newest first; paginated)."""
    collected: list[Any] = []
    from tunepipe.openai_ft.client import POLL_TIMEOUT_S

    page = client.fine_tuning.jobs.list_events(job_id, limit=EVENT_PAGE, timeout=POLL_TIMEOUT_S)
    while True:
        for ev in page.data:
            if last_id is not None and ev.id == last_id:
                return collected[::-1]
            collected.append(ev)
        if not page.has_next_page():
            return collected[::-1]
        page = page.get_next_page()


def all_events(client: Any, job_id: str) -> list[Any]:
    return new_events(client, job_id, None)


def _when(ts: Any) -> str:
    try:
        return datetime.fromtimestamp(int(ts), tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def sleep_sliced(seconds: float, check: Callable[[], None]) -> None:
    """Sleep, calling ``check`` (which raises to stop) every 0.1 s."""
    end = time.monotonic() + seconds
    while True:
        check()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(SLICE_S, left))


class Follower:
    """Follows one job to a terminal status; logs each event once and shows progress."""

    def __init__(self, client: Any, ctx: Any, *, first_interval: float, last_event_id: str | None,
                 on_events: Callable[[str], None], describe: Callable[[BaseException], str]) -> None:
        self.client, self.ctx = client, ctx
        self.interval = first_interval
        self.first_interval = first_interval
        self.last_event_id = last_event_id
        self.on_events = on_events  # called with the new last event id (to save it)
        self.describe = describe
        self.latest = ""
        self.events_logged = 0

    def _events(self, job_id: str) -> None:
        from tunepipe.openai_ft.client import is_transient

        try:
            events = new_events(self.client, job_id, self.last_event_id)
        except Exception as e:
            if not is_transient(e):
                raise
            self.ctx.log.info("could not fetch the job's events this time: %s", self.describe(e))
            return
        for ev in events:
            self.ctx.log.info("openai %s [%s] %s", _when(ev.created_at), ev.level, ev.message)
            self.latest = ev.message
        if events:
            self.events_logged += len(events)
            self.last_event_id = events[-1].id
            self.on_events(self.last_event_id)

    def _show(self, job: Any) -> None:
        status = get(job, "status")
        note = f"{get(job, 'id')} {status}"
        if self.latest:
            note += f": {self.latest}"
        self.ctx.progress(note[:120])

    def follow(self, job: Any) -> Any:
        """Poll until the job's status is succeeded, failed or cancelled; return the job."""
        from tunepipe.openai_ft.client import POLL_TIMEOUT_S, is_transient

        status = get(job, "status")
        self.ctx.log.info("job %s: %s", job.id, status)
        failures = 0
        while True:
            self._events(job.id)
            self._show(job)
            if get(job, "status") in TERMINAL:
                return job
            sleep_sliced(self.interval, self.ctx.check_cancelled)
            self.interval = min(self.interval * 1.5, MAX_POLL_SECONDS)
            try:
                job = self.client.fine_tuning.jobs.retrieve(job.id, timeout=POLL_TIMEOUT_S)
            except Exception as e:
                if not is_transient(e):
                    raise
                failures += 1
                self.ctx.log.warning("checking job %s: %s (%d in a row; retrying)", job.id, self.describe(e), failures)
                if failures >= MAX_POLL_FAILURES:
                    raise StageFailed(self.ctx.stage, (
                        f"lost contact with OpenAI while following job {job.id} ({failures} errors in a row, the "
                        f"last: {self.describe(e)}). The job keeps running there; run again to re-attach")) from None
                continue
            failures = 0
            if get(job, "status") != status:
                status = get(job, "status")
                self.ctx.log.info("job %s: %s", job.id, status)
                if status == "paused":
                    self.ctx.log.warning("job %s is paused: resume it (dashboard or the API's jobs.resume) and "
                                         "tunepipe carries on; it keeps waiting meanwhile", job.id)
