"""The shipped pipelines, run as a user runs them.

``sarcasm-openai.yaml`` runs whole against the aimock emulator (fine-tuning, chat completions and
the judge). ``sarcasm.yaml``, the main job, trains SmolLM2 for real: about 8 minutes on 2 cores,
so it is marked slow (CI runs it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from aimock import aimock, aimock_server  # noqa: F401  (pytest fixtures)

PIPELINES = Path(__file__).parents[1] / "pipelines"
KEY = "sk-shipped-pipeline-test-77aa"


@pytest.fixture
def shipped(project):
    shutil.copytree(PIPELINES, project.root / "pipelines", ignore=shutil.ignore_patterns(".tunepipe"))
    return project


def verdict(correct: int, sarcastic: int) -> str:
    return json.dumps({"factually_correct": {"reason": "checked", "score": correct},
                       "sarcastic": {"reason": "tone", "score": sarcastic}})


def test_sarcasm_openai_runs_against_the_emulator(shipped, aimock, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", aimock.base_url)
    plan = shipped.ok("run", "pipelines/sarcasm-openai.yaml", "--dry-run", "split")
    assert "ingest    will run: never run in this pipeline" in plan.stdout
    assert "plan:" in plan.output  # its stream: tests/test_streams.py
    shipped.ok("run", "pipelines/sarcasm-openai.yaml", "split")
    plan = shipped.ok("run", "pipelines/sarcasm-openai.yaml", "--dry-run").stdout
    assert "billable tokens" in plan and aimock.job_creates() == []  # the estimate (the plan), nothing started

    shipped.ok("run", "pipelines/sarcasm-openai.yaml", "train")
    card = json.loads((Path(json.loads(shipped.ok("show", "pipelines/sarcasm-openai.yaml", "train", "--json").stdout)
                            ["outputs"]["model"]["path"]) / "model.json").read_text())
    tuned, base = card["fine_tuned_model"], card["base_model"]
    assert tuned.startswith("ft:gpt-4o-mini-2024-07-18:") and ":marv:" in tuned
    aimock.set_fixtures([  # the first match wins: the judge's requests hold the reply to grade
        {"match": {"model": base, "userMessage": "<reply_to_grade>\nOh, "}, "response": {"content": verdict(5, 5)}},
        {"match": {"model": base, "userMessage": "<reply_to_grade>"}, "response": {"content": verdict(5, 1)}},
        {"match": {"model": tuned}, "response": {"content": "Oh, the answer is obviously that, as you know. "
                                                                 "It is a question of the ages, I suppose."}},
        {"match": {"model": base}, "response": {"content": "Hmm."}},
    ])
    result = shipped.ok("run", "pipelines/sarcasm-openai.yaml")
    assert "evaluate  done" in result.stdout and "gates=2/2 passed" in result.stdout
    shown = shipped.ok("show", "pipelines/sarcasm-openai.yaml", "evaluate").stdout
    assert "| judge_sarcastic | 0.000" in shown and "report: " in shown
    assert len(aimock.job_creates()) == 1
    written = b"".join(p.read_bytes() for p in (shipped.root / "pipelines" / ".tunepipe").rglob("*") if p.is_file())
    assert KEY.encode() not in written


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the whole main job (about 8 minutes on 2 idle cores); a busy machine is slower
def test_the_main_job_fine_tunes_marv_and_beats_the_base(shipped) -> None:
    """`pipeline run pipelines/sarcasm.yaml` exactly as the README says: SmolLM2 fine-tuned locally
    on the cleaned Marv data beats its base on ROUGE-L and semantic similarity (the pipeline's own
    gates), and a rerun is all cached without loading torch."""
    run = subprocess.run([sys.executable, "-m", "tunepipe", "run", "pipelines/sarcasm.yaml"], cwd=shipped.root,
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "gates=2/2 passed" in run.stdout  # evaluate's result line
    info = json.loads(shipped.ok("show", "pipelines/sarcasm.yaml", "evaluate", "--json").stdout)
    doc = json.loads((Path(info["outputs"]["report"]["path"]) / "metrics.json").read_text())
    for metric in ("rouge_l", "semantic"):
        assert doc["metrics"][metric]["tuned"]["value"] > doc["metrics"][metric]["base"]["value"]
    export = json.loads(shipped.ok("show", "pipelines/sarcasm.yaml", "export", "--json").stdout)
    files = {f["path"] for f in export["outputs"]["model"]["files"]}
    assert files == {"model-q8_0.gguf", "Modelfile", "README.md"}  # the deliverable, for llama.cpp and Ollama
    probe = ("import sys\nfrom tunepipe.cli import cli\ntry:\n    cli(['run', '-q', 'pipelines/sarcasm.yaml'])\n"
             "except SystemExit as e:\n    assert e.code == 0, e.code\n"
             "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'openai') if m in sys.modules))")
    again = subprocess.run([sys.executable, "-c", probe], cwd=shipped.root, capture_output=True, text=True)
    # the probe's line follows the run's result line (-q)
    assert again.returncode == 0 and again.stdout.splitlines()[-1] == "[]", again.stdout + again.stderr


def test_the_sweep_runs_train_evaluate_and_export_once_per_learning_rate(shipped) -> None:
    result = shipped.ok("validate", "pipelines/sarcasm-sweep.yaml")
    assert "10 stages" in result.stdout
    for branch in ("train@learning_rate=0.001", "evaluate@learning_rate=0.0005", "export@learning_rate=0.0005"):
        assert branch in result.stdout


def test_the_recipe_sweep_crosses_learning_rate_lora_targets_and_epochs(shipped) -> None:
    result = shipped.ok("validate", "pipelines/sarcasm-recipe.yaml")
    assert "28 stages" in result.stdout  # 4 data stages + 8 branches of train, evaluate and export
    for branch in ("train@learning_rate=0.001,targets=attention,epochs=3",
                   "evaluate@learning_rate=0.002,targets=all-linear,epochs=5"):
        assert branch in result.stdout
