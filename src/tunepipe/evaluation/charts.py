"""The evaluate report's inline SVG charts (metrics with intervals, differences around zero, the
loss curve) and the axis ticks they (and ``pipeline compare --html``) use. Apart from the report's
sections so that each stays small; every text in them is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from tunepipe.evaluation.html_page import esc, fnum
from tunepipe.evaluation.report_md import verdict

BASE_COLOR = "#8d99a6"
TUNED_COLOR = "#2563eb"
TRAIN_COLOR = "#2563eb"
VAL_COLOR = "#ea580c"
BETTER = "#15803d"
WORSE = "#b91c1c"
NEUTRAL = "#6b7280"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    t = start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _tick_text(t: float) -> str:
    return f"{t:.3g}"


def metrics_chart(doc: Mapping[str, Any]) -> str:
    """Bars per metric on a 0-1 axis (metrics that lie in 0-1), base and tuned, with intervals."""
    from tunepipe.evaluation.metrics import RANGES

    names = [m for m in doc["metrics"] if RANGES.get(m, (0.0, 1.0))[1] == 1.0]
    if not names:
        return ""
    has_base = "base" in doc["models"]
    sides = (["base"] if has_base else []) + ["tuned"]
    colors = {"base": BASE_COLOR, "tuned": TUNED_COLOR}
    left, top, bottom, right = 44, 28, 46, 12
    group = 34 + 26 * len(sides)
    width = left + right + group * len(names)
    height = 260
    plot_h = height - top - bottom
    y = lambda v: top + plot_h * (1 - max(0.0, min(1.0, v)))  # noqa: E731
    out = [f'<svg id="metrics-chart" role="img" aria-label="metrics, base and tuned" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}">']
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#e5e7eb"/>')
        out.append(f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    for gi, name in enumerate(names):
        m = doc["metrics"][name]
        x0 = left + gi * group + 17
        for si, side in enumerate(sides):
            est = m.get(side) or {}
            v = est.get("value")
            x = x0 + si * 26
            if v is not None:
                out.append(f'<rect class="bar" x="{x}" y="{y(v):.1f}" width="22" height="{max(0.0, y(0) - y(v)):.1f}" '
                           f'fill="{colors[side]}"><title>{esc(name)} {side}: {fnum(v)}</title></rect>')
            lo, hi = est.get("ci_low"), est.get("ci_high")
            if v is not None:
                label_at = max(v, hi) if hi is not None else v
                out.append(f'<text x="{x + 11}" y="{y(label_at) - 5:.1f}" text-anchor="middle">{fnum(v, digits=2)}</text>')
            if lo is not None and hi is not None:
                cx = x + 11
                out.append(f'<path d="M{cx},{y(lo):.1f}V{y(hi):.1f}M{cx - 4},{y(lo):.1f}H{cx + 4}M{cx - 4},{y(hi):.1f}'
                           f'H{cx + 4}" stroke="#111827" stroke-width="1.2" fill="none"/>')
        out.append(f'<text x="{x0 + 13 * len(sides)}" y="{height - bottom + 16}" text-anchor="middle">{esc(name)}</text>')
    lx = left
    for side in sides:
        out.append(f'<rect x="{lx}" y="6" width="12" height="12" fill="{colors[side]}"/>'
                   f'<text x="{lx + 16}" y="16">{side}</text>')
        lx += 70
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#9ca3af"/>')
    out.append("</svg>")
    return "\n".join(out)


def delta_chart(doc: Mapping[str, Any]) -> str:
    """Each metric's difference tuned - base with its paired interval, around a zero line (metrics on a
    0-1 scale: length_ratio, on its own scale, is in the table)."""
    from tunepipe.evaluation.metrics import RANGES

    rows = [(n, m["delta"], m.get("higher_is_better")) for n, m in doc["metrics"].items()
            if m.get("delta") and RANGES.get(n, (0.0, 1.0))[1] == 1.0]
    rows = [r for r in rows if r[1].get("value") is not None]
    if not rows:
        return ""
    extent = max([abs(v) for _, d, _ in rows for v in (d.get("value"), d.get("ci_low"), d.get("ci_high"))
                  if v is not None] + [0.05]) * 1.15
    left, right, top, row_h = 150, 24, 26, 30
    width, height = 560, top + row_h * len(rows) + 30
    plot_w = width - left - right
    x = lambda v: left + plot_w * (v + extent) / (2 * extent)  # noqa: E731
    out = [f'<svg id="delta-chart" role="img" aria-label="differences tuned minus base" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}">']
    for t in nice_ticks(-extent, extent, 6):
        if -extent <= t <= extent:
            out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top - 6}" y2="{height - 26}" stroke="#f1f5f9"/>')
            out.append(f'<text x="{x(t):.1f}" y="{height - 10}" text-anchor="middle">{_tick_text(t)}</text>')
    out.append(f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{top - 10}" y2="{height - 26}" stroke="#6b7280" '
               'stroke-dasharray="3,3"/>')
    out.append(f'<text x="{x(0):.1f}" y="{top - 12}" text-anchor="middle">tuned − base</text>')
    for i, (name, d, hib) in enumerate(rows):
        cy = top + row_h * i + row_h / 2
        word = verdict(d, hib)
        color = BETTER if word == "better" else WORSE if word == "worse" else NEUTRAL
        out.append(f'<text x="{left - 10}" y="{cy + 4:.1f}" text-anchor="end">{esc(name)}</text>')
        lo, hi = d.get("ci_low"), d.get("ci_high")
        if lo is not None and hi is not None:
            out.append(f'<path d="M{x(lo):.1f},{cy:.1f}H{x(hi):.1f}M{x(lo):.1f},{cy - 5:.1f}V{cy + 5:.1f}'
                       f'M{x(hi):.1f},{cy - 5:.1f}V{cy + 5:.1f}" stroke="{color}" stroke-width="1.6" fill="none"/>')
        out.append(f'<circle class="point" cx="{x(d["value"]):.1f}" cy="{cy:.1f}" r="4.5" fill="{color}">'
                   f'<title>{esc(name)}: {fnum(d["value"], True)} {esc(word)}</title></circle>')
    out.append("</svg>")
    return "\n".join(out)


def loss_chart(loss: Sequence[Mapping[str, Any]]) -> str:
    """The training (and validation) loss per step."""
    train = [(r["step"], r["train_loss"]) for r in loss if r.get("train_loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in loss if r.get("val_loss") is not None]
    if not train and not val:
        return ""
    pts = train + val
    x_lo, x_hi = min(p[0] for p in pts), max(p[0] for p in pts)
    y_lo, y_hi = min(p[1] for p in pts), max(p[1] for p in pts)
    if x_hi == x_lo:
        x_hi = x_lo + 1
    pad = (y_hi - y_lo) * 0.08 or 0.1
    y_lo, y_hi = max(0.0, y_lo - pad) if y_lo >= 0 else y_lo - pad, y_hi + pad
    yt = nice_ticks(y_lo, y_hi, 5)
    y_lo, y_hi = min(y_lo, yt[0]), max(y_hi, yt[-1])
    left, right, top, bottom = 52, 16, 28, 40
    width, height = 560, 260
    pw, ph = width - left - right, height - top - bottom
    X = lambda s: left + pw * (s - x_lo) / (x_hi - x_lo)  # noqa: E731
    Y = lambda v: top + ph * (1 - (v - y_lo) / (y_hi - y_lo))  # noqa: E731
    out = [f'<svg id="loss-chart" role="img" aria-label="training loss" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}">']
    for t in yt:
        if y_lo <= t <= y_hi:
            out.append(f'<line x1="{left}" x2="{width - right}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" stroke="#e5e7eb"/>')
            out.append(f'<text x="{left - 6}" y="{Y(t) + 4:.1f}" text-anchor="end">{_tick_text(t)}</text>')
    for t in nice_ticks(x_lo, x_hi, 6):
        if x_lo <= t <= x_hi:
            out.append(f'<text x="{X(t):.1f}" y="{height - bottom + 16}" text-anchor="middle">{_tick_text(t)}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">step</text>')
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{top + ph}" y2="{top + ph}" stroke="#9ca3af"/>')
    for series, color, name in ((train, TRAIN_COLOR, "train loss"), (val, VAL_COLOR, "validation loss")):
        if not series:
            continue
        path = " ".join(f"{X(s):.1f},{Y(v):.1f}" for s, v in series)
        out.append(f'<polyline class="loss {name.split()[0]}" points="{path}" fill="none" stroke="{color}" '
                   f'stroke-width="1.8"/>')
        if len(series) <= 60:
            out += [f'<circle cx="{X(s):.1f}" cy="{Y(v):.1f}" r="2.5" fill="{color}"><title>{name} step {s:g}: '
                    f'{v:.4g}</title></circle>' for s, v in series]
    lx = left
    for series, color, name in ((train, TRAIN_COLOR, "train loss"), (val, VAL_COLOR, "validation loss")):
        if series:
            out.append(f'<rect x="{lx}" y="8" width="12" height="3" fill="{color}"/><text x="{lx + 16}" y="14">{name}</text>')
            lx += 120
    out.append("</svg>")
    return "\n".join(out)
