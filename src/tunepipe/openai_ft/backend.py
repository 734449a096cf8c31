"""train_openai: the train stage on OpenAI, from JSONL examples to a fine-tuned model's card.

Steps: settings and the API key (a UserError if missing) -> estimate and budget guard (before any
request) -> re-attach to this stage key's job (scratch, then the account's jobs by metadata) or
prepare, upload (reusing identical uploads) and create it exactly once -> follow it -> on success
write ``model.json``, ``metrics.csv``, ``loss.csv`` and ``metrics.json`` into ``out``; on failure or
cancellation raise StageFailed with OpenAI's error and forget the job id so the next run decides
afresh (see :mod:`tunepipe.openai_ft.jobs` for when it creates a new job).

Ctrl-C stops following, not the job: it keeps running (and billing) on OpenAI, and the next run
re-attaches to it. The log says how to cancel it instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tunepipe.crash import crashpoint
from tunepipe.data.chat import MIN_EXAMPLES
from tunepipe.errors import StageFailed, UserError
from tunepipe.openai_ft import results, state
from tunepipe.openai_ft.config import OpenAISettings, job_metadata, key_tag, settings_from_params
from tunepipe.openai_ft.estimate import CostEstimate, estimate
from tunepipe.openai_ft.results import ENDED_BADLY, TERMINAL
from tunepipe.plugins import Cancelled, StageContext

MAX_HANDOVERS = 3  # survivors followed in turn after the followed job was cancelled as a duplicate


def budget_guard(est: CostEstimate, settings: OpenAISettings) -> None:
    """UserError when the estimate is over ``max_cost_usd``, or unknown while a maximum is set."""
    limit = settings.max_cost_usd
    if limit is None:
        return
    if est.usd is None:
        raise UserError(f"openai.max_cost_usd is set (${limit:,.2f}) but no price is known for {est.model}, so the "
                        f"cost of {est.billable_tokens:,} billable tokens cannot be checked: add the price under "
                        f"openai.prices (e.g. prices: {{{est.model}: 3.0}}, USD per 1M training tokens), or remove "
                        "max_cost_usd")
    if est.usd > limit:
        raise UserError(f"the estimated cost ${est.usd:,.2f} is over openai.max_cost_usd ${limit:,.2f}: {est}. "
                        "Nothing was uploaded. Raise max_cost_usd, train fewer epochs, or use fewer or shorter "
                        "examples")


@contextlib.contextmanager
def _api(doing: str, ctx: StageContext, settings: OpenAISettings) -> Iterator[None]:
    """Turn SDK errors into UserError / StageFailed with what was being done."""
    import openai

    from tunepipe.openai_ft.client import fail

    try:
        yield
    except openai.OpenAIError as e:
        fail(e, doing=doing, stage=ctx.stage, settings=settings)


def _again_if_unreadable(ctx: StageContext, step: Callable[[], Any]) -> Any:
    """``step()``, run again when the API's answers to it stayed garbled (see client.again_if_unreadable)."""
    from tunepipe.openai_ft.client import again_if_unreadable
    from tunepipe.openai_ft.jobs import sleep_sliced

    return again_if_unreadable(step, log=ctx.log, sleep=lambda t: sleep_sliced(t, ctx.check_cancelled))


def _endpoint(settings: OpenAISettings) -> str:
    from tunepipe.openai_ft.client import endpoint_label

    return endpoint_label(settings)


