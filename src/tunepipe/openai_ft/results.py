"""What a finished job gives back, turned into the train stage's artifact files. Pure functions.

* ``model.json``: the model reference (:mod:`tunepipe.modelref`): base and fine-tuned model, the job,
  the hyperparameters OpenAI resolved, trained tokens, checkpoints, result files, the estimate.
* ``metrics.csv``: the job's result file as OpenAI wrote it (``step,train_loss,train_accuracy,
  valid_loss,valid_mean_token_accuracy``; validation columns blank on most steps). Its content has
  been seen base64-encoded: both forms are accepted.
* ``loss.csv``: ``step,train_loss,valid_loss`` (blank where the step has no value).
* ``metrics.json``: a summary: steps, final and best losses, where the numbers came from.

Without a result file (not downloadable, or none), the metrics come from the job's ``metrics``
events when there are any; else the CSVs hold only their header and ``metrics.json`` says so.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tunepipe import modelref
from tunepipe.cache.atomic import write_bytes

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
ENDED_BADLY = frozenset({"failed", "cancelled"})
RESULT_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
LOSS_COLUMNS = ("step", "train_loss", "valid_loss")
# metrics event data key -> result-file column
_EVENT_KEYS = {"step": "step", "train_loss": "train_loss", "train_mean_token_accuracy": "train_accuracy",
               "valid_loss": "valid_loss", "valid_mean_token_accuracy": "valid_mean_token_accuracy",
               "full_valid_loss": "full_valid_loss", "full_valid_mean_token_accuracy": "full_valid_mean_token_accuracy"}


def dump(obj: Any) -> Any:
    """An SDK model (or a plain value) as plain JSON data, unset and None fields left out."""
    if obj is None:
        return None
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json", exclude_none=True)
    if isinstance(obj, Mapping):
        return {k: dump(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [dump(v) for v in obj]
    return obj


def get(obj: Any, name: str, default: Any = None) -> Any:
    """An attribute of an SDK model or a key of a dict (recorded payloads are either)."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


# ---------------------------------------------------------------------------------------------
# the job

def job_error(job: Any) -> dict[str, Any] | None:
    """``{code, message, param}`` of a job that failed (None when it carries no error)."""
    err = get(job, "error")
    if err is None:
        return None
    out = {k: get(err, k) for k in ("code", "message", "param")}
    return out if any(v for v in out.values()) else None


def describe_error(err: Mapping[str, Any] | None) -> str:
    if not err:
        return "no error details given"
    text = f"{err.get('code') or 'error'}: {err.get('message') or '(no message)'}"
    if err.get("param"):
        text += f" (param: {err['param']})"
    return text


def method_type(job: Any) -> str:
    method = get(job, "method")
    return (get(method, "type") if method is not None else None) or "supervised"


def resolved_hyperparameters(job: Any) -> dict[str, Any]:
    """The job's hyperparameters as OpenAI reports them: the method's (``method.<type>.hyperparameters``,
    resolved from "auto" to numbers once the job runs) over the deprecated top-level ones."""
    out = {k: v for k, v in (dump(get(job, "hyperparameters")) or {}).items() if v is not None}
    method = get(job, "method")
    if method is not None:
        config = get(method, method_type(job))
        hyper = dump(get(config, "hyperparameters")) if config is not None else None
        out.update({k: v for k, v in (hyper or {}).items() if v is not None})
    return out


def job_record(job: Any) -> dict[str, Any]:
    """The job as model.json records it."""
    keys = ("id", "status", "model", "created_at", "finished_at", "training_file", "validation_file", "seed",
            "organization_id", "metadata")
    rec = {k: dump(get(job, k)) for k in keys}
    rec["method"] = method_type(job)
    rec["error"] = job_error(job)
    return rec


def checkpoint_records(checkpoints: Iterable[Any]) -> list[dict[str, Any]]:
    """Checkpoints (usable models ``ft:...:ckpt-step-N``) by step, with their metrics."""
    out = []
    for c in checkpoints:
        out.append({"id": get(c, "id"), "step": get(c, "step_number"),
                    "model": get(c, "fine_tuned_model_checkpoint"), "created_at": get(c, "created_at"),
                    "metrics": dump(get(c, "metrics")) or {}})
    return sorted(out, key=lambda c: (c["step"] is None, c["step"] or 0))


def model_record(job: Any, *, checkpoints: Sequence[Mapping[str, Any]], estimate: Mapping[str, Any] | None,
                 metrics_source: str | None) -> dict[str, Any]:
    """model.json: what the train stage hands to evaluate and deploy (the format is added by
    :func:`tunepipe.modelref.write`)."""
    return {
        "backend": "openai",
        "base_model": get(job, "model"),
        "fine_tuned_model": get(job, "fine_tuned_model"),
        "job": job_record(job),
        "hyperparameters": resolved_hyperparameters(job),
        "trained_tokens": get(job, "trained_tokens"),
        "checkpoints": list(checkpoints),
        "result_files": list(get(job, "result_files") or []),
        "metrics_source": metrics_source,
        "estimate": dict(estimate) if estimate is not None else None,
    }


