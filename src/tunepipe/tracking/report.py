"""A finished run as tracker calls: its parameters, tags, metrics and report files.

Read from the pipeline (each stage's parameters, defaults included, flattened as ``stage.param``),
the run record (stage keys, statuses, output digests) and the artifacts on this machine
(``store.object_path``; an artifact only in remote storage is not downloaded for tracking). Any
output folder holding a ``loss.csv`` (a train stage's model) gives the loss per step; one holding an
evaluation's ``metrics.json`` gives every metric with its interval, and its ``report.html`` and
``report.md`` are kept as artifacts. Every text goes through :func:`tunepipe.redact.redact`.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shlex
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tunepipe import __version__
from tunepipe.cache.store import Store
from tunepipe.errors import TunepipeError
from tunepipe.redact import redact
from tunepipe.spec.model import Pipeline
from tunepipe.tracking.contract import Metric, RunStart, Tracker
from tunepipe.tracking.registry import make

MAX_VALUE = 6000  # MLflow's limit on a parameter value: a longer one is abbreviated, with its length
MAX_KEY = 250  # MLflow's limit on a name
EVALUATION_FORMAT = "tunepipe-evaluation/"
REPORT_FILES = ("report.html", "report.md")
_UNSAFE = re.compile(r"[^\w.\- ]")  # MLflow's name characters (no '/', ':'), so '@' and '=' of a branch go


def track(trackers: Mapping[str, Mapping[str, Any]], pipeline: Pipeline, store: Store, record: Mapping[str, Any],
          status: str, say: Callable[[str], None]) -> None:
    """Send the finished run to each tracker. Never raises: a problem is one line through ``say``."""
    try:
        params, tags = run_params(pipeline), run_tags(pipeline, record, status)
        metrics, files = run_results(record, store)
    except Exception as e:  # noqa: BLE001 - tracking never fails a run
        say(f"tracking: the run could not be read for tracking ({_one_line(e)}); it is not logged")
        return
    for name, settings in trackers.items():
        start = RunStart(settings=settings, base=pipeline.root, experiment=pipeline.name,
                         run_name=str(record.get("run_id", "")), params=params, tags=tags)
        try:
            _send(make(name), start, metrics, files, status)
        except Exception as e:  # noqa: BLE001 - a tracker's error (missing library, unwritable store) is a warning
            say(f"tracking: {name} did not log this run ({_one_line(e)}); the run itself is unaffected")


def _send(tracker: Tracker, start: RunStart, metrics: list[Metric], files: list[tuple[Path, str]],
          status: str) -> None:
    tracker.start(start)
    try:
        tracker.log_metrics(metrics)
        for path, folder in files:
            tracker.log_artifact(path, folder)
    finally:
        tracker.end(status)  # a run left "running" in the tracker would look alive forever


def _one_line(e: BaseException) -> str:
    text = str(e) if isinstance(e, TunepipeError) else f"{type(e).__name__}: {e}"
    text = " ".join(redact(text).split())
    return text if len(text) <= 300 else text[:299] + "…"


# -- names and values ---------------------------------------------------------------------------------

def safe_name(text: str) -> str:
    """A name MLflow (and the other trackers) accept: ``train@lr=0.001`` -> ``train_lr_0.001``."""
    return _UNSAFE.sub("_", text)[:MAX_KEY]


def value_text(value: Any) -> str:
    """A parameter's value as text (JSON for anything but a string), secrets redacted, abbreviated
    past :data:`MAX_VALUE` characters."""
    clean = _redact_all(value)
    text = redact(clean if isinstance(clean, str) else json.dumps(clean, ensure_ascii=False))
    if len(text) > MAX_VALUE:
        text = text[:MAX_VALUE - 40] + f"… ({len(text):,} characters)"
    return text


def _redact_all(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {redact(str(k)): _redact_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_all(v) for v in value]
    return value


def _flat(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            yield from _flat(v, f"{prefix}.{redact(str(k))}")
    else:
        yield prefix, value


# -- parameters and tags ------------------------------------------------------------------------------

def run_params(pipeline: Pipeline) -> dict[str, str]:
    """Every stage's parameters (defaults filled in), flattened: ``train.lora.r`` -> ``"8"``."""
    out: dict[str, str] = {}
    for stage in pipeline.stages.values():
        for key, value in _flat(stage.params, stage.name) if stage.params else ():
            out[safe_name(key)] = value_text(value)
    return out