class _FineTuning:
    """One stage's fine-tuning on OpenAI: its job found again or created once, followed to its end,
    and its results written; what it learns is saved in the stage's scratch folder as it goes."""

    def __init__(self, ctx: StageContext, train: Path, validation: Path | None, settings: OpenAISettings,
                 est: CostEstimate, client: Any) -> None:
        self.ctx, self.train, self.validation = ctx, train, validation
        self.s, self.est, self.client = settings, est, client
        self.st = state.load(ctx.scratch)

    def save(self) -> None:
        state.save(self.ctx.scratch, self.st)

    # -- find or create ------------------------------------------------------------------------
    def job(self) -> Any:
        import openai

        from tunepipe.openai_ft import jobs
        from tunepipe.openai_ft.client import describe

        ctx, st = self.ctx, self.st
        if st.job_id:
            with _api(f"retrieving job {st.job_id}", ctx, self.s):
                try:
                    job = self.client.fine_tuning.jobs.retrieve(st.job_id)
                except openai.NotFoundError:
                    job = None
            if job is not None:
                ctx.say(f"re-attaching to job {job.id} (its id was saved by an earlier run of this stage)")
                return job
            ctx.log.warning("job %s saved by an earlier run is not found at this endpoint: looking again", st.job_id)
            st.job_id, st.last_event_id = None, None
            self.save()
        tag = key_tag(ctx.key)
        with _api("listing fine-tuning jobs", ctx, self.s):
            found = jobs.jobs_for_key(self.client, tag)
        decision = jobs.decide(found, st.ended)
        if decision.action == "attach":
            job = decision.job
            ctx.say(f"job {job.id} ({job.status}) was already created for this stage key (tunepipe_key={tag}): "
                    "re-attaching instead of creating another")
            self.cancel_duplicates([j for j in found if j.id != job.id and j.status not in TERMINAL], job)
            st.job_id, st.last_event_id = job.id, None
            self.save()
            return job
        if decision.action == "refuse":
            raise UserError(decision.message)
        if decision.message:
            ctx.log.warning("%s", decision.message)
        training_file, validation_file = self.upload()
        request: dict[str, Any] = {"model": self.s.model, "training_file": training_file,
                                   "method": self.s.method_payload(), "suffix": self.s.suffix,
                                   "metadata": job_metadata(self.s, ctx.stage, ctx.key)}
        if validation_file:
            request["validation_file"] = validation_file
        if self.s.seed is not None:
            request["seed"] = self.s.seed
        ctx.say(f"no job of this stage key at {_endpoint(self.s)}: creating one ({self.est})")
        ctx.log.info("creating the job: model %s, method %s, suffix %s, seed %s", self.s.model,
                     request["method"], self.s.suffix, self.s.seed)
        ctx.progress("creating the fine-tuning job")
        with _api("creating the fine-tuning job", ctx, self.s):
            job = jobs.create_job(self.client, request, tag, log=ctx.log,
                                  sleep=lambda t: jobs.sleep_sliced(t, ctx.check_cancelled),
                                  check=ctx.check_cancelled, describe=lambda e: describe(e, self.s))
        crashpoint("openai-after-create")
        st.job_id, st.last_event_id = job.id, None
        self.save()
        crashpoint("openai-after-save")
        ctx.say(f"created job {job.id}")
        return self.reconcile(job)

    # -- one job per key across machines (see tunepipe.openai_ft.jobs, "Across machines") ------
    def reconcile(self, job: Any) -> Any:
        """Keep this key's surviving job, cancel the others (a run on another machine may have
        created one at the same time); follow the survivor from now on."""
        from tunepipe.openai_ft import jobs

        with _api("listing fine-tuning jobs", self.ctx, self.s):
            keep, others = jobs.duplicates(self.client, job, key_tag(self.ctx.key))
        self.cancel_duplicates(others, keep)
        if keep.id != job.id:
            self.ctx.say(f"job {keep.id} of this stage key was created first (by another run): following it")
            self.st.job_id, self.st.last_event_id = keep.id, None
            self.save()
        return keep

    def cancel_duplicates(self, others: list[Any], keep: Any) -> None:
        """Cancel ``others`` (live jobs of this key besides ``keep``); a failure is only a warning."""
        import openai

        from tunepipe.openai_ft.client import describe

        for other in others:
            billed = "" if other.status in ("validating_files", "queued") else (
                f"; it was already {other.status}, so what it trained so far is billed")
            try:
                self.client.fine_tuning.jobs.cancel(other.id)
            except openai.OpenAIError as e:
                self.ctx.log.warning("could not cancel job %s, a duplicate of %s for this stage key (%s): cancel "
                                     "it on the OpenAI dashboard", other.id, keep.id, describe(e, self.s))
                continue
            self.ctx.say(f"cancelled job {other.id}: a duplicate of job {keep.id} for this stage key, created by "
                         f"a concurrent run{billed}")

    def successor(self, job: Any) -> Any | None:
        """After ``job`` ended cancelled: the live job of this key that replaced it (a concurrent run
        cancelled ``job`` as its duplicate), or None."""
        from tunepipe.openai_ft import jobs

        with _api("listing fine-tuning jobs", self.ctx, self.s):
            found = jobs.jobs_for_key(self.client, key_tag(self.ctx.key))
        live = [j for j in found if j.id != job.id and j.status not in ENDED_BADLY]
        if not live:
            return None
        keep = jobs.survivor(live)
        self.ctx.say(f"job {job.id} was cancelled as a duplicate of job {keep.id} for this stage key: following it")
        self.st.job_id, self.st.last_event_id = keep.id, None
        self.save()
        return keep

    def upload(self) -> tuple[str, str | None]:
        from tunepipe.openai_ft import upload
        from tunepipe.openai_ft.jobs import sleep_sliced
        from tunepipe.openai_ft.prepare import prepare

        ctx = self.ctx
        folder = ctx.scratch / "upload"
        ids: list[str | None] = []
        for role, source in (("train", self.train), ("validation", self.validation)):
            prepared = prepare(source, folder, role, self.s.method) if source is not None and source.exists() else None
            if prepared is None:
                if role == "train":
                    raise UserError(f"{self.train}: no training examples in it; the train stage needs at least "
                                    "10 (OpenAI's minimum)")
                ctx.log.info("no validation examples: training without a validation file")
                ids.append(None)
                continue
            ctx.check_cancelled()
            with _api(f"looking for an earlier upload of the {role} file", ctx, self.s):
                file, where = upload.find_existing(self.client, prepared, self.st)
            if file is not None:
                ctx.log.info("%s file: reusing %s (%s, %d bytes, found in the %s)", role, file.id, file.filename,
                             file.bytes, where)
            else:
                ctx.progress(f"uploading the {role} file ({prepared.bytes:,} bytes)")
                with _api(f"uploading the {role} file", ctx, self.s):
                    file = upload.upload(self.client, prepared)
                ctx.log.info("%s file: uploaded %s as %s (%d examples, %d bytes, sha256 %s)", role, prepared.path.name,
                             file.id, prepared.examples, prepared.bytes, prepared.sha256)
            with _api(f"waiting for the {role} file to be processed", ctx, self.s):
                file = upload.wait_processed(self.client, file, ctx.check_cancelled,
                                             lambda t: sleep_sliced(t, ctx.check_cancelled))
            if getattr(file, "status", None) == "error":
                raise UserError(f"OpenAI could not process the {role} file {file.id}: "
                                f"{getattr(file, 'status_details', None) or 'no details given'}")
            self.st.files[prepared.sha256] = {"id": file.id, "bytes": prepared.bytes, "filename": file.filename}
            self.save()
            ids.append(file.id)
        return ids[0] or "", ids[1]

    # -- follow and finish ---------------------------------------------------------------------
    def follow(self, job: Any) -> Any:
        from tunepipe.openai_ft.client import describe
        from tunepipe.openai_ft.jobs import Follower

        def saved(event_id: str) -> None:
            self.st.last_event_id = event_id
            self.save()

        follower = Follower(self.client, self.ctx, first_interval=self.s.poll_seconds,
                            last_event_id=self.st.last_event_id, on_events=saved,
                            describe=lambda e: describe(e, self.s))
        with _api(f"following job {job.id}", self.ctx, self.s):
            return follower.follow(job)

    def ended_badly(self, job: Any) -> None:
        from tunepipe.openai_ft.jobs import ended_entry

        entry = ended_entry(job)
        self.st.ended = [e for e in self.st.ended if e.get("id") != job.id] + [entry]
        self.st.job_id, self.st.last_event_id = None, None
        self.save()
        if job.status == "cancelled":
            raise StageFailed(self.ctx.stage, f"the fine-tuning job {job.id} was cancelled (on the OpenAI dashboard "
                                              "or through the API). Run again to start a new job")
        raise StageFailed(self.ctx.stage, (
            f"the fine-tuning job {job.id} failed: {results.describe_error(entry['error'])}. Fix what it names and "
            "run again: changed data or parameters start a new job; an unchanged re-run is refused when the "
            "error names a parameter (it would fail the same way) and otherwise starts a new job"))

    def finish(self, job: Any, out: Path) -> dict[str, Any]:
        import openai

        from tunepipe.openai_ft.client import describe
        from tunepipe.openai_ft.jobs import all_events

        ctx = self.ctx
        checkpoints: list[dict[str, Any]] = []
        try:
            checkpoints = results.checkpoint_records(self.client.fine_tuning.jobs.checkpoints.list(job.id, limit=100))
        except openai.OpenAIError as e:
            ctx.log.warning("could not list the job's checkpoints (%s): model.json lists none", describe(e, self.s))
        columns: list[str] = []
        rows: list[dict[str, Any]] = []
        source = result_csv = None
        for file_id in job.result_files or []:
            try:
                text = results.decode_result_file(self.client.files.content(file_id).content)
            except (openai.OpenAIError, ValueError) as e:
                why = describe(e, self.s) if isinstance(e, openai.OpenAIError) else str(e)
                ctx.log.warning("could not read the result file %s (%s)", file_id, why)
                continue
            columns, rows = results.parse_metrics_csv(text)
            if rows:
                source, result_csv = f"result file {file_id}", text
                break
            ctx.log.warning("the result file %s holds no metrics rows", file_id)
        if not rows:
            try:
                rows = results.metrics_from_events(all_events(self.client, job.id))
            except openai.OpenAIError as e:
                ctx.log.warning("could not read the job's events for metrics (%s)", describe(e, self.s))
            if rows:
                source = "metrics events"
                extra = sorted({k for r in rows for k in r} - set(results.RESULT_COLUMNS))
                columns = list(results.RESULT_COLUMNS) + extra
            else:
                ctx.log.warning("no training metrics: metrics.csv and loss.csv hold only their header")
        record = results.model_record(job, checkpoints=checkpoints, estimate=self.est.as_dict(),
                                      metrics_source=source)
        summary = results.metrics_summary(rows, source=source, trained_tokens=job.trained_tokens)
        results.write_artifacts(out, record, columns, rows, summary, result_csv=result_csv)
        ctx.say(f"fine-tuned model {job.fine_tuned_model} (job {job.id}, {job.trained_tokens} trained tokens)")
        return {"fine_tuned_model": job.fine_tuned_model, "job_id": job.id, "status": job.status,
                "trained_tokens": job.trained_tokens, "est_billable_tokens": self.est.billable_tokens,
                "est_cost_usd": self.est.usd, "epochs": self.est.epochs,
                "final_train_loss": summary["final_train_loss"]}


