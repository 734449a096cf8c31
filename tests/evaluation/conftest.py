"""Fixtures of the evaluate stage's tests: offline Hugging Face, the tiny model, the OpenAI emulator,
headless Chromium."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from aimock import aimock, aimock_factory, aimock_server  # noqa: F401  (pytest fixtures)
from tiny_model import build_tiny_model


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-evaluate")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def _varied(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory, seed: int) -> Path:
    """A tiny model with large random weights (initializer_range 0.5), so that greedy decoding gives
    varied words rather than the same token again and again; same tokenizer as the tiny model."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model), local_files_only=True)
    return build_tiny_model(tmp_path_factory.mktemp(f"varied-{seed}"), tok=tok, seed=seed, initializer_range=0.5)


@pytest.fixture(scope="session")
def varied_a(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _varied(tiny_model, tmp_path_factory, 3)


@pytest.fixture(scope="session")
def varied_b(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Other weights on the same tokenizer: the stand-in for a fine-tuned model."""
    return _varied(tiny_model, tmp_path_factory, 4)


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    from cdp import Browser, chromium_path

    if chromium_path() is None:
        why = "Debian's chromium is not installed (as root: apt-get install -y chromium)"
        if os.environ.get("CI"):  # in CI a missing browser is a broken setup, not a reason to skip
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    b = Browser()
    yield b
    b.close()