def run_tags(pipeline: Pipeline, record: Mapping[str, Any], status: str) -> dict[str, str]:
    """Who ran what: tunepipe's version, the run, each stage's status and key, the git commit."""
    tags = {"tunepipe.version": __version__, "tunepipe.pipeline": pipeline.name, "tunepipe.spec": str(pipeline.path),
            "tunepipe.run_id": str(record.get("run_id", "")), "tunepipe.status": status,
            "tunepipe.executor": str(record.get("executor") or "local"),
            "tunepipe.command": shlex.join(["pipeline", *map(str, record.get("argv") or [])])}
    for name, stage in (record.get("stages") or {}).items():
        tags[safe_name(f"{name}.status")] = str(stage.get("status", ""))
        if stage.get("key"):
            tags[safe_name(f"{name}.key")] = str(stage["key"])
    commit = git_commit(pipeline.root)
    if commit:
        tags["git.commit"] = commit
    return {k: redact(v)[:MAX_VALUE] for k, v in tags.items()}


def git_commit(folder: Path) -> str:
    """``git rev-parse HEAD`` of the repository ``folder`` is in, or "" (none, or no git)."""
    try:
        done = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    head = done.stdout.strip()
    return head if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", head) else ""


# -- metrics and files ----------------------------------------------------------------------------------

def run_results(record: Mapping[str, Any], store: Store) -> tuple[list[Metric], list[tuple[Path, str]]]:
    """The metrics and report files in the outputs of the run's stages (those on this machine)."""
    metrics: list[Metric] = []
    files: list[tuple[Path, str]] = []
    for name, stage in (record.get("stages") or {}).items():
        prefix = safe_name(name)
        for digest in (stage.get("outputs") or {}).values():
            folder = store.object_path(digest)
            if not folder.is_dir():
                continue
            metrics.extend(loss_metrics(prefix, folder / "loss.csv"))
            doc = evaluation(folder / "metrics.json")
            if doc is not None:
                metrics.extend(evaluation_metrics(prefix, doc))
                files.extend((folder / f, prefix) for f in REPORT_FILES if (folder / f).is_file())
    return metrics, files


def _number(text: Any) -> float | None:
    try:
        x = float(text)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def loss_metrics(prefix: str, path: Path) -> list[Metric]:
    """``PREFIX.train_loss`` and ``PREFIX.val_loss`` per step from a loss.csv (local: ``val_loss``;
    OpenAI: ``valid_loss``); blank cells are steps without that value."""
    if not path.is_file():
        return []
    out = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                step = _number(row.get("step"))
                if step is None:
                    continue
                for name, columns in (("train_loss", ("train_loss",)), ("val_loss", ("val_loss", "valid_loss"))):
                    value = next((v for v in (_number(row.get(c)) for c in columns) if v is not None), None)
                    if value is not None:
                        out.append(Metric(f"{prefix}.{name}", value, int(step)))
    except (OSError, ValueError, csv.Error):
        return []
    return out


def evaluation(path: Path) -> dict[str, Any] | None:
    """An evaluate stage's metrics.json, or None (absent, unreadable, or another file of that name)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(doc, dict) and str(doc.get("format", "")).startswith(EVALUATION_FORMAT)
    return doc if ok and isinstance(doc.get("metrics"), dict) else None


def evaluation_metrics(prefix: str, doc: Mapping[str, Any]) -> list[Metric]:
    """``PREFIX.METRIC.SIDE`` (tuned, base, delta) and its interval ``.ci_low`` / ``.ci_high`` (and
    ``delta.p_not_better``), plus ``PREFIX.examples``."""
    out = []
    examples = _number(doc.get("examples"))
    if examples is not None:
        out.append(Metric(f"{prefix}.examples", examples))
    for metric, entry in doc["metrics"].items():
        for side in ("tuned", "base", "delta"):
            est = entry.get(side) if isinstance(entry, Mapping) else None
            if not isinstance(est, Mapping):
                continue
            for stat, value in est.items():
                x = _number(value) if not isinstance(value, bool) else None
                if x is not None:
                    key = f"{prefix}.{metric}.{side}" + ("" if stat == "value" else f".{stat}")
                    out.append(Metric(safe_name(key), x))
    return out
