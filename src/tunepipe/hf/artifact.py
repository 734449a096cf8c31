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

from tunepipe.hf.models import BaseSource
from tunepipe.hf.render import DataSet
from tunepipe.hf.settings import LocalTrainSettings

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


def write_model(model: Any, tok: Any, s: LocalTrainSettings, out: Path) -> None:
    """The tokenizer and the weights: ``adapter/`` (and ``merged/``) for LoRA, ``full/`` otherwise."""
    tok.save_pretrained(str(out / "tokenizer"))
    if s.lora is None:
        model.save_pretrained(str(out / "full"))
        return
    config = model.peft_config["default"]
    config.base_model_name_or_path = s.model  # portable: not a cache path
    if isinstance(config.target_modules, (set, frozenset)):  # a set: saved in hash order, which varies by process
        config.target_modules = sorted(config.target_modules)
    model.save_pretrained(str(out / "adapter"), save_embedding_layers=False)  # the vocabulary is never resized
    if s.merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(str(out / "merged"))


def training_metrics(s: LocalTrainSettings, state: Any, train_set: DataSet, val_set: DataSet, trainable: int,
                     total_params: int, total_steps: int, warm: int, device: str, threads: int,
                     resumed_from: int | None, duration: float, source: BaseSource) -> dict[str, Any]:
    """metrics.json of a finished run; ``state`` is the loop's :class:`tunepipe.hf.loop.Progress`."""
    losses = [r["train_loss"] for r in state.history]
    vals = [r["val_loss"] for r in state.history if r["val_loss"] is not None]
    return {
        "kind": s.kind,
        "base_model": s.model,
        "epochs": state.epochs,
        "train_loss": {"first": losses[0] if losses else None, "last": losses[-1] if losses else None,
                       "last_epoch": state.epochs[-1]["train_loss"] if state.epochs else None},
        "val_loss": {"before": state.val_before, "first": vals[0], "last": vals[-1], "best": min(vals)}
        if vals else None,
        "steps": total_steps,
        "tokens": state.tokens,
        "trained_tokens": state.trained_tokens,
        "tokens_per_s": round(state.tokens / state.train_seconds, 1) if state.train_seconds else None,
        "seconds_per_step": round(state.train_seconds / total_steps, 3) if total_steps else None,
        "train_seconds": round(state.train_seconds, 1),
        "duration_s": round(duration, 1),
        "examples": len(train_set.examples),
        "truncated": train_set.truncated,
        "train": train_set.describe(),
        "validation": val_set.describe() if val_set.records else None,
        "trainable_params": trainable,
        "total_params": total_params,
        "learning_rate": s.learning_rate,
        "warmup_steps": warm,
        "schedule": s.schedule,
        "batch_size": s.batch_size,
        "gradient_accumulation": s.accumulation,
        "seed": s.seed,
        "device": device,
        "threads": threads,
        "resumed_from_step": resumed_from,
        "converted_base_s": round(source.converted_in, 1) if source.converted_in is not None else None,
    }


def _arrow(first: float | None, last: float | None) -> str | None:
    if first is None or last is None:
        return None
    return f"{first:.3f}→{last:.3f}"


def summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The run line's summary: steps, train loss first→last step, validation loss before→after
    training, speed, truncation."""
    val = metrics.get("val_loss")
    # the run line shows the first four: the headline numbers come first
    out = {"train_loss": _arrow(metrics["train_loss"]["first"], metrics["train_loss"]["last"]),
           "val_loss": _arrow(val["before"], val["last"]) if val else None,
           "steps": metrics["steps"], "tokens_per_s": metrics["tokens_per_s"],
           "kind": metrics["kind"], "examples": metrics["examples"], "truncated": metrics["truncated"]}
    if metrics.get("resumed_from_step") is not None:
        out["resumed_from_step"] = metrics["resumed_from_step"]
    if metrics.get("workers", 1) > 1:
        out["workers"] = metrics["workers"]
    return out
