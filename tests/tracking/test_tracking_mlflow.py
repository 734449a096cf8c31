"""The MLflow tracker through the real CLI, read back with MLflow's own client (``mlflow.search_runs``,
``MlflowClient``), never by inspecting its files: one MLflow run per pipeline run with the
parameters, the loss per step, the evaluation's metrics and report, the tags (stage keys, git commit);
a failed run ends FAILED; no secret reaches it; its errors (mlflow missing, an unusable folder)
are one warning line. The stages are stand-ins writing what train and evaluate write
(tests/support/tp_trackfakes.py); the slow test runs the real ones on the tiny model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra: pip install 'tunepipe[mlflow]'")
from mlflow.tracking import MlflowClient  # noqa: E402

SECRET = "tok-tracking-0123456789abcdef"
STAGES = """\
stages:
  train:
    uses: tp_trackfakes:Train
    with: {learning_rate: 0.001, lora: {r: 4, alpha: 8}, notes: NOTES}
  evaluate:
    uses: tp_trackfakes:Evaluate
    inputs: {model: train.model}
"""
NOTES = json.dumps([f"note {i:04d}" for i in range(800)])  # 10,400 characters: more than MLflow holds


def spec(tracking: str, stages: str = STAGES) -> str:
    return f"tracking: {tracking}\n" + stages.replace("NOTES", NOTES)


@pytest.fixture(autouse=True)
def _read_the_default_store(project: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's own client (search_runs, MlflowClient()) reads the store the tracker makes by default:
    ./mlruns next to the pipeline file (the tracker creates it: nothing here touches it first)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project.root / 'mlruns' / 'mlflow.db'}")


def runs(experiment: str) -> list[dict[str, Any]]:
    return mlflow.search_runs(experiment_names=[experiment]).to_dict("records")


def test_a_run_becomes_one_mlflow_run_with_params_metrics_tags_and_report(project: Any) -> None:
    project.spec(spec("{mlflow: {experiment: sarcasm}}"))
    project.ok("run", "p.yaml")
    (run,) = runs("sarcasm")
    keys = {s["stage"]: s["key"] for s in json.loads(project.ok("status", "p.yaml", "--json").stdout)["stages"]}
    assert run["status"] == "FINISHED"
    assert run["params.train.learning_rate"] == "0.001" and run["params.train.lora.r"] == "4"
    assert run["params.evaluate.samples"] == "100"
    notes = run["params.train.notes"]
    assert len(notes) <= 6000 and notes.startswith('["note 0000", ') and notes.endswith(f"… ({len(NOTES):,} characters)")
    assert run["metrics.evaluate.rouge_l.tuned"] == 0.5 and run["metrics.evaluate.rouge_l.base"] == 0.25
    assert run["metrics.evaluate.rouge_l.delta"] == 0.25
    assert (run["metrics.evaluate.rouge_l.delta.ci_low"], run["metrics.evaluate.rouge_l.delta.ci_high"]) == (0.1, 0.4)
    assert run["metrics.evaluate.rouge_l.tuned.ci_low"] == 0.4 and run["metrics.evaluate.examples"] == 4
    assert run["tags.train.key"] == keys["train"] and run["tags.evaluate.key"] == keys["evaluate"]
    assert run["tags.train.status"] == run["tags.evaluate.status"] == "done"
    assert run["tags.tunepipe.version"] == "0.1.0" and run["tags.tunepipe.status"] == "ok"
    assert run["tags.mlflow.source.name"] == str(project.root / "p.yaml")
    run_id, store = run["run_id"], MlflowClient()
    loss = [(m.step, m.value) for m in store.get_metric_history(run_id, "train.train_loss")]
    assert sorted(loss) == [(1, 2.5), (2, 2.0), (3, 1.5), (4, 1.25)]
    assert sorted((m.step, m.value) for m in store.get_metric_history(run_id, "train.val_loss")) == [(2, 2.2),
                                                                                                     (4, 1.75)]
    assert sorted(f.path for f in store.list_artifacts(run_id, "evaluate")) == ["evaluate/report.html",
                                                                                "evaluate/report.md"]
    report = Path(store.download_artifacts(run_id, "evaluate/report.md", str(project.root / "got")))
    assert report.read_text() == "# Evaluation\n\n| rouge_l | 0.25 | 0.5 |\n"

    project.ok("run", "p.yaml")  # a second run, all cached: a second MLflow run, same results
    second = [r for r in runs("sarcasm") if r["run_id"] != run_id]
    assert len(second) == 1 and second[0]["tags.train.status"] == "cached"
    assert second[0]["metrics.evaluate.rouge_l.tuned"] == 0.5 and second[0]["tags.train.key"] == keys["train"]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_git_commit_of_the_pipelines_folder_is_a_tag(project: Any) -> None:
    project.spec(spec("mlflow"))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "p.yaml"], ["commit", "-q", "-m", "x"]):
        subprocess.run(git + args, cwd=project.root, check=True, capture_output=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project.root, check=True, capture_output=True,
                          text=True).stdout.strip()
    project.ok("run", "p.yaml")
    (run,) = runs("p")  # the experiment defaults to the pipeline's name
    assert run["tags.mlflow.source.git.commit"] == head


def test_a_failed_run_is_a_failed_mlflow_run_and_keeps_its_exit_code(project: Any) -> None:
    project.spec(spec("mlflow", STAGES + "  bad: {uses: 'tp_testplugins:Fail', inputs: {src: train.model}}\n"))
    result = project.run("run", "p.yaml", "-k")
    assert result.exit_code == 1 and "tracking" not in result.stderr
    (run,) = runs("p")
    assert run["status"] == "FAILED" and run["tags.bad.status"] == "failed" and run["tags.tunepipe.status"] == "failed"
    assert run["metrics.evaluate.rouge_l.tuned"] == 0.5  # what did finish is logged


def test_no_secret_reaches_mlflow(project: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TP_TRACK_TOKEN", SECRET)  # a secret by its name; the stage puts it in its summary and log
    project.spec(spec("mlflow", STAGES + "  leak: {uses: 'tp_trackfakes:Leak'}\n"))
    project.ok("run", "p.yaml")
    (run,) = runs("p")
    store = MlflowClient()
    everything = json.dumps(run, default=str)
    for path in ("evaluate/report.html", "evaluate/report.md"):
        everything += Path(store.download_artifacts(run["run_id"], path, str(project.root / "got"))).read_text()
    assert run["tags.leak.status"] == "done" and SECRET not in everything
    assert SECRET not in project.run("run", "p.yaml", "-S", f"leak.note={SECRET}").output  # refused, as ever
    assert len(runs("p")) == 1


def test_tracker_errors_are_one_warning_line_and_change_no_exit_code(project: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    project.write("blocker", "a file where the store's folder would be")
    project.spec(spec("{mlflow: {uri: blocker/mlruns}}"))
    result = project.run("run", "p.yaml")
    assert result.exit_code == 0 and "ok: 2 done" in result.stdout
    warned = [line for line in result.stderr.splitlines() if "tracking" in line]
    assert len(warned) == 1 and warned[0].startswith("  ! tracking: mlflow did not log this run (")
    assert "blocker" in warned[0] and warned[0].endswith("); the run itself is unaffected")

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # MLflow's old folder store: refused, and said why
    project.spec(spec("{mlflow: {uri: 'file:./old'}}"))
    result = project.run("run", "p.yaml")
    assert result.exit_code == 0 and "MLflow refuses the file store file:./old unless MLFLOW_ALLOW_FILE_STORE=true" \
        in result.stderr

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    project.spec(spec("mlflow", STAGES + "  bad: {uses: 'tp_testplugins:Fail'}\n"))
    result = project.run("run", "p.yaml")
    assert result.exit_code == 1  # the failed stage's, unchanged
    assert [line for line in result.stderr.splitlines() if "tracking" in line] == [
        "  ! tracking: mlflow did not log this run (mlflow is not installed: pip install 'tunepipe[mlflow]'); "
        "the run itself is unaffected"]
    assert not (project.root / "mlruns").exists()  # nothing made for a tracker that cannot run


@pytest.mark.slow
def test_the_real_train_and_evaluate_stages_on_the_tiny_model(project: Any,
                                                              tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{2 * i}, obviously."}]} for i in range(12)]
    project.write("data/train.jsonl", "".join(json.dumps(r) + "\n" for r in rows[:8]))
    project.write("data/validation.jsonl", "".join(json.dumps(r) + "\n" for r in rows[8:]))
    project.spec(f"""\
        tracking: mlflow
        stages:
          train:
            uses: train
            inputs: {{train: data/train.jsonl, validation: data/validation.jsonl}}
            with: {{model: "{tiny_model}", epochs: 1, batch_size: 2, learning_rate: 0.005, seed: 7,
                    lora: {{r: 4, alpha: 8}}, max_seq_length: 128, device: cpu, threads: 1}}
          evaluate:
            uses: evaluate
            inputs: {{model: train.model, examples: data/validation.jsonl}}
            with: {{metrics: [token_f1, rouge_l], decoding: {{max_new_tokens: 4}}, device: cpu, threads: 1,
                    bootstrap: {{samples: 50}}}}
        """)
    project.ok("run", "p.yaml")
    (run,) = runs("p")
    store = MlflowClient()
    assert run["params.train.lora.r"] == "4" and run["params.evaluate.bootstrap.samples"] == "50"
    steps = [m.step for m in store.get_metric_history(run["run_id"], "train.train_loss")]
    assert sorted(steps) == [1, 2, 3, 4]  # 8 examples, batches of 2, one epoch
    assert store.get_metric_history(run["run_id"], "train.val_loss")
    for metric in ("rouge_l", "token_f1"):
        for side in ("tuned", "base", "delta", "delta.ci_low", "delta.ci_high"):
            assert f"metrics.evaluate.{metric}.{side}" in run, (metric, side)
    assert sorted(f.path for f in store.list_artifacts(run["run_id"], "evaluate")) == ["evaluate/report.html",
                                                                                       "evaluate/report.md"]
