"""Helpers of the OpenAI backend's tests: data, parameters, a stage context, fault-injecting clients (and the fixtures conftest.py exposes)."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tunepipe.plugins import StageContext

MODEL = "gpt-4o-mini-2024-07-18"
KEY = "sk-tunepipe-test-0123456789"


def chat_example(i: int, meta: bool = True) -> dict[str, Any]:
    rec: dict[str, Any] = {"messages": [
        {"role": "system", "content": "Marv is a sarcastic chatbot."},
        {"role": "user", "content": f"What is {i} plus {i}?"},
        {"role": "assistant", "content": f"{2 * i}, obviously. Did you need a calculator for that?"}]}
    if meta:
        rec["meta"] = {"source": f"data.jsonl:{i}", "id": i}
    return rec


def dpo_example(i: int) -> dict[str, Any]:
    return {"input": {"messages": [{"role": "user", "content": f"Say something about {i}."}]},
            "preferred_output": [{"role": "assistant", "content": f"{i} is a fine number."}],
            "non_preferred_output": [{"role": "assistant", "content": f"I refuse to talk about {i}."}],
            "meta": {"id": i}}


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def make_params(base_url: str | None, *, model: str = MODEL, epochs: Any = "auto", batch_size: Any = "auto",
                seed: int | None = 42, **openai: Any) -> dict[str, Any]:
    """The train stage's parameters as its schema defaults them (openai.* overridable)."""
    o = {"method": "supervised", "learning_rate_multiplier": "auto", "beta": "auto", "suffix": None,
         "api_key_env": "OPENAI_API_KEY", "base_url": base_url, "max_cost_usd": None, "poll_seconds": 0.01,
         "prices": {}, "context_limits": {}, "metadata": {}}
    o.update(openai)
    return {"model": model, "epochs": epochs, "batch_size": batch_size, "seed": seed, "openai": o}


class Ctx:
    """A StageContext for tests, with its log file, the progress notes, and a way to stop it."""

    def __init__(self, root: Path, stage: str = "train", key: str | None = None,
                 on_progress: Callable[[str, Ctx], None] | None = None) -> None:
        self.root = root
        self.key = key or uuid.uuid4().hex + uuid.uuid4().hex
        self.log_path = root / "stage.log"
        self.out = root / "out"
        self.out.mkdir(parents=True, exist_ok=True)
        self.notes: list[str] = []
        self.cancel = threading.Event()
        self.on_progress = on_progress
        logger = logging.getLogger(f"tunepipe.test.openai.{uuid.uuid4().hex}")
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        self.handler = logging.FileHandler(self.log_path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))  # no redaction: must not need it
        logger.addHandler(self.handler)
        self.ctx = StageContext(stage=stage, key=self.key, outputs={"model": self.out}, scratch=root / "scratch",
                                log=logger, _cancel=self.cancel, _progress=self._progress)
        (root / "scratch").mkdir(parents=True, exist_ok=True)

    def _progress(self, note: str) -> None:
        self.notes.append(note)
        if self.on_progress is not None:
            self.on_progress(note, self)

    def log(self) -> str:
        self.handler.flush()
        return self.log_path.read_text(encoding="utf-8")

    def close(self) -> None:
        self.handler.close()
        self.ctx.log.removeHandler(self.handler)


@pytest.fixture
def env_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_ORG_ID", raising=False)
    monkeypatch.delenv("OPENAI_PROJECT_ID", raising=False)
    return KEY


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "data"
    return {"train": write_jsonl(d / "train.jsonl", [chat_example(i) for i in range(12)]),
            "validation": write_jsonl(d / "validation.jsonl", [chat_example(i) for i in range(100, 103)]),
            "dpo": write_jsonl(d / "dpo.jsonl", [dpo_example(i) for i in range(12)])}


@pytest.fixture
def make_ctx(tmp_path: Path) -> Callable[..., Ctx]:
    made: list[Ctx] = []

    def factory(name: str = "run", **kwargs: Any) -> Ctx:
        c = Ctx(tmp_path / name, **kwargs)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.close()


def chaos_client(rules: list[dict[str, Any]], lose_responses: list[dict[str, Any]] = ()) -> Any:
    """An SDK http client that adds aimock's fault headers to chosen requests: the emulator then really
    answers 429 / 500 or drops the connection. Each rule: method, path (a regex of the URL path),
    header, value (default "1"), times (how many matching requests get it).

    ``lose_responses`` rules (method, path, times) make the client lose the answer of a request the
    emulator did handle, as a connection dropped after the server committed (raises httpx2.ReadError
    once the response arrived)."""
    import httpx2
    import openai

    rules = [dict(r, seen=0) for r in copy.deepcopy(rules)]
    losses = [dict(r, seen=0) for r in copy.deepcopy(list(lose_responses))]

    def pick(table: list[dict[str, Any]], request: Any) -> dict[str, Any] | None:
        for r in table:
            if request.method == r["method"] and re.fullmatch(r["path"], request.url.path) and r["seen"] < r["times"]:
                r["seen"] += 1
                return r
        return None

    def on_request(request: Any) -> None:
        r = pick(rules, request)
        if r is not None:
            request.headers[r["header"]] = r.get("value", "1")

    def on_response(response: Any) -> None:
        if pick(losses, response.request) is not None:
            response.read()
            raise httpx2.ReadError("connection lost after the server answered (test)", request=response.request)

    client = openai.DefaultHttpxClient(event_hooks={"request": [on_request], "response": [on_response]})
    client.rules, client.losses = rules, losses  # type: ignore[attr-defined]
    return client


DRIVER = Path(__file__).with_name("driver.py")


def spawn_driver(root: Path, key: str, data: dict[str, Path], params: dict,
                 crashpoint: str | None = None) -> subprocess.Popen[str]:
    """train_openai in a process of its own (driver.py), with the test key and no ambient endpoint."""
    root.mkdir(parents=True, exist_ok=True)
    spec = root / "spec.json"
    spec.write_text(json.dumps({"root": str(root), "key": key, "stage": "train", "train": str(data["train"]),
                                "validation": str(data["validation"]), "params": params}))
    env = {k: v for k, v in os.environ.items() if k not in ("TUNEPIPE_CRASHPOINT", "OPENAI_BASE_URL")}
    env["OPENAI_API_KEY"] = KEY
    if crashpoint:
        env["TUNEPIPE_CRASHPOINT"] = crashpoint
    return subprocess.Popen([sys.executable, str(DRIVER), str(spec)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
