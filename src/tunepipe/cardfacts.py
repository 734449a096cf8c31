"""What a model card says about a trained model, gathered from what the pipeline left.

The export stage and ``pipeline export`` both write a card: the base model and its license, the
training data (digest and example count), the training parameters (from the artifact's own
``metrics.json`` and adapter config, so the card says what was done, not what a spec asks now) and
the headline metrics of an evaluate report when there is one. Only these facts reach a card: never
a parameter value that could hold a secret, never an environment variable.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tunepipe import __version__
from tunepipe.modelref import ModelRef

TRAINING_KEYS = ("kind", "epochs", "steps", "batch_size", "gradient_accumulation", "learning_rate", "schedule",
                 "warmup_steps", "seed", "trainable_params", "total_params")
LORA_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules")


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def training(ref: ModelRef) -> dict[str, Any]:
    """The parameters the model was trained with, as its artifact records them."""
    metrics = _json(ref.folder / "metrics.json")
    out: dict[str, Any] = {}
    for k in TRAINING_KEYS:
        value = metrics.get(k)
        if k == "epochs" and isinstance(value, list):
            value = len(value)
        if value is not None:
            out[k] = value
    if ref.get("adapter"):
        adapter = _json(ref.folder / ref.get("adapter") / "adapter_config.json")
        out.update({f"lora_{k.removeprefix('lora_')}": _listed(adapter[k]) for k in LORA_KEYS if k in adapter})
    for k in ("fine_tuned_model", "job_id", "suffix"):
        if ref.get(k):
            out[k] = ref.get(k)
    return out


def _listed(value: Any) -> Any:
    return sorted(value) if isinstance(value, (list, set, tuple)) else value


def headline(report: Path | None) -> dict[str, dict[str, Any]] | None:
    """Metric -> base, tuned, delta and the delta's interval, from an evaluate report folder."""
    if report is None:
        return None
    metrics = _json(report / "metrics.json").get("metrics") or {}
    out = {}
    for name, m in metrics.items():
        tuned, base, delta = m.get("tuned") or {}, m.get("base") or {}, m.get("delta") or {}
        out[name] = {"tuned": tuned.get("value"), "base": base.get("value"), "delta": delta.get("value"),
                     "low": delta.get("ci_low"), "high": delta.get("ci_high")}
    return out or None


def data(files: Iterable[Path], digest: str | None, ref: ModelRef) -> dict[str, Any]:
    """The training data: its digest (when known) and how many examples trained the model."""
    metrics = _json(ref.folder / "metrics.json")
    examples = metrics.get("examples")
    if examples is None:
        examples = sum(1 for f in files for line in f.open("rb") if line.strip())
    return {"digest": digest, "examples": examples}


def usual_system(files: Iterable[Path], limit: int = 100_000) -> tuple[str | None, float]:
    """The system prompt most frequent in the training data and its share of the examples read
    (at most ``limit``): a chat, or an exported model's default, starts where training left it."""
    counts: Counter[str] = Counter()
    seen = 0
    for path in files:
        with open(path, "rb") as f:
            for line in f:
                if seen >= limit:
                    break
                try:
                    messages = json.loads(line).get("messages") or []
                except (ValueError, AttributeError):
                    continue
                seen += 1
                first = messages[0] if messages and isinstance(messages[0], dict) else {}
                if first.get("role") == "system" and isinstance(first.get("content"), str):
                    counts[first["content"]] += 1
    if not counts:
        return None, 0.0
    text, n = counts.most_common(1)[0]
    return text, n / seen


def facts(ref: ModelRef, fmt: str, *, stage: str, pipeline: str | None = None, files: Iterable[Path] = (),
          data_digest: str | None = None, report: Path | None = None) -> dict[str, Any]:
    """Everything a card says, as plain data (the keys of :mod:`tunepipe.hf.card`); ``stage``: the
    train stage that made the model, ``pipeline``: its pipeline's name when known."""
    out = {"base_model": ref.base_model, "format": fmt, "kind": ref.get("kind"),
           "data": data(list(files), data_digest, ref), "training": training(ref), "metrics": headline(report),
           "stage": stage, "tunepipe_version": __version__}
    return {**out, "pipeline": pipeline} if pipeline else out
