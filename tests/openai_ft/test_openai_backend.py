"""The OpenAI backend against the real API emulator (@copilotkit/aimock): no mocks of the SDK or HTTP."""

from __future__ import annotations

import hashlib
import json
import re
import urllib.request

import pytest
from openai_helpers import MODEL, Ctx, chaos_client, chat_example, make_params, write_jsonl

from tunepipe.errors import StageFailed, UserError
from tunepipe.openai_ft.backend import train_openai
from tunepipe.openai_ft.state import load
from tunepipe.plugins import Cancelled

EVENTS = ["Job created, validating training file", "Training file validated, job queued", "Training started",
          "Training complete, model"]


def _event_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if re.match(r"INFO openai \S+ \S+ \[", line)]


def test_happy_path_succeeds_with_events_oldest_first_once_each(aimock, env_key, data, make_ctx) -> None:
    c = make_ctx(stage="Marv FT (v2)")
    summary = train_openai(c.ctx, data["train"], data["validation"], make_params(aimock.base_url), c.out)

    assert summary["status"] == "succeeded"
    assert summary["fine_tuned_model"].startswith(f"ft:{MODEL}:aimock:marv-ft-v2:")
    assert summary["job_id"].startswith("ftjob-")
    assert summary["est_billable_tokens"] > 0 and summary["est_cost_usd"] > 0

    model = json.loads((c.out / "model.json").read_text())
    assert model["format"] == "tunepipe-model/1" and model["backend"] == "openai"
    assert model["base_model"] == MODEL and model["fine_tuned_model"] == summary["fine_tuned_model"]
    assert model["job"]["id"] == summary["job_id"] and model["job"]["status"] == "succeeded"
    assert model["job"]["method"] == "supervised" and model["job"]["finished_at"]
    assert model["checkpoints"] == [] and model["result_files"]
    assert (c.out / "loss.csv").read_text() == "step,train_loss,valid_loss\n"
    assert json.loads((c.out / "metrics.json").read_text())["source"] is None

    events = _event_lines(c.log())
    assert len(events) == 4
    for line, message in zip(events, EVENTS, strict=True):
        assert message in line
    log = c.log()
    assert "could not list the job's checkpoints" in log and "could not read the result file" in log
    assert any("succeeded" in n for n in c.notes) and any("billable tokens" in n for n in c.notes)

    creates = aimock.job_creates()
    assert len(creates) == 1
    body = creates[0]["body"]
    assert body["model"] == MODEL and body["suffix"] == "marv-ft-v2" and body["seed"] == 42
    assert body["method"] == {"type": "supervised"}  # every hyperparameter "auto": left to the API
    assert body["metadata"] == {"tunepipe_stage": "Marv FT (v2)", "tunepipe_key": c.key[:32]}
    assert body["validation_file"] and body["training_file"] != body["validation_file"]


def test_uploaded_bytes_are_stripped_and_deterministic(aimock, env_key, data, make_ctx, tmp_path) -> None:
    c = make_ctx()
    train_openai(c.ctx, data["train"], None, make_params(aimock.base_url), c.out)
    (upload,) = aimock.uploads()
    assert upload["body"]["purpose"] == "fine-tune"
    job = aimock.job_creates()[0]["body"]
    assert "validation_file" not in job
    with urllib.request.urlopen(f"{aimock.base_url}/files/{job['training_file']}/content") as resp:
        content = resp.read()
    expected = "".join(json.dumps({"messages": chat_example(i)["messages"]}, separators=(",", ":")) + "\n"
                       for i in range(12)).encode()
    assert content == expected  # meta gone, compact, one example per line
    sha = hashlib.sha256(content).hexdigest()
    assert upload["body"]["sha256"] == sha and upload["body"]["filename"] == f"tunepipe-{sha[:16]}-train.jsonl"


