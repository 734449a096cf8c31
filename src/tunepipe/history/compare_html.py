"""``pipeline compare --html``: one self-contained page (inline CSS, JS and SVG; the evaluate report's
Content-Security-Policy, so it loads nothing) with the table of branches, a bar chart per metric
with each branch's interval, and the loss curves of every train branch overlaid. Hovering a row or
a legend entry brings that branch forward in the charts. Written atomically.

The look, the escaping and the axis ticks are the evaluate report's (:mod:`tunepipe.evaluation.html_page`,
:mod:`tunepipe.evaluation.charts`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from tunepipe.evaluation.charts import nice_ticks
from tunepipe.evaluation.html_page import CSS, esc, fnum, page
from tunepipe.history import training as T
from tunepipe.history.branches import NOT_RUN, OK, TRAINING, Column, Row
from tunepipe.history.compare import SweepComparison
from tunepipe.history.compare_text import cell_text, problem_lines, status_text, verdict_lines

# Tableau 10: told apart in print and by most colour-blind readers
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac")

BARS_NOTE = ("Bars: each branch's value (of evaluate metrics, the tuned model's) with its bootstrap interval where "
             "the report has one; a dash: no value (the branch failed or has not got that far).")

EXTRA_CSS = """
#branches td.mark .badge { margin: 0; }
.tied { background: #6b7280; }
.status-bad { color: #b91c1c; } .status-wait { color: var(--muted); }
.verdict { margin: 10px 0 4px; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
svg [data-branch] { transition: opacity .12s; }
svg .dim { opacity: 0.12; }
.legend-item { cursor: default; }
"""

JS = r"""
(function () {
  "use strict";
  var marks = Array.prototype.slice.call(document.querySelectorAll("svg [data-branch]"));
  function focus(branch) {
    marks.forEach(function (el) {
      el.classList.toggle("dim", branch !== null && el.getAttribute("data-branch") !== branch);
    });
  }
  document.querySelectorAll("#branches tbody tr, .legend-item").forEach(function (el) {
    el.addEventListener("mouseenter", function () { focus(el.getAttribute("data-branch")); });
    el.addEventListener("mouseleave", function () { focus(null); });
  });
})();
"""


def write_html(c: SweepComparison, path: Path) -> None:
    """The page, written to a temporary file beside ``path`` and moved into place."""
    from tunepipe.cache.atomic import write_bytes

    path.absolute().parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, render_html(c).encode("utf-8"))


def colors(c: SweepComparison) -> dict[str, str]:
    """One colour per branch, in the sweep's own order (the same whatever the sort)."""
    return {b: PALETTE[i % len(PALETTE)] for i, b in enumerate(c.sweep.branches)}


def render_html(c: SweepComparison) -> str:
    title = f"Sweep {c.sweep.stage} of {c.pipeline}"
    notes = "".join(f"<li>{esc(line)}</li>" for line in problem_lines(c))
    verdict = "".join(f'<p class="verdict">{esc(line)}</p>' for line in verdict_lines(c))
    charts = "".join(metric_chart(c, col) for col in c.columns)
    metrics = f'<div class="charts">{charts}</div><p class="small">{BARS_NOTE}</p>' if charts else \
        '<p class="small">No branch has an evaluate report or training losses yet.</p>'
    return page(title, f"""<h1>{esc(title)}</h1>
<p class="sub">{esc(_subtitle(c))}</p>
<h2>Branches</h2>
{branch_table(c)}
{verdict}
{f'<ul class="small">{notes}</ul>' if notes else ''}
<h2>Metrics</h2>
{metrics}
<h2>Loss curves</h2>
{loss_curves(c)}""", JS, CSS + EXTRA_CSS)


def _subtitle(c: SweepComparison) -> str:
    s = c.sort
    order = "nothing to sort by" if s is None else \
        f"sorted by {s.name}, {'lowest' if s.higher_is_better is False else 'highest'} first"
    return f"{len(c.rows)} branches of {c.sweep.stage} · swept: {', '.join(c.sweep.keys)} · {order}"


def branch_table(c: SweepComparison) -> str:
    color = colors(c)
    head = "".join(["<th></th>", *(f"<th>{esc(k)}</th>" for k in c.sweep.keys), "<th>status</th>",
                    *(f'<th class=num title="{esc(_column_title(col))}">{esc(col.name)}</th>' for col in c.columns),
                    "<th>run</th>"])
    body = []
    for r in c.rows:
        badge = f'<span class="badge {"pass" if r.mark == "best" else "tied"}">{esc(r.mark)}</span>' if r.mark else ""
        swatch = f'<span class="swatch" style="background:{color[r.branch]}"></span>'
        cells = [f'<td class="mark">{badge}</td>']
        cells += [f"<td>{swatch if i == 0 else ''}{esc(r.values.get(k, ''))}</td>" for i, k in enumerate(c.sweep.keys)]
        cells.append(f'<td class="{_status_class(r)}">{esc(status_text(r))}</td>')
        cells += [f"<td class=num>{esc(cell_text(r.cells.get(col.name)))}</td>" for col in c.columns]
        cells.append(f"<td>{esc(r.run or '–')}</td>")
        body.append(f'<tr data-branch="{esc(r.branch)}" title="{esc(r.branch)}">{"".join(cells)}</tr>')
    return f'<table id="branches"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _status_class(r: Row) -> str:
    return "" if r.status == OK else ("status-wait" if r.status == NOT_RUN else "status-bad")


def _column_title(col: Column) -> str:
    if col.source == TRAINING:
        return f"{col.metric} from the train artifact's metrics.json (lower is better)"
    better = {True: "higher is better", False: "lower is better", None: "no better direction"}[col.higher_is_better]
    return f"{col.metric} of the tuned model in {col.source}; {better}"


def _label(r: Row, keys: Sequence[str]) -> str:
    return ", ".join(r.values.get(k, "") for k in keys)


def metric_chart(c: SweepComparison, col: Column) -> str:
    """One bar per branch with its interval; a branch without a value gets a dash."""
    rows = [r for r in c.rows if r.status != NOT_RUN]
    points = [v for r in rows if (cell := r.cells.get(col.name)) for v in (cell.value, cell.low, cell.high)
              if v is not None]
    if not points:
        return ""
    lo, hi = min(0.0, *points), max(points)  # bars start at zero
    if lo >= 0 and hi <= 1 and col.source != TRAINING:
        hi = 1.0  # a score: the whole 0-1 scale, as the evaluate report draws it
    else:
        hi = hi + (hi - lo) * 0.1 if hi > lo else lo + 1.0
    ticks = [t for t in nice_ticks(lo, hi, 4) if lo <= t <= hi]
    labels = [_label(r, c.sweep.keys) for r in rows]
    group = max(44, 7 * max(len(x) for x in labels) + 10)
    left, top, bottom, right = 44, 16, 34, 10
    width, height = left + right + group * len(rows), 200
    ph = height - top - bottom
    y = lambda v: top + ph * (1 - (v - lo) / (hi - lo))  # noqa: E731
    out = [f'<svg class="metric-chart" data-metric="{esc(col.name)}" role="img" aria-label="{esc(col.name)} by branch" '
           f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    for t in ticks:
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#e5e7eb"/>'
                   f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:.3g}</text>')
    for i, (r, label) in enumerate(zip(rows, labels)):
        out.append(_bar(r, col, left + i * group + group / 2, y, colors(c)[r.branch]))
        out.append(f'<text x="{left + i * group + group / 2:.1f}" y="{height - bottom + 14}" text-anchor="middle">'
                   f'{esc(label)}<title>{esc(r.branch)}</title></text>')
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(0.0):.1f}" y2="{y(0.0):.1f}" stroke="#9ca3af"/></svg>')
    return f"<figure>{''.join(out)}<figcaption>{esc(_column_title(col))}</figcaption></figure>"


def _bar(r: Row, col: Column, cx: float, y: Callable[[float], float], color: str) -> str:
    cell = r.cells.get(col.name)
    if cell is None or cell.value is None:
        return f'<text x="{cx:.1f}" y="{y(0.0) - 4:.1f}" text-anchor="middle">–</text>'
    top, bottom = sorted((y(cell.value), y(0.0)))
    out = [f'<g data-branch="{esc(r.branch)}"><rect class="bar" x="{cx - 13:.1f}" y="{top:.1f}" width="26" '
           f'height="{bottom - top:.1f}" fill="{color}"><title>{esc(r.branch)}: {esc(cell_text(cell))}</title></rect>']
    if cell.low is not None and cell.high is not None:
        out.append(f'<path class="interval" d="M{cx:.1f},{y(cell.low):.1f}V{y(cell.high):.1f}M{cx - 4:.1f},'
                   f'{y(cell.low):.1f}H{cx + 4:.1f}M{cx - 4:.1f},{y(cell.high):.1f}H{cx + 4:.1f}" stroke="#111827" '
                   'stroke-width="1.2" fill="none"/>')
    label_at = max(cell.value, cell.high) if cell.high is not None else cell.value
    out.append(f'<text x="{cx:.1f}" y="{y(label_at) - 4:.1f}" text-anchor="middle">{fnum(cell.value, digits=2)}'
               '</text></g>')
    return "".join(out)


def loss_curves(c: SweepComparison) -> str:
    """Every train branch's training (solid) and validation (dashed) loss per step, on one chart."""
    curves = {r.branch: T.curve(r.model) for r in c.rows if r.model is not None}
    curves = {b: rows for b, rows in curves.items() if rows}
    pts = [(p["step"], p[k]) for rows in curves.values() for p in rows for k in ("train_loss", "val_loss")
           if p.get(k) is not None]
    if not pts:
        return '<p class="small">No train branch has a loss curve (loss.csv) yet.</p>'
    x_lo, x_hi = min(p[0] for p in pts), max(p[0] for p in pts)
    y_lo, y_hi = min(p[1] for p in pts), max(p[1] for p in pts)
    x_hi = x_hi if x_hi > x_lo else x_lo + 1
    pad = (y_hi - y_lo) * 0.08 or 0.1
    y_lo, y_hi = (max(0.0, y_lo - pad) if y_lo >= 0 else y_lo - pad), y_hi + pad
    left, right, top, bottom, width, height = 52, 16, 16, 40, 720, 300
    pw, ph = width - left - right, height - top - bottom
    X = lambda s: left + pw * (s - x_lo) / (x_hi - x_lo)  # noqa: E731
    Y = lambda v: top + ph * (1 - (v - y_lo) / (y_hi - y_lo))  # noqa: E731
    out = [f'<svg id="loss-curves" role="img" aria-label="loss per step, every branch" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}">']
    out += [f'<line x1="{left}" x2="{width - right}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" stroke="#e5e7eb"/>'
            f'<text x="{left - 6}" y="{Y(t) + 4:.1f}" text-anchor="end">{t:.3g}</text>'
            for t in nice_ticks(y_lo, y_hi, 5) if y_lo <= t <= y_hi]
    out += [f'<text x="{X(t):.1f}" y="{height - bottom + 16}" text-anchor="middle">{t:.3g}</text>'
            for t in nice_ticks(x_lo, x_hi, 6) if x_lo <= t <= x_hi]
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">step</text>')
    color = colors(c)
    for branch, rows in curves.items():
        for key, dash in (("train_loss", ""), ("val_loss", ' stroke-dasharray="5,4"')):
            series = [(p["step"], p[key]) for p in rows if p.get(key) is not None]
            if series:
                points = " ".join(f"{X(s):.1f},{Y(v):.1f}" for s, v in series)
                out.append(f'<polyline class="curve {key.split("_")[0]}" data-branch="{esc(branch)}" '
                           f'points="{points}" fill="none" stroke="{color[branch]}" stroke-width="1.8"{dash}>'
                           f'<title>{esc(branch)}: {key.replace("_", " ")}</title></polyline>')
    out.append("</svg>")
    return (f"<figure>{''.join(out)}<figcaption>Solid: training loss; dashed: validation loss; from each train "
            f"branch's loss.csv.</figcaption></figure>{_legend(c, list(curves))}")


def _legend(c: SweepComparison, branches: list[str]) -> str:
    color = colors(c)
    labels = {r.branch: _label(r, c.sweep.keys) for r in c.rows}
    items = "".join(f'<span class="legend-item" data-branch="{esc(b)}" title="{esc(b)}">'
                    f'<span class="swatch" style="background:{color[b]}"></span>{esc(labels[b])}</span> '
                    for b in branches)
    return f'<p class="small" id="legend">{esc(", ".join(c.sweep.keys))}: {items}</p>'
