"""The trained model's folder.

::

    model.json     what the folder holds and how to load it (the model reference: tunepipe.modelref)
    adapter/       the LoRA adapter (PEFT save_pretrained), for kind lora
    merged/        the base model with the adapter merged in, when merge is on
    full/          the whole fine-tuned model, for kind full
    tokenizer/     the tokenizer with its chat template: inference renders prompts as training did
    metrics.json   losses per epoch, counts, speed
    loss.csv       one row per optimizer step: step,epoch,train_loss,val_loss,learning_rate,tokens
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

LOSS_COLUMNS = ("step", "epoch", "train_loss", "val_loss", "learning_rate", "tokens")


def model_json(*, base_model: str, base_source: Mapping[str, Any], kind: str, merged: bool,
               max_seq_length: int, device: str, dtype: str, chat_template: bool) -> dict[str, Any]:
    """What model.json records for a local model (the format is added by :func:`tunepipe.modelref.write`)."""
    return {
        "backend": "local",
        "base_model": base_model,
        "base_source": dict(base_source),
        "kind": kind,
        "adapter": "adapter" if kind == "lora" else None,
        "merged": "merged" if kind == "lora" and merged else None,
        "full": "full" if kind == "full" else None,
        "tokenizer": "tokenizer",
        "chat_template": chat_template,
        "max_seq_length": max_seq_length,
        "device": device,
        "dtype": dtype,
    }


def write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # exact: the curve reads back as it was
    return str(value)


def write_loss_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(LOSS_COLUMNS)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in LOSS_COLUMNS])


def read_loss_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``loss.csv`` with numbers parsed (blank -> None)."""
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in r.items():
                row[k] = None if v == "" else (int(v) if k in ("step", "epoch", "tokens") else float(v))
            out.append(row)
    return out