def test_second_run_reuses_uploaded_files(aimock, env_key, data, make_ctx, tmp_path) -> None:
    first = make_ctx("first")
    train_openai(first.ctx, data["train"], data["validation"], make_params(aimock.base_url), first.out)
    assert len(aimock.uploads()) == 2

    # another stage key (other parameters), a fresh scratch, the same data with other meta: no upload
    other = write_jsonl(tmp_path / "other.jsonl", [dict(chat_example(i), meta={"x": i * 7}) for i in range(12)])
    second = make_ctx("second")
    train_openai(second.ctx, other, data["validation"], make_params(aimock.base_url, seed=7), second.out)
    assert len(aimock.uploads()) == 2
    creates = aimock.job_creates()
    assert len(creates) == 2
    assert creates[0]["body"]["training_file"] == creates[1]["body"]["training_file"]
    assert creates[0]["body"]["validation_file"] == creates[1]["body"]["validation_file"]
    assert "found in the account" in second.log()

    # scratch kept (a re-run of the same key after a failure): reused from scratch, checked by retrieve
    third = Ctx(tmp_path / "second", key="f" * 64)  # same scratch folder, another key
    third.ctx.scratch.joinpath("openai.json").write_text(
        json.dumps({**json.loads(second.ctx.scratch.joinpath("openai.json").read_text()), "job_id": None}))
    train_openai(third.ctx, other, None, make_params(aimock.base_url, seed=8), third.out)
    third.close()
    assert len(aimock.uploads()) == 2
    assert "found in the scratch" in third.log()


def test_cancelled_while_following_then_rerun_reattaches(aimock, env_key, data, make_ctx) -> None:
    def stop_when_queued(note: str, c: Ctx) -> None:
        if note.endswith("queued") or " queued:" in note:
            c.cancel.set()  # Ctrl-C: the runner sets the event, the backend stops at its next check

    c = make_ctx(on_progress=stop_when_queued)
    params = make_params(aimock.base_url)
    with pytest.raises(Cancelled):
        train_openai(c.ctx, data["train"], data["validation"], params, c.out)
    job_id = load(c.ctx.scratch).job_id
    assert job_id and job_id.startswith("ftjob-")
    assert "keeps running on OpenAI" in c.log() and not (c.out / "model.json").exists()

    again = Ctx(c.root, key=c.key)  # same key and scratch: a plain re-run
    summary = train_openai(again.ctx, data["train"], data["validation"], params, again.out)
    again.close()
    assert summary["job_id"] == job_id and summary["status"] == "succeeded"
    assert "re-attaching to job" in again.log()
    assert len(aimock.job_creates()) == 1 and len(aimock.uploads()) == 2
    # each event logged once over both runs
    assert [line.split("] ", 1)[1][:20] for line in _event_lines(again.log())] == [e[:20] for e in EVENTS]


def test_ctrl_c_is_prompt_during_a_long_wait_between_polls(aimock, env_key, data, make_ctx) -> None:
    import threading
    import time

    def stop_soon(note: str, c: Ctx) -> None:
        if "validating_files" in note:
            threading.Timer(0.3, c.cancel.set).start()

    c = make_ctx(on_progress=stop_soon)
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        train_openai(c.ctx, data["train"], None, make_params(aimock.base_url, poll_seconds=60), c.out)
    assert time.monotonic() - t0 < 5  # not the 60 s poll interval


def test_rerun_after_success_without_scratch_reattaches(aimock, env_key, data, make_ctx, tmp_path) -> None:
    first = make_ctx("first")
    params = make_params(aimock.base_url)
    done = train_openai(first.ctx, data["train"], None, params, first.out)
    again = make_ctx("again", key=first.key)  # e.g. the cache was cleared: same key, empty scratch
    summary = train_openai(again.ctx, data["train"], None, params, again.out)
    assert summary["job_id"] == done["job_id"] and summary["fine_tuned_model"] == done["fine_tuned_model"]
    assert len(aimock.job_creates()) == 1 and len(aimock.uploads()) == 1
    assert "already created for this stage key" in again.log()


