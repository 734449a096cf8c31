"""The tracker plugin point without MLflow: an in-memory tracker (tests/support/tp_trackfakes.py)
registered like a package's would be receives one finished run as start, metrics, artifacts and end;
``tracking:`` is checked at its line; it never changes a cache key; its errors are one warning line;
``--track`` (RunOptions.track) picks another tracker or none; nothing it receives holds a secret."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import tp_trackfakes

from tunepipe.errors import Position, UserError
from tunepipe.progress import LineReporter
from tunepipe.runner import RunOptions
from tunepipe.runner import run as run_pipeline
from tunepipe.session import open_session
from tunepipe.spec.model import Pipeline, StageSpec
from tunepipe.tracking import registry, report

STAGES = """\
stages:
  train:
    uses: tp_trackfakes:Train
    with: {learning_rate: 0.001, lora: {r: 4, alpha: 8}}
  evaluate:
    uses: tp_trackfakes:Evaluate
    inputs: {model: train.model}
  emit:
    uses: tp_testplugins:Emit
    matrix: {repeat: [1, 2]}
    with: {repeat: "${matrix.repeat}"}
"""


@pytest.fixture(autouse=True)
def memory_tracker(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """``memory`` installed as a tracker, as an entry point of the group tunepipe.trackers would be."""
    monkeypatch.setattr(registry, "available", lambda: {"mlflow": registry.BUILTIN["mlflow"],
                                                        "memory": "tp_trackfakes:MemoryTracker"})
    tp_trackfakes.CALLS.clear()
    return tp_trackfakes.CALLS


def _calls(kind: str) -> list[Any]:
    return [payload for k, payload in tp_trackfakes.CALLS if k == kind]


def _keys(project: Any) -> dict[str, str]:
    return {s["stage"]: s["key"] for s in json.loads(project.ok("status", "p.yaml", "--json").stdout)["stages"]}


def test_a_finished_run_reaches_the_tracker_once_in_order(project: Any) -> None:
    project.spec("tracking: {memory: {}}\n" + STAGES)
    result = project.ok("run", "p.yaml")
    assert "tracking:" not in result.stderr
    assert [k for k, _ in tp_trackfakes.CALLS] == ["start", "log_metrics", "log_artifact", "log_artifact", "end"]
    start = _calls("start")[0]
    assert start.experiment == "p" and start.base == project.root and start.settings == {}
    assert start.params["train.learning_rate"] == "0.001" and start.params["train.lora.r"] == "4"
    assert start.params["train.notes"] == "[]" and start.params["evaluate.samples"] == "100"
    assert start.params["emit_repeat_2.repeat"] == "2"  # a matrix branch, named as trackers accept
    keys = _keys(project)
    assert start.tags["train.key"] == keys["train"] and start.tags["train.status"] == "done"
    assert start.tags["tunepipe.status"] == "ok" and start.run_name == start.tags["tunepipe.run_id"]
    metrics = {(m.key, m.step): m.value for m in _calls("log_metrics")[0]}
    assert [(s, metrics[("train.train_loss", s)]) for s in (1, 2, 3, 4)] == [(1, 2.5), (2, 2.0), (3, 1.5), (4, 1.25)]
    assert {s for k, s in metrics if k == "train.val_loss"} == {2, 4}
    assert metrics[("evaluate.rouge_l.tuned", 0)] == 0.5 and metrics[("evaluate.rouge_l.base", 0)] == 0.25
    assert metrics[("evaluate.rouge_l.delta", 0)] == 0.25 and metrics[("evaluate.rouge_l.delta.ci_low", 0)] == 0.1
    assert metrics[("evaluate.rouge_l.tuned.ci_high", 0)] == 0.6 and metrics[("evaluate.examples", 0)] == 4
    assert _calls("log_artifact") == [("report.html", "evaluate"), ("report.md", "evaluate")]
    assert _calls("end") == ["ok"]

    tp_trackfakes.CALLS.clear()  # a cached run is a run too, with the same results
    project.ok("run", "p.yaml")
    assert _calls("start")[0].tags["train.status"] == "cached" and len(_calls("log_metrics")[0]) == len(metrics)


def test_tracking_never_changes_a_cache_key(project: Any) -> None:
    project.spec(STAGES)
    project.ok("run", "p.yaml")
    before = _keys(project)
    project.spec("tracking: memory\n" + STAGES)
    assert _keys(project) == before
    out = project.ok("run", "p.yaml").stdout
    assert "ok: 4 cached" in out and " done " not in out
    assert {k: v for k, v in _calls("start")[0].tags.items() if k.endswith(".key")} == \
        {f"{n.replace('@', '_').replace('=', '_')}.key": k for n, k in before.items()}


def test_a_failed_run_ends_failed_and_keeps_its_exit_code(project: Any) -> None:
    project.spec("tracking: memory\nstages:\n  bad: {uses: 'tp_testplugins:Fail'}\n")
    result = project.run("run", "p.yaml")
    assert result.exit_code == 1
    assert _calls("end") == ["failed"] and _calls("start")[0].tags["bad.status"] == "failed"


def test_a_tracker_error_is_one_warning_line_and_the_exit_code_is_unchanged(project: Any) -> None:
    project.spec("tracking: {memory: {fail: start}}\n" + STAGES)
    result = project.run("run", "p.yaml")
    assert result.exit_code == 0 and "ok: 4 done" in result.stdout
    lines = [line for line in result.stderr.splitlines() if "tracking" in line]
    assert lines == ["  ! tracking: memory did not log this run (ConnectionError: the tracking server at "
                     "http://tracker.invalid refused the connection); the run itself is unaffected"]
    project.spec("tracking: {memory: {fail: start}}\nstages:\n  bad: {uses: 'tp_testplugins:Fail'}\n")
    assert project.run("run", "p.yaml").exit_code == 1


def test_an_unknown_tracker_or_setting_is_a_spec_error_at_its_line(project: Any) -> None:
    project.spec("name: p\ntracking:\n  mlfow: {uri: x}\n  memory: {fial: start}\n" + STAGES)
    result = project.run("validate", "p.yaml")
    assert result.exit_code == 2
    assert "p.yaml:3:3: error: unknown tracker 'mlfow' in 'tracking'" in result.stderr
    assert "hint: did you mean 'mlflow'? installed trackers: memory, mlflow" in result.stderr
    assert "p.yaml:4:12: error: unknown setting 'fial' in tracker 'memory'" in result.stderr
    project.spec("tracking: wandb\n" + STAGES)
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2 and "p.yaml:1:11: error: unknown tracker 'wandb'" in result.stderr
    assert tp_trackfakes.CALLS == [] and list((project.cache / "runs").rglob("*.json")) == []  # nothing ran


def test_tracking_in_an_included_file_is_not_taken(project: Any) -> None:
    project.write("base.yaml", "tracking: memory\n" + STAGES)
    project.spec("include: base.yaml\n")
    project.ok("run", "p.yaml")
    assert tp_trackfakes.CALLS == []


def _run(project: Any, track: str) -> tuple[Any, str]:
    session = open_session("p.yaml")
    out = io.StringIO()
    outcome = run_pipeline(session.pipeline, session.store, session.registry, RunOptions(track=track),
                           LineReporter(out))
    return outcome, out.getvalue()


def test_track_picks_a_tracker_or_none_for_one_run(project: Any) -> None:
    """What ``pipeline run --track NAME`` passes to the runner."""
    project.spec("tracking: {mlflow: {uri: nowhere}}\n" + STAGES)
    outcome, _ = _run(project, "memory")  # only the named tracker, with its defaults
    assert outcome.exit_code == 0 and [k for k, _ in tp_trackfakes.CALLS][0] == "start"
    assert _calls("start")[0].settings == {} and not (project.root / "nowhere").exists()
    tp_trackfakes.CALLS.clear()
    project.spec("tracking: {memory: {}}\n" + STAGES)
    _run(project, "none")
    assert tp_trackfakes.CALLS == []
    with pytest.raises(UserError, match=r"--track wandb: unknown tracker\. installed trackers: memory, mlflow"):
        _run(project, "wandb")


# -- what a tracker receives, read from a pipeline and a record --------------------------------------------

def _pipeline(root: Path, params: dict[str, Any]) -> Pipeline:
    stage = StageSpec(name="train@lr=0.1", uses="x", params=params, inputs={}, multiple={}, outputs=("model",),
                      position=Position("p.yaml", 1, 1))
    return Pipeline(name="p", path=root / "p.yaml", stages={stage.name: stage})


def test_secrets_long_values_and_odd_names_are_made_safe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "tok-0123456789abcdef"
    monkeypatch.setenv("TP_TRACK_TOKEN", secret)
    params = {"key": secret, "nested": {f"by {secret}": [secret, 1]}, "items": [f"item-{i:05d}" for i in range(900)],
              "empty": {}, "none": None, "flag": True}
    got = report.run_params(_pipeline(tmp_path, params))
    assert secret not in json.dumps(got)
    assert got["train_lr_0.1.key"] == "<TP_TRACK_TOKEN>"
    assert got["train_lr_0.1.nested.by _TP_TRACK_TOKEN_"] == '["<TP_TRACK_TOKEN>", 1]'
    assert len(got["train_lr_0.1.items"]) <= report.MAX_VALUE and got["train_lr_0.1.items"].endswith(
        f"… ({len(json.dumps(params['items'])):,} characters)")
    assert got["train_lr_0.1.empty"] == "{}" and got["train_lr_0.1.none"] == "null"
    assert got["train_lr_0.1.flag"] == "true"
    record = {"run_id": "r1", "argv": ["run", "p.yaml", f"--cache-dir=/c/{secret}"],
              "stages": {"train@lr=0.1": {"status": "done", "key": "k1"}}}
    tags = report.run_tags(_pipeline(tmp_path, {}), record, "ok")
    assert secret not in json.dumps(tags)
    assert tags["tunepipe.command"] == "pipeline run p.yaml --cache-dir=/c/<TP_TRACK_TOKEN>"
    assert tags["train_lr_0.1.key"] == "k1" and "git.commit" not in tags  # tmp_path is no repository


def test_the_track_option_of_pipeline_run(project: Any) -> None:
    """The same through the CLI: a tracker for one run, none, or an unknown one (exit 2, nothing run)."""
    project.spec(STAGES)
    project.ok("run", "p.yaml", "--track", "memory")
    assert [k for k, _ in tp_trackfakes.CALLS][0] == "start"
    tp_trackfakes.CALLS.clear()
    project.spec("tracking: {memory: {}}\n" + STAGES)
    project.ok("run", "p.yaml", "--track", "none")
    assert tp_trackfakes.CALLS == []
    result = project.run("run", "p.yaml", "--track", "wandb")
    assert result.exit_code == 2 and "--track wandb: unknown tracker" in result.output
    assert "Traceback" not in result.output
