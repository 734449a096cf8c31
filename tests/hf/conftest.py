"""Fixtures of the local backend's tests: the tiny model, a stage context, chat data."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from hf_helpers import make_ctx


@pytest.fixture(autouse=True)
def _offline_one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterable[None]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model), local_files_only=True)


@pytest.fixture
def ctx(tmp_path: Path) -> Any:
    return make_ctx(tmp_path)


@pytest.fixture(scope="session")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, float]:
    """The packaged SmolLM2 converted into a fresh shared folder: (shared folder, source, seconds)."""
    from tunepipe.hf.models import resolve_base

    shared = tmp_path_factory.mktemp("shared") / "models"
    started = time.monotonic()
    source = resolve_base("smollm2-135m-instruct", shared)
    return shared, source, time.monotonic() - started