def test_dpo_method_payload(aimock, env_key, data, make_ctx) -> None:
    c = make_ctx()
    params = make_params(aimock.base_url, model="gpt-4.1-mini-2025-04-14", epochs=2, batch_size="auto", seed=1,
                         method="dpo", beta=0.2, learning_rate_multiplier=0.5, suffix="prefs",
                         metadata={"owner": "team-a"})
    summary = train_openai(c.ctx, data["dpo"], None, params, c.out)
    body = aimock.job_creates()[0]["body"]
    assert body["method"] == {"type": "dpo", "dpo": {"hyperparameters": {
        "n_epochs": 2, "learning_rate_multiplier": 0.5, "beta": 0.2}}}
    assert body["suffix"] == "prefs" and body["seed"] == 1
    assert body["metadata"]["owner"] == "team-a" and body["metadata"]["tunepipe_key"] == c.key[:32]
    model = json.loads((c.out / "model.json").read_text())
    assert model["job"]["method"] == "dpo"
    assert model["hyperparameters"] == {"n_epochs": 2, "learning_rate_multiplier": 0.5, "beta": 0.2}
    assert summary["epochs"] == 2


def test_supervised_method_on_dpo_data_is_a_user_error(aimock, env_key, data, make_ctx) -> None:
    c = make_ctx()
    with pytest.raises(UserError, match="set openai.method: dpo"):
        train_openai(c.ctx, data["dpo"], None, make_params(aimock.base_url), c.out)
    assert aimock.journal() == []


def test_too_few_examples_or_missing_files_are_user_errors(aimock, env_key, data, make_ctx, tmp_path) -> None:
    c = make_ctx()
    few = write_jsonl(tmp_path / "few.jsonl", [chat_example(i) for i in range(9)])
    with pytest.raises(UserError, match="9 training example.*at least 10"):
        train_openai(c.ctx, few, None, make_params(aimock.base_url), c.out)
    with pytest.raises(UserError, match="the training file .*nope.jsonl does not exist"):
        train_openai(c.ctx, tmp_path / "nope.jsonl", None, make_params(aimock.base_url), c.out)
    with pytest.raises(UserError, match="the validation file .*nope.jsonl does not exist"):
        train_openai(c.ctx, data["train"], tmp_path / "nope.jsonl", make_params(aimock.base_url), c.out)
    assert aimock.journal() == []


def test_budget_guard_refuses_before_any_request(aimock, env_key, data, make_ctx) -> None:
    c = make_ctx()
    with pytest.raises(UserError, match=r"over openai.max_cost_usd \$0.00") as e:
        train_openai(c.ctx, data["train"], None, make_params(aimock.base_url, max_cost_usd=0.001), c.out)
    assert "billable tokens" in str(e.value) and "Nothing was uploaded" in str(e.value)
    with pytest.raises(UserError, match="no price is known for my-model.*openai.prices"):
        train_openai(c.ctx, data["train"], None, make_params(aimock.base_url, model="my-model", max_cost_usd=5), c.out)
    assert aimock.journal() == []
    # a price given by the user makes it pass
    summary = train_openai(c.ctx, data["train"], None,
                           make_params(aimock.base_url, model="my-model", max_cost_usd=5, prices={"my-model": 1.0}),
                           c.out)
    assert summary["status"] == "succeeded" and summary["est_cost_usd"] < 5


def test_missing_key_is_a_user_error_naming_the_variable(aimock, monkeypatch, data, make_ctx) -> None:
    monkeypatch.delenv("MY_OPENAI_KEY", raising=False)
    c = make_ctx()
    with pytest.raises(UserError, match=r"MY_OPENAI_KEY, which is not set: .*export MY_OPENAI_KEY="):
        train_openai(c.ctx, data["train"], None, make_params(aimock.base_url, api_key_env="MY_OPENAI_KEY"), c.out)
    assert aimock.journal() == []


