"""One paid job per stage key across machines: runs with separate caches reconcile after creating.

The emulator is real (aimock); "another machine" is a second SDK client that creates a job with the
same request (and so the same ``tunepipe_key`` metadata) at a chosen moment of our run.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import openai
import pytest
from openai_helpers import KEY, make_params, spawn_driver

from tunepipe.openai_ft.backend import train_openai

CREATE = re.compile(r".*/fine_tuning/jobs")


def _other_machine(base_url: str, when: str) -> tuple[Any, list[str]]:
    """An SDK http client whose first job-create request also makes "another machine" create the same
    job: just before ours reaches the emulator (``when="before"``) or just after (``"after"``)."""
    other = openai.OpenAI(api_key=KEY, base_url=base_url)
    created: list[str] = []

    def duplicate(request: Any) -> None:
        if request.method == "POST" and CREATE.fullmatch(request.url.path) and not created:
            created.append(other.fine_tuning.jobs.create(**json.loads(request.content)).id)

    hooks: dict[str, list[Any]] = {"request": [], "response": []}
    if when == "before":
        hooks["request"].append(duplicate)
    else:
        hooks["response"].append(lambda response: duplicate(response.request))
    return openai.DefaultHttpxClient(event_hooks=hooks), created


def _jobs(base_url: str) -> list[Any]:
    return list(openai.OpenAI(api_key=KEY, base_url=base_url).fine_tuning.jobs.list(limit=100))


def test_a_job_created_first_elsewhere_wins_and_ours_is_cancelled(aimock, env_key, data, make_ctx) -> None:
    client, other = _other_machine(aimock.base_url, "before")
    c = make_ctx()
    summary = train_openai(c.ctx, data["train"], data["validation"], make_params(aimock.base_url), c.out,
                           http_client=client)
    assert len(other) == 1 and len(aimock.job_creates()) == 2  # the race happened: two jobs were created
    jobs = {j.id: j.status for j in _jobs(aimock.base_url)}
    live = [i for i, s in jobs.items() if s != "cancelled"]
    assert live == other and summary["job_id"] == other[0] and summary["status"] == "succeeded"
    ours = next(i for i in jobs if i != other[0])
    assert jobs[ours] == "cancelled"
    log = c.log()
    assert f"cancelled job {ours}: a duplicate of job {other[0]}" in log
    assert f"job {other[0]} of this stage key was created first (by another run): following it" in log


def test_a_duplicate_created_after_ours_is_cancelled(aimock, env_key, data, make_ctx) -> None:
    client, other = _other_machine(aimock.base_url, "after")
    c = make_ctx()
    summary = train_openai(c.ctx, data["train"], data["validation"], make_params(aimock.base_url), c.out,
                           http_client=client)
    jobs = {j.id: j.status for j in _jobs(aimock.base_url)}
    assert len(jobs) == 2 and jobs[other[0]] == "cancelled"
    assert summary["job_id"] != other[0] and jobs[summary["job_id"]] == "succeeded"
    assert f"cancelled job {other[0]}" in c.log()


def test_a_followed_job_cancelled_as_a_duplicate_hands_over_to_the_survivor(aimock, env_key, data,
                                                                            make_ctx) -> None:
    """Another run's reconcile cancels the job we follow (it saw a survivor we did not): we follow that."""
    other = openai.OpenAI(api_key=KEY, base_url=aimock.base_url)
    replacement: list[str] = []

    def meanwhile(note: str, c: Any) -> None:
        if replacement or not note.startswith("ftjob"):
            return
        ours = other.fine_tuning.jobs.retrieve(note.split()[0])
        replacement.append(other.fine_tuning.jobs.create(
            model=ours.model, training_file=ours.training_file, validation_file=ours.validation_file,
            metadata=ours.metadata, suffix="other").id)
        other.fine_tuning.jobs.cancel(ours.id)

    c = make_ctx(on_progress=meanwhile)
    summary = train_openai(c.ctx, data["train"], data["validation"], make_params(aimock.base_url), c.out)
    assert summary["status"] == "succeeded" and summary["job_id"] == replacement[0]
    assert f"was cancelled as a duplicate of job {replacement[0]} for this stage key: following it" in c.log()
    assert sorted(j.status for j in _jobs(aimock.base_url)) == ["cancelled", "succeeded"]


@pytest.mark.slow
@pytest.mark.parametrize("runs", [4])
def test_concurrent_runs_on_separate_caches_end_with_one_live_job(runs, aimock, env_key, data, tmp_path) -> None:
    key = uuid.uuid4().hex * 2
    params = make_params(aimock.base_url, poll_seconds=0.2)
    procs = [spawn_driver(tmp_path / f"machine{i}", key, data, params) for i in range(runs)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    summaries = [json.loads((tmp_path / f"machine{i}" / "summary.json").read_text()) for i in range(runs)]
    jobs = _jobs(aimock.base_url)
    live = [j for j in jobs if j.status != "cancelled"]
    assert len(live) == 1 and live[0].status == "succeeded"
    assert {s["fine_tuned_model"] for s in summaries} == {live[0].fine_tuned_model}
    assert {s["job_id"] for s in summaries} == {live[0].id}
