"""The tracker contract: what a finished run hands an experiment tracker (MLflow, W&B, TensorBoard).

A tracker is a class with a ``name``, the JSON Schema of its settings (the mapping under its name in
``tracking:``, checked at validation with file and line), and four calls made once per run, in this
order: ``start``, ``log_metrics``, ``log_artifact`` (per file), ``end``. It is made with no
arguments, one instance per run. Everything it receives is plain text and numbers, secrets already
redacted; whatever it raises becomes one warning line, never a failed run.

Register one in a package's ``pyproject.toml``::

    [project.entry-points."tunepipe.trackers"]
    wandb = "my_package.tracker:WandbTracker"
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tunepipe.status import RUN_ENDS

STATUSES = RUN_ENDS  # what ``end`` receives: the run's outcome (ok, failed, interrupted)


@dataclass(frozen=True)
class Metric:
    """One value of a metric; ``step`` orders a series (the training loss per optimizer step)."""

    key: str
    value: float
    step: int = 0


@dataclass(frozen=True)
class RunStart:
    """What a tracker opens a run with."""

    settings: Mapping[str, Any]  # its mapping under ``tracking:``, as written (may be empty)
    base: Path  # the pipeline file's folder: relative paths in the settings are relative to it
    experiment: str  # the default experiment name: the pipeline's name
    run_name: str
    params: Mapping[str, str] = field(default_factory=dict)  # ``stage.param`` -> value as text
    tags: Mapping[str, str] = field(default_factory=dict)


class Tracker(Protocol):
    """An experiment tracker: one instance receives one finished run."""

    name: str
    settings_schema: Mapping[str, Any]  # JSON Schema of its settings

    def start(self, run: RunStart) -> None: ...

    def log_metrics(self, metrics: Sequence[Metric]) -> None: ...

    def log_artifact(self, path: Path, folder: str) -> None:
        """Keep the file ``path`` under ``folder`` (a relative, '/'-separated name) of the run."""
        ...

    def end(self, status: str) -> None:
        """Close the run with its outcome: one of :data:`STATUSES`."""
        ...