def test_rejected_key_is_a_user_error(aimock_factory, env_key, data, make_ctx) -> None:
    server = aimock_factory(api_keys=["sk-the-only-good-one"])
    c = make_ctx()
    with pytest.raises(UserError, match="OpenAI rejected the API key in OPENAI_API_KEY \\(HTTP 401\\)") as e:
        train_openai(c.ctx, data["train"], None, make_params(server.base_url), c.out)
    assert env_key not in str(e.value)
    assert len(server.journal()) <= 3  # the first request, not retried


def test_secret_never_written(aimock_factory, monkeypatch, data, make_ctx, tmp_path, capfd, caplog) -> None:
    import logging

    secret = "sk-proj-DISTINCTIVE-" + hashlib.sha256(b"tunepipe").hexdigest()
    server = aimock_factory(api_keys=[secret])
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    caplog.set_level(logging.DEBUG)  # the SDK's and httpx's own debug logs too
    c = make_ctx()
    params = make_params(server.base_url)
    summary = train_openai(c.ctx, data["train"], data["validation"], params, c.out)
    with pytest.raises(StageFailed) as failure:  # an error path too: the job cancelled behind our back
        _cancel_during(server, secret, data, make_ctx, params)
    monkeypatch.setenv("OPENAI_API_KEY", secret[:-1])  # and a rejected key
    with pytest.raises(UserError) as rejected:
        train_openai(make_ctx("rejected").ctx, data["train"], None, make_params(server.base_url, seed=5), c.out)
    assert secret not in str(failure.value) and secret[:-1] not in str(rejected.value)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "model.json" for p in written) and any(p.name == "openai.json" for p in written)
    for p in written:
        assert secret.encode() not in p.read_bytes(), p
    out, err = capfd.readouterr()
    for text in (out, err, caplog.text, json.dumps(summary), "\n".join(c.notes)):
        assert secret not in text
    assert secret[-12:] not in caplog.text


def _canceller(server, key):
    """A progress hook that cancels the job through the API (as a user on the dashboard would) once it runs."""
    import openai

    sdk = openai.OpenAI(api_key=key, base_url=server.base_url)

    def cancel_when_running(note: str, c: Ctx) -> None:
        if note.endswith(" running") or " running:" in note:
            sdk.fine_tuning.jobs.cancel(note.split()[0])

    return cancel_when_running


def _cancel_during(server, key, data, make_ctx, params) -> Ctx:
    c = make_ctx("cancelled", on_progress=_canceller(server, key))
    train_openai(c.ctx, data["train"], None, params, c.out)
    return c


def test_job_cancelled_remotely_fails_then_rerun_creates_a_new_job(aimock, env_key, data, make_ctx) -> None:
    params = make_params(aimock.base_url)
    c = make_ctx("first", on_progress=_canceller(aimock, env_key))
    with pytest.raises(StageFailed, match=r"the fine-tuning job (ftjob-\S+) was cancelled .*Run again") as e:
        train_openai(c.ctx, data["train"], None, params, c.out)
    st = load(c.ctx.scratch)
    assert st.job_id is None and st.ended[0]["status"] == "cancelled" and st.ended[0]["id"] in str(e.value)
    assert not (c.out / "model.json").exists()

    again = Ctx(c.root, key=c.key)  # a plain re-run: same key, same scratch
    summary = train_openai(again.ctx, data["train"], None, params, again.out)
    again.close()
    assert summary["status"] == "succeeded" and summary["job_id"] != st.ended[0]["id"]
    assert len(aimock.job_creates()) == 2 and len(aimock.uploads()) == 1
    assert "did not succeed: creating a new job" in again.log()
    assert load(c.ctx.scratch).job_id == summary["job_id"]


FILES = r"/v1/files"
JOBS = r"/v1/fine_tuning/jobs"
JOB = r"/v1/fine_tuning/jobs/ftjob-[^/]+"


