"""What the tests of `pipeline chat`, `export` and `serve` share: a pipeline that trains a tiny
model locally (on large random weights, so that greedy replies are words), one that trains on the
OpenAI emulator, and their chat examples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tiny_model import build_tiny_model

SYSTEM = "Marv is a factual chatbot that is also sarcastic."


def examples(n: int, system: str = SYSTEM) -> str:
    rows = [{"messages": [{"role": "system", "content": system if i % 5 else "Be nice."},
                          {"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{2 * i}. Obviously."}]} for i in range(n)]
    return "".join(json.dumps(r) + "\n" for r in rows)


LOCAL = """\
stages:
  split: {uses: split, inputs: {examples: data/chat.jsonl}, with: {validation: 4, seed: 3}}
  train:
    uses: train
    inputs: {train: split.train, validation: split.validation, base_model: base}
    with: {epochs: 1, batch_size: 4, learning_rate: 0.01, threads: 1, seed: 5}
"""


@pytest.fixture(scope="module")
def varied(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """Large random weights: greedy decoding gives words, not one token again and again."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model), local_files_only=True)
    return build_tiny_model(tmp_path_factory.mktemp("varied"), tok=tok, seed=3, initializer_range=0.5)


@pytest.fixture
def trained(project, varied: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shutil.copytree(varied, project.root / "base")
    project.write("data/chat.jsonl", examples(24))
    project.spec(LOCAL)
    project.ok("run", "p.yaml")
    return project


OPENAI = """\
stages:
  train:
    uses: train
    inputs: {train: data/chat.jsonl}
    with:
      backend: openai
      model: gpt-4o-mini-2024-07-18
      openai: {base_url: "BASE", poll_seconds: 0.01, suffix: marv}
"""


def train_on_aimock(project, aimock, monkeypatch: pytest.MonkeyPatch, key: str) -> str:
    """Train the OPENAI pipeline against the emulator with API key ``key``; the fine-tuned model id."""
    monkeypatch.setenv("OPENAI_API_KEY", key)
    project.write("data/chat.jsonl", examples(12))
    project.spec(OPENAI.replace("BASE", aimock.base_url))
    project.ok("run", "p.yaml")
    return json.loads((project.artifact("train", "model") / "model.json").read_text())["fine_tuned_model"]
