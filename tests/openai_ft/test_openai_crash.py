"""Exactly one fine-tuning job when the process dies: kill -9 right after create, and while polling."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest
from openai_helpers import KEY, Ctx, make_params, spawn_driver

from tunepipe.openai_ft.backend import train_openai
from tunepipe.openai_ft.state import load

def _rerun(root: Path, key: str, data: dict[str, Path], params: dict) -> tuple[dict, str]:
    c = Ctx(root, key=key)  # the same scratch folder: what the runner gives a re-run of the same key
    try:
        summary = train_openai(c.ctx, data["train"], data["validation"], params, c.out)
        return summary, c.log()
    finally:
        c.close()


@pytest.mark.slow
@pytest.mark.parametrize("point", ["openai-after-create", "openai-after-save"])
def test_kill_9_right_after_create_then_rerun_creates_no_second_job(point, aimock, env_key, data, tmp_path) -> None:
    key = uuid.uuid4().hex * 2
    params = make_params(aimock.base_url)
    proc = spawn_driver(tmp_path / "run", key, data, params, crashpoint=point)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    assert len(aimock.job_creates()) == 1
    saved = load(tmp_path / "run" / "scratch").job_id
    assert (saved is None) == (point == "openai-after-create")  # killed before / after the scratch write

    summary, log = _rerun(tmp_path / "run", key, data, params)
    assert summary["status"] == "succeeded"
    assert len(aimock.job_creates()) == 1  # the journal: exactly one job created over both runs
    import openai

    jobs = list(openai.OpenAI(api_key=KEY, base_url=aimock.base_url).fine_tuning.jobs.list())
    assert [j.id for j in jobs] == [summary["job_id"]]
    if point == "openai-after-create":
        assert "already created for this stage key" in log  # found by its tunepipe_key metadata
    else:
        assert "re-attaching to job" in log  # found by the id in scratch


@pytest.mark.slow
def test_kill_9_while_polling_then_rerun_reattaches(aimock, env_key, data, tmp_path) -> None:
    key = uuid.uuid4().hex * 2
    params = make_params(aimock.base_url, poll_seconds=30)
    proc = spawn_driver(tmp_path / "run", key, data, params)
    deadline = time.monotonic() + 60
    while load(tmp_path / "run" / "scratch").job_id is None:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.3)  # now in its 30 s sleep between polls
    proc.kill()  # SIGKILL, by the pid of the process this test started
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    summary, log = _rerun(tmp_path / "run", key, data, make_params(aimock.base_url))
    assert summary["status"] == "succeeded" and summary["job_id"] == load(tmp_path / "run" / "scratch").job_id
    assert len(aimock.job_creates()) == 1 and len(aimock.uploads()) == 2
    assert "re-attaching to job" in log
