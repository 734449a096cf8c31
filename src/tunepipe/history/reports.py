"""The evaluation reports a run's stages left in the cache (``metrics.json`` in the format
``tunepipe-evaluation/1``, with ``predictions.jsonl`` beside it), found by content rather than by
plugin name, so any stage that writes that format counts as an evaluate stage.

A gate that fails keeps the stage's report in its scratch folder (``scratch/<key>/report``)
instead of publishing it: that copy is read too, and marked as such.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunepipe.status import Status

if TYPE_CHECKING:
    from tunepipe.history.runs import Run

FORMAT_PREFIX = "tunepipe-evaluation/"
HEADLINE = 3


@dataclass(frozen=True)
class Report:
    stage: str
    folder: Path
    doc: Mapping[str, Any]
    from_scratch: bool = False  # the report of a failed stage, kept in its scratch folder
    rows: tuple[Mapping[str, Any], ...] | None = None  # predictions.jsonl, once loaded

    @property
    def metrics(self) -> dict[str, Mapping[str, Any]]:
        found = self.doc.get("metrics")
        return {str(k): v for k, v in found.items() if isinstance(v, Mapping)} if isinstance(found, Mapping) else {}

    def value(self, metric: str, side: str = "tuned", stat: str = "value") -> float | None:
        est = self.metrics.get(metric, {}).get(side)
        v = est.get(stat) if isinstance(est, Mapping) else None
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

    def headline(self, most: int = HEADLINE) -> list[str]:
        """The metrics a reader looks at first: the one examples are ranked by, then those gates check."""
        names = [str(self.doc.get("rank_by") or "")]
        for gate in self.doc.get("gates") or []:
            values = gate.get("values") if isinstance(gate, Mapping) else None
            names.extend(k.partition(".")[2] for k in values or {} if isinstance(k, str))
        seen = list(dict.fromkeys(n for n in names if n in self.metrics))
        return (seen or list(self.metrics))[:most]

    def with_rows(self) -> Report:
        """This report with its per-example rows read (None if predictions.jsonl is gone or torn)."""
        try:
            with open(self.folder / "predictions.jsonl", encoding="utf-8") as f:
                rows = tuple(json.loads(line) for line in f if line.strip())
        except (OSError, ValueError):
            return self
        return replace(self, rows=rows if all(isinstance(r, Mapping) for r in rows) else None)


class Reports:
    """Evaluation reports in one cache, each folder read once (runs share cached results)."""

    def __init__(self, cache_root: Path) -> None:
        self.root = cache_root
        self._docs: dict[str, Mapping[str, Any] | None] = {}

    def of(self, run: Run) -> dict[str, Report]:
        """stage -> its evaluation report, for the stages of ``run`` that have one."""
        out = {}
        for name, stage in run.stages.items():
            outputs = stage.get("outputs")
            folders = [f"{self.root}/objects/{d[:2]}/{d}" for d in (outputs.values() if isinstance(outputs, Mapping)
                                                                    else ()) if isinstance(d, str) and d]
            key = stage.get("key")
            if stage.get("status") == Status.FAILED and isinstance(key, str) and key:
                folders.append(f"{self.root}/scratch/{key}/report")  # what a failed gate keeps
            for folder in folders:
                if (doc := self._doc(folder)) is not None:
                    out[name] = Report(name, Path(folder), doc, from_scratch=folder.endswith("/report"))
                    break
        return out

    def _doc(self, folder: str) -> Mapping[str, Any] | None:
        if folder not in self._docs:
            self._docs[folder] = _read_metrics(os.path.join(folder, "metrics.json"))
        return self._docs[folder]


def _read_metrics(file: str) -> Mapping[str, Any] | None:
    """The evaluation document in ``file``, or None (strings, not Paths: a listing tries thousands)."""
    try:
        with open(file, "rb") as f:
            doc = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if isinstance(doc, dict) and str(doc.get("format", "")).startswith(FORMAT_PREFIX):
        return doc
    return None