def _statuses(aimock, path: str, method: str) -> list[int]:
    return [e["response"]["status"] for e in aimock.journal(method=method)
            if re.fullmatch(path, e["path"].split("?")[0])]


def test_chaos_rate_limit_on_upload_is_retried_by_the_sdk(aimock, env_key, data, make_ctx) -> None:
    http = chaos_client([{"method": "POST", "path": FILES, "header": "x-aimock-chaos-ratelimit", "times": 1}])
    c = make_ctx()
    summary = train_openai(c.ctx, data["train"], None, make_params(aimock.base_url), c.out, http_client=http)
    assert summary["status"] == "succeeded"
    assert _statuses(aimock, FILES, "POST") == [429, 200]  # Retry-After honoured, then the upload
    assert len(aimock.job_creates()) == 1


def test_chaos_disconnect_and_rate_limit_on_create_create_exactly_one_job(aimock, env_key, data, make_ctx) -> None:
    http = chaos_client([{"method": "POST", "path": JOBS, "header": "x-aimock-chaos-disconnect", "times": 1},
                         {"method": "POST", "path": JOBS, "header": "x-aimock-chaos-ratelimit", "times": 1}])
    c = make_ctx()
    summary = train_openai(c.ctx, data["train"], None, make_params(aimock.base_url), c.out, http_client=http)
    assert summary["status"] == "succeeded"
    assert _statuses(aimock, JOBS, "POST") == [0, 429, 200]  # dropped, rate-limited, created: once
    assert len(aimock.job_creates()) == 1
    assert c.log().count("checking whether OpenAI created it anyway") == 2


def test_lost_answer_to_create_finds_the_created_job(aimock, env_key, data, make_ctx) -> None:
    http = chaos_client([], lose_responses=[{"method": "POST", "path": JOBS, "times": 1}])
    c = make_ctx()
    summary = train_openai(c.ctx, data["train"], None, make_params(aimock.base_url), c.out, http_client=http)
    assert http.losses[0]["seen"] == 1
    assert summary["status"] == "succeeded"
    assert len(aimock.job_creates()) == 1  # OpenAI created it; the SDK did not retry the POST; we found it
    assert "exists although its create request's answer was lost" in c.log()


def test_chaos_server_errors_while_polling_outlast_the_sdk_retries(aimock, env_key, data, make_ctx) -> None:
    # 4 failing retrieves: the SDK tries 3 times (2 retries), then the backend's poll loop retries
    http = chaos_client([{"method": "GET", "path": JOB, "header": "x-aimock-chaos-drop", "times": 3},
                         {"method": "GET", "path": JOB, "header": "x-aimock-chaos-disconnect", "times": 1}])
    c = make_ctx()
    summary = train_openai(c.ctx, data["train"], None, make_params(aimock.base_url), c.out, http_client=http)
    assert summary["status"] == "succeeded"
    assert _statuses(aimock, JOB, "GET")[:5] == [500, 500, 500, 0, 200]
    assert "HTTP 500" in c.log() and "(1 in a row; retrying)" in c.log()
    assert len(aimock.job_creates()) == 1