# ---------------------------------------------------------------------------------------------
# the result file

def decode_result_file(data: bytes | str) -> str:
    """The CSV text of a result file, whether it came plain or base64-encoded (ValueError otherwise)."""
    raw = data.encode() if isinstance(data, str) else data
    text = _text(raw)
    if text is not None and _looks_like_csv(text):
        return text
    try:
        decoded = base64.b64decode(b"".join(raw.split()), validate=True)
    except (binascii.Error, ValueError):
        decoded = None
    text = _text(decoded) if decoded else None
    if text is not None and _looks_like_csv(text):
        return text
    raise ValueError("the result file is neither a metrics CSV nor base64 of one")


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def _looks_like_csv(text: str) -> bool:
    header = text.lstrip().split("\n", 1)[0]
    return "," in header and "step" in [h.strip() for h in header.split(",")]


def _number(value: str | None) -> float | int | None:
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        f = float(value)
    except ValueError:
        return None
    if not math.isfinite(f):
        return None
    return int(f) if f.is_integer() and "." not in value and "e" not in value.lower() else f


def parse_metrics_csv(text: str) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of a metrics CSV; blank cells are None, numbers are numbers."""
    reader = csv.DictReader(io.StringIO(text.strip() + "\n"))
    columns = [c.strip() for c in reader.fieldnames or []]
    rows = []
    for row in reader:
        rec = {c.strip(): _number(v) for c, v in row.items() if c is not None}
        if rec.get("step") is not None:
            rows.append(rec)
    return columns, rows


def metrics_from_events(events: Iterable[Any]) -> list[dict[str, Any]]:
    """Metrics rows from a job's ``metrics`` events (any order in, by step out)."""
    by_step: dict[Any, dict[str, Any]] = {}
    for ev in events:
        data = get(ev, "data")
        if get(ev, "type") != "metrics" or not isinstance(data, Mapping) or data.get("step") is None:
            continue
        row = {col: data[k] for k, col in _EVENT_KEYS.items() if data.get(k) is not None}
        by_step.setdefault(row["step"], {}).update(row)
    return [by_step[s] for s in sorted(by_step)]


def loss_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{c: r.get(c) for c in LOSS_COLUMNS} for r in rows]


def _last(rows: Sequence[Mapping[str, Any]], col: str) -> Any:
    for r in reversed(rows):
        if r.get(col) is not None:
            return r[col]
    return None


def metrics_summary(rows: Sequence[Mapping[str, Any]], *, source: str | None,
                    trained_tokens: int | None) -> dict[str, Any]:
    """metrics.json: how training went, in a few numbers."""
    train = [r["train_loss"] for r in rows if r.get("train_loss") is not None]
    valid = [r["valid_loss"] for r in rows if r.get("valid_loss") is not None]
    return {
        "source": source,
        "steps": len(rows),
        "last_step": rows[-1]["step"] if rows else None,
        "final_train_loss": train[-1] if train else None,
        "min_train_loss": min(train) if train else None,
        "final_train_accuracy": _last(rows, "train_accuracy"),
        "final_valid_loss": valid[-1] if valid else None,
        "min_valid_loss": min(valid) if valid else None,
        "final_valid_mean_token_accuracy": _last(rows, "valid_mean_token_accuracy"),
        "full_valid_loss": _last(rows, "full_valid_loss"),
        "trained_tokens": trained_tokens,
        "note": None if rows else "no metrics: the job's result file could not be read and it sent no metrics events",
    }


def _csv_bytes(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
    return buf.getvalue().encode()


def write_artifacts(out: Path, record: Mapping[str, Any], columns: Sequence[str],
                    rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], *,
                    result_csv: str | None = None) -> None:
    """model.json, metrics.csv, loss.csv and metrics.json into ``out``. ``result_csv``: the decoded
    result file, written as metrics.csv as it is; without it metrics.csv is written from ``rows``."""
    out.mkdir(parents=True, exist_ok=True)
    modelref.write(out, record)
    if result_csv is not None:
        text = result_csv.replace("\r\n", "\n")
        write_bytes(out / "metrics.csv", (text if text.endswith("\n") else text + "\n").encode())
    else:
        write_bytes(out / "metrics.csv", _csv_bytes(columns or RESULT_COLUMNS, rows))
    write_bytes(out / "loss.csv", _csv_bytes(LOSS_COLUMNS, loss_rows(rows)))
    write_bytes(out / "metrics.json", (json.dumps(summary, indent=1, ensure_ascii=False) + "\n").encode())
