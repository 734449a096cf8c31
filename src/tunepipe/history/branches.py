"""The rows of ``pipeline compare`` as plain data: one :class:`Row` per branch of a sweep, one
:class:`Column` per metric, a :class:`Cell` per value. Built by :mod:`tunepipe.history.compare`,
judged by :mod:`tunepipe.history.leader`, shown by ``compare_text`` and ``compare_html``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunepipe.history.reports import Report
from tunepipe.history.training import SOURCE as TRAINING
from tunepipe.status import Status

NOT_RUN = "not run"  # a display word, never recorded: the stage is in no run record
OK = Status.OK  # a row whose stages all finished
__all__ = ["NOT_RUN", "OK", "TRAINING", "Cell", "Column", "Row"]


@dataclass(frozen=True)
class Cell:
    value: float | None
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Column:
    name: str  # what --sort takes: rouge_l (evaluate.rouge_l with several evaluate stages), val_loss
    source: str  # the evaluate stage as written, or "training"
    metric: str
    higher_is_better: bool | None
    aggregate: str = "mean"


@dataclass
class Row:
    branch: str
    values: dict[str, str]
    stages: dict[str, str]  # the branch and the branches it feeds -> latest status ("not run": in no record)
    status: str = NOT_RUN  # ok | failed | running | interrupted | crashed | incomplete | not run
    problem: dict[str, str] = field(default_factory=dict)  # the first stage not done: stage, status, error
    run: str | None = None  # the newest run among the stages' latest entries
    summary: dict[str, Any] = field(default_factory=dict)  # the matrix branch's own summary
    evaluations: dict[str, str] = field(default_factory=dict)  # evaluate stage as written -> its branch
    cells: dict[str, Cell] = field(default_factory=dict)
    mark: str = ""  # best | tied
    stale: dict[str, str] = field(default_factory=dict)  # stages whose result the pipeline now would not reuse -> why
    model: Path | None = None  # the train artifact (its loss.csv draws the curves)
    reports: dict[str, Report] = field(default_factory=dict, repr=False)

    def value(self, column: str) -> float | None:
        cell = self.cells.get(column)
        return cell.value if cell else None

    def to_json(self) -> dict[str, Any]:
        return {"branch": self.branch, "values": self.values, "status": self.status, "mark": self.mark,
                "problem": self.problem or None, "stale": self.stale or None, "run": self.run, "stages": self.stages, "summary": self.summary,
                "evaluations": self.evaluations, "metrics": {k: asdict(c) for k, c in self.cells.items()},
                "model": None if self.model is None else str(self.model)}
