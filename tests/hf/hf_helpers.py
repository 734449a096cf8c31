"""Helpers of the local backend's tests (imported by the test modules; fixtures are in conftest)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import stage_ctx
from marv_qa import QA as MARV_QA
from marv_qa import SYSTEM, chat  # noqa: F401  (the tests import them from here)


def make_ctx(root: Path, name: str = "train", shared: Path | None = None, threads: int = 1) -> Any:
    """A StageContext like the runner's, with the train stage's output ``model``."""
    return stage_ctx.make_ctx(root, name, "model", shared, threads)


QA = MARV_QA[:6]


def chats(n: int, offset: int = 0) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        q, a = QA[(i + offset) % len(QA)]
        out.append(chat(f"{q} (#{i + offset})", a))
    return out


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any] | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    return path


def params(model: Path | str, **over: Any) -> dict[str, Any]:
    """The train stage's parameters with the schema's defaults, tuned small for the tiny model."""
    base: dict[str, Any] = {
        "model": str(model), "epochs": 2, "batch_size": 2, "learning_rate": 5e-3, "seed": 7,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "max_seq_length": 256, "gradient_accumulation": 1, "schedule": "linear", "warmup": 0.1,
        "weight_decay": 0.0, "max_grad_norm": 1.0, "eval_every": 0, "save_every": 0, "merge": False,
        "device": "cpu", "threads": 1,
    }
    base.update(over)
    return base
