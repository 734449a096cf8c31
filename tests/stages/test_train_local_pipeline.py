"""The train stage with the local backend through the real CLI, on the tiny model (a folder given
as the ``base_model`` input): the artifact, the run line, caching, and resume after ``kill -9``."""

from __future__ import annotations

import csv
import json
import signal
import time
from pathlib import Path

import pytest

DATA = Path(__file__).parents[2] / "pipelines" / "data" / "marv.jsonl"


def spec(tiny: Path, extra: str = "", epochs: int = 1, batch_size: int = 8) -> str:
    return f"""\
stages:
  ingest: {{uses: ingest, inputs: {{data: data/marv.jsonl}}, with: {{on_error: skip}}}}
  split: {{uses: split, inputs: {{examples: ingest.records}}, with: {{validation: 8, seed: 3, leakage: dedupe}}}}
  train:
    uses: train
    inputs: {{train: split.train, validation: split.validation, base_model: {tiny}}}
    with: {{epochs: {epochs}, batch_size: {batch_size}, learning_rate: 0.003, threads: 1, seed: 5{extra}}}
"""


@pytest.fixture
def local(project, tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    project.write("data/marv.jsonl", DATA.read_text(encoding="utf-8"))
    project.spec(spec(tiny_model))
    return project


def test_local_training_writes_a_model_reference_and_is_cached(local, tiny_model: Path) -> None:
    result = local.ok("run", "p.yaml")
    assert "train     done" in result.stdout and "train_loss=" in result.stdout and "val_loss=" in result.stdout
    folder = local.artifact("train", "model")
    card = json.loads((folder / "model.json").read_text())
    assert card["format"] == "tunepipe-model/1" and card["backend"] == "local" and card["kind"] == "lora"
    assert card["base_model"] == str(tiny_model)
    assert (folder / "adapter" / "adapter_config.json").is_file()
    assert (folder / "tokenizer" / "tokenizer_config.json").is_file()
    rows = list(csv.DictReader((folder / "loss.csv").open()))
    assert rows and float(rows[-1]["train_loss"]) > 0 and any(r["val_loss"] for r in rows)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["steps"] == len([r for r in rows if r["train_loss"]])

    assert "train     cached" in local.ok("run", "p.yaml").stdout
    changed = local.ok("run", "p.yaml", "-S", "train.learning_rate=0.001").stdout
    assert "split     cached" in changed and "train     done" in changed


def test_a_relative_model_folder_is_refused_with_the_fix(local) -> None:
    local.spec(spec(Path("x")).replace("base_model: x", "base_model: x").replace(
        "seed: 5", "seed: 5, model: ./models/mine"))
    result = local.run("validate", "p.yaml")
    assert result.exit_code == 2
    assert "'./models/mine' is a relative folder" in result.output
    assert "inputs: {base_model: ./models/mine}" in result.output


@pytest.mark.slow
def test_killed_mid_training_the_next_run_resumes_and_ends_as_an_uninterrupted_run(local, tiny_model: Path) -> None:
    """kill -9 of `pipeline run` during training; the rerun continues from the checkpoint in the
    stage's scratch folder and its loss curve equals that of a run that was never interrupted."""
    local.spec(spec(tiny_model, ", save_every: 3", epochs=2, batch_size=2))
    local.ok("run", "p.yaml", "split")
    proc = local.subprocess("run", "p.yaml")
    deadline = time.monotonic() + 240
    checkpoints: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        checkpoints = [p for p in (local.cache / "scratch").glob("*/**/*") if "step" in p.name and p.is_dir()]
        if checkpoints:
            break
        time.sleep(0.2)
    assert checkpoints, "no checkpoint appeared"
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = local.ok("run", "p.yaml")
    assert "train: resuming from step" in resumed.stderr
    interrupted = (local.artifact("train", "model") / "loss.csv").read_text()

    local.ok("run", "p.yaml", "--force=train")  # the same key from scratch (scratch was dropped on success)
    straight = (local.artifact("train", "model") / "loss.csv").read_text()
    assert "resuming" not in straight
    assert interrupted == straight
