"""The train stage with ``backend: openai`` through the real CLI, against the aimock emulator:
the dry-run estimate, the budget guard, a run to a fine-tuned model, a cached rerun that creates
no second job, and the key kept out of everything the run writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from aimock import aimock, aimock_server  # noqa: F401  (pytest fixtures)

KEY = "sk-pipeline-test-9f8e7d6c5b4a"
DATA = Path(__file__).parents[2] / "pipelines" / "data"

SPEC = """\
stages:
  ingest:
    uses: ingest
    inputs: {data: [data/marv.jsonl, data/marv.csv]}
    with:
      on_error: skip
      sources: [{match: "*.csv", map: {system: Marv is sarcastic., user: "{question}", assistant: "{answer}"}}]
  format:
    uses: format
    inputs: {records: ingest.records}
  split:
    uses: split
    inputs: {examples: format.examples}
    with: {validation: 0.15, seed: 7, leakage: dedupe}
  train:
    uses: train
    inputs: {train: split.train, validation: split.validation}
    with:
      backend: openai
      model: gpt-4o-mini-2024-07-18
      openai: {poll_seconds: 0.05, suffix: marv}
"""


@pytest.fixture
def remote(project, aimock, monkeypatch: pytest.MonkeyPatch):  # noqa: F811
    shutil.copytree(DATA, project.root / "data")
    project.spec(SPEC)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", aimock.base_url)  # the endpoint is not part of the stage's key
    return project


def test_dry_run_shows_the_cost_estimate_and_starts_nothing(remote, aimock) -> None:  # noqa: F811
    remote.ok("run", "p.yaml", "split")
    result = remote.ok("run", "p.yaml", "--dry-run")
    assert "train     will run: never run in this pipeline" in result.stdout
    assert "billable tokens" in result.stdout and "$" in result.stdout  # the plugin's preview: part of the plan
    assert aimock.job_creates() == [] and aimock.uploads() == []


def test_budget_guard_refuses_before_uploading(remote, aimock) -> None:  # noqa: F811
    result = remote.run("run", "p.yaml", "-S", "train.openai.max_cost_usd=0.000001")
    assert result.exit_code == 2, result.output
    assert "is over openai.max_cost_usd" in result.stderr and "Nothing was uploaded" in result.stderr
    assert "Traceback" not in result.output
    assert aimock.job_creates() == [] and aimock.uploads() == []


def test_a_run_fine_tunes_once_and_a_rerun_is_cached(remote, aimock) -> None:  # noqa: F811
    result = remote.ok("run", "p.yaml")
    assert "train: estimate:" in result.stderr  # said before the job started
    assert "train: created job" in result.stderr and "train: fine-tuned model ft:gpt-4o-mini" in result.stderr
    card = json.loads((remote.artifact("train", "model") / "model.json").read_text())
    assert card["format"] == "tunepipe-model/1" and card["backend"] == "openai"
    assert card["fine_tuned_model"].startswith("ft:gpt-4o-mini-2024-07-18:") and ":marv:" in card["fine_tuned_model"]
    assert len(aimock.job_creates()) == 1 and len(aimock.uploads()) == 2  # train + validation
    body = aimock.job_creates()[0]["body"]
    assert body["metadata"]["tunepipe_stage"] == "train" and body["suffix"] == "marv"

    again = remote.ok("run", "p.yaml")
    assert "train     cached" in again.stdout
    assert len(aimock.job_creates()) == 1

    written = b"".join(p.read_bytes() for p in remote.cache.rglob("*") if p.is_file())
    assert KEY.encode() not in written
    assert KEY not in result.output and KEY not in again.output


def test_a_missing_key_is_a_user_error_naming_the_variable(remote, aimock, monkeypatch) -> None:  # noqa: F811
    monkeypatch.delenv("OPENAI_API_KEY")
    result = remote.run("run", "p.yaml")
    assert result.exit_code == 2
    assert "OPENAI_API_KEY" in result.stderr and "Traceback" not in result.output
    assert aimock.job_creates() == []


def test_an_unreachable_endpoint_fails_the_stage_naming_it(remote, monkeypatch) -> None:
    from aimock import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    result = remote.run("run", "p.yaml")
    assert result.exit_code == 1
    assert f"could not reach the API at {url}" in result.stderr and "OPENAI_BASE_URL" in result.stderr
    assert "Traceback" not in result.output


def test_runs_that_differ_only_in_operational_settings_create_one_job(remote, aimock) -> None:  # noqa: F811
    """Polling, budget ceiling, price table and the key's variable are operational: not in the key."""
    remote.ok("run", "p.yaml", "-S", "train.openai.poll_seconds=0.2")
    assert len(aimock.job_creates()) == 1
    for change in (["-S", "train.openai.poll_seconds=0.3"], ["-S", "train.openai.max_cost_usd=2"],
                   ["-S", "train.openai.prices={gpt-4o-mini-2024-07-18: 9.0}"],
                   ["-S", "train.openai.context_limits={gpt-4o-mini-2024-07-18: 70000}"]):
        again = remote.ok("run", "p.yaml", "--explain", *change)
        assert "train     cached" in again.stdout, again.output
        assert "(operational, not in the key)" in again.stderr  # --explain's note under the cached line
    plan = remote.ok("run", "p.yaml", "-n", "--explain", "-S", "train.openai.max_cost_usd=2")
    assert "train     cached" in plan.stdout and "will run" not in plan.stdout
    assert len(aimock.job_creates()) == 1  # the emulator's journal: one job over all these runs


def test_another_endpoint_is_another_service_and_says_so(remote, aimock) -> None:  # noqa: F811
    """base_url is in the key: the job and its model live at one endpoint. A new job there is
    right, and the run says where it creates it and what it should cost before it does."""
    remote.ok("run", "p.yaml")
    other = remote.run("run", "p.yaml", "-n", "-S", f"train.openai.base_url={aimock.base_url}")
    assert "train     will run: parameter openai.base_url: null -> " in other.stdout
    moved = remote.ok("run", "p.yaml", "-S", f"train.openai.base_url={aimock.base_url}")
    assert f"train: no job of this stage key at {aimock.base_url.rstrip('/')}" in moved.stderr
    assert "billable tokens" in moved.stderr.split("no job of this stage key")[1].splitlines()[0]