def test_bad_request_on_create_is_a_user_error_quoting_the_api(aimock, env_key) -> None:
    """A real 400 from the emulator, then OpenAI's shape with a param (the emulator sends none)."""
    import httpx2
    import openai

    from tunepipe.openai_ft.client import fail
    from tunepipe.openai_ft.config import settings_from_params

    settings = settings_from_params(make_params(aimock.base_url), "train")
    sdk = openai.OpenAI(api_key=env_key, base_url=aimock.base_url)
    with pytest.raises(openai.BadRequestError) as real:
        sdk.fine_tuning.jobs.create(model=MODEL, training_file="file-x", method={"type": "supervised", "supervised": {
            "hyperparameters": {"n_epochs": 0}}})
    with pytest.raises(UserError, match=r"OpenAI refused the request while creating the job: HTTP 400: Invalid "
                                        r"parameter: 'method.supervised.hyperparameters.n_epochs'"):
        fail(real.value, doing="creating the job", stage="train", settings=settings)

    request = httpx2.Request("POST", aimock.base_url + "/fine_tuning/jobs")
    body = {"message": "Model gpt-x is not available for fine-tuning or does not exist.",
            "type": "invalid_request_error", "param": "model", "code": "model_not_available"}
    err = openai.BadRequestError("Error code: 400", response=httpx2.Response(400, request=request), body=body)
    with pytest.raises(UserError) as e:
        fail(err, doing="creating the job", stage="train", settings=settings)
    assert "model_not_available: Model gpt-x is not available" in str(e.value) and "(param: model)" in str(e.value)


def test_events_are_paginated_and_returned_oldest_first(aimock, env_key, monkeypatch) -> None:
    import openai

    from tunepipe.openai_ft import jobs

    sdk = openai.OpenAI(api_key=env_key, base_url=aimock.base_url)
    job = sdk.fine_tuning.jobs.create(model=MODEL, training_file="file-x")
    for _ in range(3):
        sdk.fine_tuning.jobs.retrieve(job.id)
    monkeypatch.setattr(jobs, "EVENT_PAGE", 1)  # one event per page: four pages
    events = jobs.new_events(sdk, job.id, None)
    assert [e.message[:20] for e in events] == [m[:20] for m in EVENTS]
    assert [e.id for e in jobs.new_events(sdk, job.id, events[1].id)] == [events[2].id, events[3].id]
    assert jobs.new_events(sdk, job.id, events[3].id) == []
    # pages read: all four; then down to the last seen one (3); then just the newest (1)
    assert len(aimock.journal(path=f"/fine_tuning/jobs/{job.id}/events")) == 4 + 3 + 1


def test_result_file_download_plain_and_base64(aimock, env_key, data, make_ctx) -> None:
    """The emulator cannot attach a result file to a job; upload one and finish a job payload naming it."""
    import base64

    import openai
    from openai.types.fine_tuning import FineTuningJob

    from tunepipe.openai_ft.backend import _FineTuning
    from tunepipe.openai_ft.client import make_client
    from tunepipe.openai_ft.config import settings_from_params
    from tunepipe.openai_ft.estimate import estimate

    csv_text = "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n1,1.5,0.6,,\n2,1.1,0.7,1.2,0.65\n"
    sdk = openai.OpenAI(api_key=env_key, base_url=aimock.base_url)
    params = make_params(aimock.base_url)
    settings = settings_from_params(params, "train")
    for i, content in enumerate((csv_text.encode(), base64.b64encode(csv_text.encode()))):
        uploaded = sdk.files.create(file=("step_metrics.csv", content, "text/csv"), purpose="fine-tune")
        job = FineTuningJob.construct(id=f"ftjob-{i}", status="succeeded", model=MODEL, created_at=1, finished_at=2,
                                      fine_tuned_model=f"ft:{MODEL}:org::{i}", trained_tokens=99, seed=1,
                                      result_files=["file-missing", uploaded.id], method={"type": "supervised"},
                                      hyperparameters={"n_epochs": 3})
        c = make_ctx(f"r{i}")
        run = _FineTuning(c.ctx, data["train"], None, settings, estimate(data["train"], params), make_client(settings))
        summary = run.finish(job, c.out)
        assert (c.out / "metrics.csv").read_text() == csv_text
        assert (c.out / "loss.csv").read_text() == "step,train_loss,valid_loss\n1,1.5,\n2,1.1,1.2\n"
        metrics = json.loads((c.out / "metrics.json").read_text())
        assert metrics["source"] == f"result file {uploaded.id}" and metrics["final_valid_loss"] == 1.2
        assert summary["final_train_loss"] == 1.1
        assert "could not read the result file file-missing" in c.log()
