"""``pipeline runs`` and ``pipeline diff`` for people: text for a terminal, Markdown for a pull
request. (JSON is each result's ``to_json``.)"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from tunepipe.history import changes as C
from tunepipe.history.diff import PAIRED, DiffSide, MetricChange, RunDiff
from tunepipe.history.listing import RunRow
from tunepipe.history.workspace import WORKSPACE

COMPACT_WIDTH = 110  # a run's "changed" line is cut here, the rest left to `pipeline diff`
VALUE_WIDTH = 24
SECTIONS = ("parameters", "inputs", "plugin code", "packages", "stages")


def when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t is not None else "unknown time"


def took(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def value(v: Any, width: int = VALUE_WIDTH) -> str:
    if v is C.ABSENT:
        return "(unset)"
    text = v if isinstance(v, str) and v and v.strip() == v and not v[0].isdigit() else \
        json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= width else text[:width - 1] + "…"


def param_values(old: Any, new: Any, width: int = 40) -> tuple[str, str]:
    """Two values of a parameter as shown side by side; two long lists as what one has and the
    other lacks (``metrics: … → +contains_answer``), which truncation would hide."""
    if isinstance(old, list) and isinstance(new, list) and max(len(value(old, 10**6)), len(value(new, 10**6))) > width:
        gone = [x for x in old if x not in new]
        added = [x for x in new if x not in old]
        if gone or added:
            shared = f"{len(old) - len(gone)} same"
            return (", ".join([shared] + [f"-{value(x, width)}" for x in gone]),
                    ", ".join([shared] + [f"+{value(x, width)}" for x in added]))
    return value(old, width), value(new, width)


def number(v: float | None, signed: bool = False) -> str:
    return "-" if v is None else (f"{v:+.3f}" if signed else f"{v:.3f}")


# --- pipeline runs ------------------------------------------------------------------------------

def runs_text(rows: Sequence[RunRow]) -> str:
    id_width = max(len(r.run.short) for r in rows)
    lines = []
    for row in rows:
        r = row.run
        lines.append(f"{r.short:<{id_width}}  {when(r.started)}  {took(row.duration):>7}  {r.status:<11}  "
                     f"{_counts(row)}".rstrip())
        indent = " " * (id_width + 2)
        lines.append(f"{indent}changed  {compact_changes(row.changes)}")
        by_stage: dict[str, list[str]] = {}
        for h in row.metrics:
            shown = f"{number(h.base)}→{number(h.tuned)}" if h.base is not None else number(h.tuned)
            by_stage.setdefault(h.stage, []).append(f"{h.metric} {shown}")
        for stage, items in by_stage.items():
            mine = [h for h in row.metrics if h.stage == stage]
            notes = [n for n, on in (("base→tuned", any(h.base is not None for h in mine)),
                                     ("the failed stage's report", any(h.failed for h in mine))) if on]
            label = f"{stage} ({', '.join(notes)})" if notes else stage
            lines.append(f"{indent}metrics  {label}: {', '.join(items)}")
    return "\n".join(lines)


def _counts(row: RunRow) -> str:
    parts = [f"{n} {status}" for status, n in row.counts.items() if n]
    if row.failed:
        parts[[p.endswith(" failed") for p in parts].index(True)] += f" ({', '.join(row.failed)})"
    return ", ".join(parts) or "no stages"


def compact_changes(changes: Sequence[C.Change] | None) -> str:
    """One line: per stage its changed parameters (old→new), file inputs, code, plugin, packages."""
    if changes is None:
        return "first run"
    by_stage: dict[str, list[str]] = {}
    for c in changes:
        item = _compact(c)
        if item:
            by_stage.setdefault(c.stage, []).append(item)
    if not by_stage:
        return "nothing (same parameters, file inputs and code)"
    items = [f"{stage}: {', '.join(things)}" for stage, things in by_stage.items()]
    text = "; ".join(items)
    if len(text) <= COMPACT_WIDTH:
        return text
    kept = text[:COMPACT_WIDTH].rsplit(";", 1)[0] if ";" in text[:COMPACT_WIDTH] else text[:COMPACT_WIDTH - 3] + "..."
    return f"{kept}; ... (`pipeline diff` shows all)"


def _compact(c: C.Change) -> str:
    if c.kind == C.PARAM:
        return f"{c.what} {value(c.old, 16)}→{value(c.new, 16)}"
    if c.kind == C.INPUT:
        if c.upstream:
            return ""
        return f"+{c.what}" if c.old is C.ABSENT else (f"-{c.what}" if c.new is C.ABSENT else c.what)
    if c.kind == C.CODE:
        return "code"
    if c.kind == C.PLUGIN:
        return f"plugin {value(c.old, 30)}→{value(c.new, 30)}"
    if c.kind == C.PACKAGE:
        return f"{c.what} {value(c.old, 12)}→{value(c.new, 12)}"
    return {C.ADDED: "new stage", C.REMOVED: "not run"}.get(c.kind, c.kind)


# --- pipeline diff -----------------------------------------------------------------------------

def _side(s: DiffSide) -> str:
    if s.run_id == WORKSPACE:
        return "the workspace (not run yet)"
    return f"run {s.id} ({when(s.started)}, {s.status})"


def _change_rows(d: RunDiff) -> dict[str, list[tuple[str, str, str, str]]]:
    """Section -> (stage, what, old, new) rows."""
    out: dict[str, list[tuple[str, str, str, str]]] = {k: [] for k in SECTIONS}
    for c in d.changes:
        if c.kind == C.PARAM:
            out["parameters"].append((c.stage, c.what, *param_values(c.old, c.new)))
        elif c.kind == C.INPUT:
            old = "(none)" if c.old is C.ABSENT else str(c.old)[:12]
            new = "(none)" if c.new is C.ABSENT else str(c.new)[:12]
            out["inputs"].append((c.stage, c.what + (" (upstream)" if c.upstream else ""), old, new))
        elif c.kind == C.PLUGIN:
            out["plugin code"].append((c.stage, c.what, value(c.old, 40), value(c.new, 40)))
        elif c.kind == C.CODE:
            out["plugin code"].append((c.stage, c.what, str(c.old)[:12], str(c.new)[:12]))
        elif c.kind == C.PACKAGE:
            out["packages"].append((c.stage, c.what, value(c.old), value(c.new)))
        else:
            run = d.b.id if c.kind == C.ADDED else d.a.id
            out["stages"].append((c.stage, f"ran only in run {run}", "", ""))
    return {k: v for k, v in out.items() if v}


def _arrow(old: str, new: str) -> str:
    return f"{old} → {new}" if old or new else ""


def _metric_cells(m: MetricChange) -> tuple[str, str, str, str, str]:
    interval = (f"[{number(m.low, True)}, {number(m.high, True)}]" if m.basis == PAIRED and m.low is not None
                else {"overlap": "intervals overlap" if m.outside is False else "intervals apart",
                      "same": "same result"}.get(m.basis, "-"))
    return number(m.old), number(m.new), number(m.delta, True), interval, m.verdict or "-"


def diff_text(d: RunDiff) -> str:
    lines = [f"{_side(d.a)} → {_side(d.b)}"]
    sections = _change_rows(d)
    if not sections:
        lines.append("\nno differences in parameters, inputs or plugin code")
    for title, rows in sections.items():
        lines.append(f"\n{title}")
        lines.extend(_table([(s, w, _arrow(o, n)) for s, w, o, n in rows], "  "))
    for e in d.evaluations:
        head = f"\nmetrics of {e.stage} (tuned model"
        if e.paired:
            head += f"; Δ interval: paired bootstrap over the same {e.examples} examples, {e.confidence:.0%})"
        elif e.why and not any(m.stage == e.stage for m in d.metrics):
            lines.append(f"{head}): {e.why}")
            continue
        else:
            head += f"; the examples cannot be paired: {e.why}; the runs' {e.confidence:.0%} intervals compared)"
        lines.append(head)
        rows = [(m.metric, *_metric_cells(m)) for m in d.metrics if m.stage == e.stage]
        lines.extend(_table([("metric", "old", "new", "Δ", "interval of Δ", "")] + rows, "  "))
        lines.extend(f"  note: {m.metric}: {m.note}" for m in d.metrics if m.stage == e.stage and m.note)
    return "\n".join(lines)


def diff_markdown(d: RunDiff, pipeline: str) -> str:
    lines = [f"### `{pipeline}`: run {d.a.id} → {d.b.id}", "",
             f"Old: {_side(d.a)}; new: {_side(d.b)}.", ""]
    sections = _change_rows(d)
    if not sections:
        lines += ["No differences in parameters, inputs or plugin code.", ""]
    for title, rows in sections.items():
        if title == "stages":
            lines += [f"**Stages**: {'; '.join(f'{_md(s)} {_md(w)}' for s, w, _, _ in rows)}.", ""]
            continue
        lines += [f"**{title.capitalize()}**", "", "| stage | what | old | new |", "|---|---|---|---|"]
        lines += [f"| {_md(s)} | {_md(w)} | {_md(o)} | {_md(n)} |" for s, w, o, n in rows]
        lines.append("")
    for e in d.evaluations:
        rows = [m for m in d.metrics if m.stage == e.stage]
        if not rows:
            lines += [f"**Metrics of {e.stage}**: {_md(e.why)}", ""]
            continue
        how = (f"paired bootstrap over the same {e.examples} examples, {e.confidence:.0%} interval of Δ" if e.paired
               else f"examples not paired ({_md(e.why)}): the runs' {e.confidence:.0%} intervals compared")
        lines += [f"**Metrics of {e.stage}** (tuned model; {how})", "",
                  "| metric | old | new | Δ | interval of Δ | |", "|---|---:|---:|---:|---|---|"]
        lines += ["| " + " | ".join(_md(x) for x in (m.metric, *_metric_cells(m))) + " |" for m in rows]
        lines += [""] + [f"_{_md(m.metric)}: {_md(m.note)}_  " for m in rows if m.note]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _table(rows: Sequence[Sequence[str]], indent: str) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths))).rstrip() for r in rows]


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
