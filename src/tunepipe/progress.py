"""The terminal view of a run: one line per stage state change, with duration and summary.

Lines (not a redrawn table) so that logs in CI read the same as a terminal. Colour only on a
terminal and never when ``NO_COLOR`` is set (https://no-color.org).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, TextIO

from tunepipe.plan import StagePlan
from tunepipe.runner import RunOutcome, StageOutcome
from tunepipe.spec.model import Pipeline

_STYLE = {"cached": ("✓", "cyan"), "done": ("✓", "green"), "running": ("▶", "yellow"),
          "failed": ("✗", "red"), "skipped": ("-", "bright_black"), "cancelled": ("✗", "yellow")}
_ANSI = {"cyan": "36", "green": "32", "yellow": "33", "red": "31", "bright_black": "90", "bold": "1"}


def use_color(stream: TextIO) -> bool:
    if "NO_COLOR" in os.environ and os.environ["NO_COLOR"] != "":
        return False
    return hasattr(stream, "isatty") and stream.isatty()


def format_summary(summary: dict[str, Any], limit: int = 4) -> str:
    parts = []
    for k, v in summary.items():
        if isinstance(v, bool) or v is None:
            parts.append(f"{k}={str(v).lower()}")
        elif isinstance(v, int):
            parts.append(f"{k}={v:,}")
        elif isinstance(v, float):
            parts.append(f"{k}={v:.4g}")
        elif isinstance(v, str) and len(v) <= 40:
            parts.append(f"{k}={v}")
        if len(parts) == limit:
            break
    return "  ".join(parts)


class LineReporter:
    """Prints run progress; ``verbosity`` -1 quiet (failures and the result), 0 normal, 1 verbose."""

    def __init__(self, stream: TextIO | None = None, verbosity: int = 0, explain: bool = False,
                 color: bool | None = None) -> None:
        self.out = stream or sys.stderr
        self.verbosity = verbosity
        self.explain = explain or verbosity > 0
        self.color = use_color(self.out) if color is None else color
        self.width = 8
        self._lock = threading.Lock()
        self._last_progress: dict[str, float] = {}

    def _c(self, text: str, color: str) -> str:
        return f"\x1b[{_ANSI[color]}m{text}\x1b[0m" if self.color else text

    def _print(self, text: str) -> None:
        with self._lock:
            print(text, file=self.out, flush=True)

    def start(self, pipeline: Pipeline, selected: list[str], cache: str) -> None:
        self.width = max([8] + [len(n) for n in selected])
        if self.verbosity >= 0:
            n = len(selected)
            self._print(self._c(f"pipeline {pipeline.name}: {n} stage{'s' if n != 1 else ''}", "bold")
                        + (f"  (cache {cache})" if self.verbosity > 0 else ""))

    def stage(self, o: StageOutcome) -> None:
        if self.verbosity < 0 and o.status != "failed":
            return
        mark, color = _STYLE.get(o.status, ("?", "bold"))
        dur = f"{o.duration:6.2f}s" if o.status in ("done", "failed") else " " * 7
        line = f"  {self._c(mark, color)} {o.name:<{self.width}}  {o.status:<9}{dur}"
        if o.status in ("done", "cached") and o.summary:
            line += "  " + format_summary(o.summary)
        if o.status == "skipped" and o.reasons:
            line += f"  ({o.reasons[0]})"
        self._print(line.rstrip())
        if o.status == "running" and self.explain:
            for r in o.reasons:
                self._print(f"      because {r}")
        if o.status == "failed":
            self._print(f"      {self._c(o.error, 'red')}")
            if o.log_path:
                self._print(f"      log: {o.log_path}")

    def progress(self, stage: str, note: str) -> None:
        if self.verbosity < 1:
            return
        now = time.monotonic()
        if now - self._last_progress.get(stage, 0.0) >= 1.0:
            self._last_progress[stage] = now
            self._print(f"      {stage}: {note}")

    def message(self, text: str) -> None:
        self._print(f"  {self._c('!', 'yellow')} {text}")

    def plan(self, plans: list[StagePlan]) -> None:
        for p in plans:
            if p.state == "cached":
                self._print(f"  {self._c('✓', 'cyan')} {p.name:<{self.width}}  cached")
            elif p.state == "run":
                self._print(f"  {self._c('▶', 'yellow')} {p.name:<{self.width}}  will run: {'; '.join(p.reasons)}")
            else:
                self._print(f"  {self._c('…', 'yellow')} {p.name:<{self.width}}  will run if its inputs change "
                            f"({'; '.join(p.reasons)})")

    def finish(self, outcome: RunOutcome) -> None:
        counts: dict[str, int] = {}
        for s in outcome.stages.values():
            counts[s.status] = counts.get(s.status, 0) + 1
        detail = ", ".join(f"{n} {k}" for k, n in counts.items())
        color = {"ok": "green", "failed": "red"}.get(outcome.status, "yellow")
        self._print(self._c(f"{outcome.status}: {detail} in {outcome.duration:.2f}s", color))