def train_openai(ctx: StageContext, train: Path, validation: Path | None, params: Mapping[str, Any], out: Path,
                 *, http_client: Any = None) -> dict[str, Any]:
    """Fine-tune on OpenAI; write the model card and metrics into ``out``; return a summary.

    ``http_client``: an ``openai.DefaultHttpxClient`` to send requests through (a proxy, or tests'
    fault injection); by default the SDK's own.
    """
    from tunepipe.openai_ft.client import api_key, make_client

    settings = settings_from_params(params, ctx.stage)
    api_key(settings)  # a missing key is the user's to fix before anything else
    if validation is not None and not validation.is_file():
        raise UserError(f"the validation file {validation} does not exist")
    ctx.progress("estimating tokens and cost")
    est = estimate(train, params)
    if est.examples < MIN_EXAMPLES:
        raise UserError(f"{train}: {est.examples} training example(s); OpenAI needs at least {MIN_EXAMPLES} "
                        "(50 to 100 good ones usually show clear gains)")
    ctx.say(f"estimate: {est}")  # before anything is uploaded or started
    if est.note:
        ctx.log.warning("%s", est.note)
    ctx.progress(f"~{est.billable_tokens:,} billable tokens" + (f", ~${est.usd:,.2f}" if est.usd is not None else ""))
    budget_guard(est, settings)
    ctx.check_cancelled()
    ctx.log.info("OpenAI endpoint: %s", _endpoint(settings))
    client = make_client(settings, http_client=http_client)
    run = _FineTuning(ctx, train, validation, settings, est, client)
    job = None
    try:
        job = _again_if_unreadable(ctx, run.job)  # it looks before it acts: a repeat creates nothing twice
        job = run.follow(job)
        for _ in range(MAX_HANDOVERS):  # cancelled as a duplicate by a concurrent run: follow the survivor
            nxt = run.successor(job) if job.status == "cancelled" else None
            if nxt is None:
                break
            job = run.follow(nxt)
    except Cancelled:
        if job is not None or run.st.job_id:
            job_id = job.id if job is not None else run.st.job_id
            ctx.log.warning("stopped following job %s: it keeps running on OpenAI (and is billed). Run again to "
                            "re-attach, or cancel it on the OpenAI dashboard (or with the API: "
                            "fine_tuning.jobs.cancel(%r))", job_id, job_id)
        raise
    if job.status != "succeeded":
        run.ended_badly(job)
    # duplicates created meanwhile by runs that died before reconciling
    job = _again_if_unreadable(ctx, lambda: run.reconcile(job))
    return run.finish(job, out)
