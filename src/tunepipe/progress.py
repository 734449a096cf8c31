"""The terminal view of a run: one line per stage, with state, duration and a short summary.

On a terminal, :class:`LiveReporter` (rich) keeps one line per stage and updates it in place,
with the elapsed time of running stages. Elsewhere (CI logs, pipes) :class:`LineReporter` prints a
line per state change, which reads well in a log file. Colour only on a terminal and never when
``NO_COLOR`` is set (https://no-color.org).

Streams, as in the command-line tools users know: the run's *result* (the header, each stage's
final line, the dry-run plan and the closing ``ok:``/``failed:`` line) goes to stdout, so
``pipeline run x.yaml > out.txt`` captures it; the live view, "running" lines, reasons, progress
notes, messages and errors go to stderr.
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
from tunepipe.status import FINISHED, PlanState, Status

_STYLE = {Status.CACHED: ("✓", "cyan"), Status.DONE: ("✓", "green"), Status.RUNNING: ("▶", "yellow"),
          Status.FAILED: ("✗", "red"), Status.SKIPPED: ("-", "bright_black"), Status.CANCELLED: ("✗", "yellow"),
          Status.WAITING: ("·", "bright_black")}
_TIMED = (Status.DONE, Status.FAILED)  # the statuses shown with the stage's duration
QUIET_PROGRESS_S = 30.0

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
                 color: bool | None = None, result: TextIO | None = None) -> None:
        self.out = stream or sys.stderr
        self.result = result or self.out  # one stream when a caller gives only one
        self.verbosity = verbosity
        self.explain = explain or verbosity > 0
        self.color = use_color(self.out) if color is None else color
        self.result_color = use_color(self.result) if color is None else color
        self.width = 8
        self._lock = threading.Lock()
        self._last_progress: dict[str, float] = {}

    def _c(self, text: str, color: str, on: bool | None = None) -> str:
        return f"\x1b[{_ANSI[color]}m{text}\x1b[0m" if (self.color if on is None else on) else text

    def _print(self, text: str) -> None:
        with self._lock:
            print(text, file=self.out, flush=True)

    def _result(self, text: str) -> None:
        with self._lock:
            print(text, file=self.result, flush=True)

    def start(self, pipeline: Pipeline, selected: list[str], cache: str) -> None:
        self.width = max([8] + [len(n) for n in selected])
        if self.verbosity >= 0:
            n = len(selected)
            self._result(self._c(f"pipeline {pipeline.name}: {n} stage{'s' if n != 1 else ''}", "bold")
                        + (f"  (cache {cache})" if self.verbosity > 0 else ""))

    def stage(self, o: StageOutcome) -> None:
        if self.verbosity < 0 and o.status != Status.FAILED:
            return
        mark, color = _STYLE.get(o.status, ("?", "bold"))
        final = o.status != Status.RUNNING
        dur = f"{o.duration:6.2f}s" if o.status in _TIMED else " " * 7
        shown = self._c(mark, color, self.result_color if final else None)
        line = f"  {shown} {o.name:<{self.width}}  {o.status:<9}{dur}"
        if o.status in FINISHED and o.summary:
            line += "  " + format_summary(o.summary)
        if o.node:
            line += f"  [node {o.node[:8]}" + (f", attempt {o.attempts}]" if o.attempts > 1 else "]")
        if o.status == Status.SKIPPED and o.reasons:
            line += f"  ({o.reasons[0]})"
        (self._result if final else self._print)(line.rstrip())
        if o.status == Status.RUNNING and self.explain:
            for r in o.reasons:
                self._print(f"      because {r}")
        if o.status == Status.CACHED and self.explain:
            for r in o.reasons:  # operational changes: they do not make a stage run
                self._print(f"      {r}")
        if o.status == Status.FAILED:
            self._print(f"      {self._c(o.error, 'red')}")
            if o.log_path:
                self._print(f"      log: {o.log_path}")

    def progress(self, stage: str, note: str) -> None:
        """-v: every progress note, at most one a second. Default: nothing for a stage's first
        ``QUIET_PROGRESS_S`` seconds, then a note that often, so a long training run in CI or a
        pipe shows it is alive without flooding the log of short stages."""
        if self.verbosity < 0:
            return
        now = time.monotonic()
        if self.verbosity >= 1:
            every = 1.0
        else:
            every = QUIET_PROGRESS_S
            self._last_progress.setdefault(stage, now)  # the first note starts the clock
        if now - self._last_progress.get(stage, 0.0) >= every:
            self._last_progress[stage] = now
            self._print(f"      {stage}: {note}")

    def message(self, text: str) -> None:
        self._print(f"  {self._c('!', 'yellow')} {text}")

    def plan(self, plans: list[StagePlan]) -> None:
        for text, color in plan_lines(plans, self.width):
            self._result(f"  {self._c(text[0], color, self.result_color)}{text[1:]}")

    def finish(self, outcome: RunOutcome) -> None:
        text, color = result_line(outcome)
        self._result(self._c(text, color, self.result_color))


def plan_lines(plans: list[StagePlan], width: int) -> list[tuple[str, str]]:
    """(line, colour of its mark) for each planned stage of a dry run."""
    out = []
    for p in plans:
        if p.state == PlanState.CACHED:
            out.append((f"✓ {p.name:<{width}}  cached" + "".join(f"; {u}" for u in p.unkeyed), "cyan"))
        elif p.state == PlanState.RUN:
            out.append((f"▶ {p.name:<{width}}  will run: {'; '.join(p.reasons)}", "yellow"))
            out.extend((f"  {'':<{width}}  {note}", "bright_black") for note in p.notes)
        else:
            out.append((f"… {p.name:<{width}}  pending: {'; '.join(p.reasons)}", "yellow"))
    return out


def result_line(outcome: RunOutcome) -> tuple[str, str]:
    counts: dict[str, int] = {}
    for s in outcome.stages.values():
        counts[s.status] = counts.get(s.status, 0) + 1
    detail = ", ".join(f"{n} {k}" for k, n in counts.items())
    color = {Status.OK: "green", Status.FAILED: "red"}.get(outcome.status, "yellow")
    return f"{outcome.status}: {detail} in {outcome.duration:.2f}s", color


class LiveReporter:
    """One line per stage, redrawn in place on a terminal (rich); messages scroll above it."""

    def __init__(self, stream: TextIO | None = None, verbosity: int = 0, explain: bool = False,
                 force_terminal: bool | None = None, result: TextIO | None = None) -> None:
        from rich.console import Console

        self.console = Console(file=stream or sys.stderr, force_terminal=force_terminal, highlight=False)
        # The view is erased at the end and the result printed in its place, unless the result goes
        # to a file or pipe: then the terminal keeps the view and the file gets the result, unwrapped.
        self.transient = result is None or (hasattr(result, "isatty") and result.isatty())
        self.result = self.console if result is None else Console(file=result, highlight=False,
                                                                  soft_wrap=not self.transient)
        self.verbosity = verbosity
        self.explain = explain or verbosity > 0
        self.width = 8
        self._lock = threading.Lock()
        self._rows: dict[str, StageOutcome] = {}
        self._started: dict[str, float] = {}
        self._notes: dict[str, str] = {}
        self._live: Any = None

    def _render(self) -> Any:
        from rich.text import Text

        lines = Text()
        with self._lock:
            rows = list(self._rows.values())
            for o in rows:
                mark, color = _STYLE.get(o.status, ("?", "bold"))
                if o.status == Status.RUNNING:
                    dur = f"{time.monotonic() - self._started.get(o.name, time.monotonic()):6.1f}s"
                    tail = self._notes.get(o.name, "")
                elif o.status in _TIMED:
                    dur, tail = f"{o.duration:6.2f}s", format_summary(o.summary)
                    if o.node:
                        tail += f"  [node {o.node[:8]}" + (f", attempt {o.attempts}]" if o.attempts > 1 else "]")
                else:
                    dur, tail = " " * 7, format_summary(o.summary) if o.status == Status.CACHED else (
                        o.reasons[0] if o.reasons else "")
                lines.append("  ")
                lines.append(mark, style=color)
                lines.append(f" {o.name:<{self.width}}  {o.status:<9}{dur}  {tail}".rstrip() + "\n")
        lines.rstrip()
        return lines

    def start(self, pipeline: Pipeline, selected: list[str], cache: str) -> None:
        from rich.live import Live

        self.width = max([8] + [len(n) for n in selected])
        n = len(selected)
        self.result.print(f"[bold]pipeline {pipeline.name}: {n} stage{'s' if n != 1 else ''}[/bold]"
                          + (f"  (cache {cache})" if self.verbosity > 0 else ""))
        for name in selected:
            self._rows[name] = StageOutcome(name, Status.WAITING)
        self._live = Live(get_renderable=self._render, console=self.console, refresh_per_second=4,
                          transient=self.transient)
        self._live.start()

    def stage(self, o: StageOutcome) -> None:
        with self._lock:
            if o.status == Status.RUNNING:
                self._started[o.name] = time.monotonic()
            self._rows[o.name] = o
        if o.status == Status.RUNNING and self.explain:
            for r in o.reasons:
                self.message(f"{o.name} runs because {r}", mark="")
        if o.status == Status.CACHED and self.explain:
            for r in o.reasons:
                self.message(f"{o.name} stays cached: {r}", mark="")
        if o.status == Status.FAILED:
            self.message(o.error + (f"\n      log: {o.log_path}" if o.log_path else ""),  # it names the stage
                         mark="✗", style="red")

    def progress(self, stage: str, note: str) -> None:
        with self._lock:
            self._notes[stage] = note

    def message(self, text: str, mark: str = "!", style: str = "yellow") -> None:
        from rich.text import Text

        line = Text("  ")
        line.append(mark or " ", style=style)
        line.append(f" {text}")
        (self._live.console if self._live else self.console).print(line)

    def plan(self, plans: list[StagePlan]) -> None:
        self._rows.clear()  # a dry run's result is the plan, not the stage lines
        self._stop()
        for text, color in plan_lines(plans, self.width):
            self.result.print(f"  [{color}]{text[0]}[/{color}]{text[1:]}", markup=True, highlight=False)

    def finish(self, outcome: RunOutcome) -> None:
        self._stop()
        text, color = result_line(outcome)
        self.result.print(text, style=color)

    def _stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
            if self._rows:  # each stage's final line, where the view was (or into the file)
                self.result.print(self._render())



def make_reporter(verbosity: int, explain: bool, stream: TextIO | None = None,
                  result: TextIO | None = None) -> LineReporter | LiveReporter:
    """A live view on an interactive terminal; plain lines in logs, pipes, CI and with -q.
    ``stream`` (stderr) gets the live view and diagnostics, ``result`` (stdout) the result."""
    out = stream or sys.stderr
    interactive = hasattr(out, "isatty") and out.isatty() and os.environ.get("TERM") != "dumb" \
        and not os.environ.get("CI")
    if interactive and verbosity >= 0:
        return LiveReporter(out, verbosity, explain, result=result)
    return LineReporter(out, verbosity, explain, result=result)
