"""report.html: one self-contained page (no network: inline CSS, JS and SVG; a Content-Security-Policy
that forbids loading anything) with

* the headline table, base vs tuned with bootstrap intervals and the paired difference;
* the gates;
* two inline SVG charts: the metrics side by side (bars with interval whiskers), and the
  differences with their intervals around zero;
* the training loss curve from the train artifact's loss.csv (local or OpenAI);
* generation numbers (time, tokens, latency, retries);
* every example side by side (up to ``html_examples``), worst regressions first, with a search box
  and sortable columns (click a header).

Every text from data (prompts, replies, judge reasons, model names) is HTML-escaped.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from tunepipe.evaluation.report_md import decoding_text, verdict

BASE_COLOR = "#8d99a6"
TUNED_COLOR = "#2563eb"
TRAIN_COLOR = "#2563eb"
VAL_COLOR = "#ea580c"
BETTER = "#15803d"
WORSE = "#b91c1c"
NEUTRAL = "#6b7280"

CHART_NOTE = ("Bars: the aggregate of each metric with its interval; right: the paired difference tuned − base, "
              "green where its interval lies above zero, red where below")

CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
       "base-uri 'none'; form-action 'none'")

CSS = """
:root { color-scheme: light; --fg: #1f2937; --muted: #6b7280; --line: #e5e7eb; --bg: #ffffff; --soft: #f8fafc; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--fg); background: var(--bg); }
main { max-width: 1280px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 32px 0 10px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.sub { color: var(--muted); margin: 0 0 4px; }
table { border-collapse: collapse; }
th, td { padding: 5px 9px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.ci { color: var(--muted); font-size: 12px; }
.better { color: #15803d; font-weight: 600; }
.worse { color: #b91c1c; font-weight: 600; }
.flat { color: var(--muted); }
.gates { list-style: none; padding: 0; margin: 0; }
.gates li { margin: 4px 0; }
.badge { display: inline-block; min-width: 44px; text-align: center; border-radius: 4px; padding: 1px 6px;
         font-size: 12px; font-weight: 700; color: #fff; margin-right: 8px; }
.pass { background: #15803d; } .fail { background: #b91c1c; }
code { background: var(--soft); border: 1px solid var(--line); border-radius: 3px; padding: 0 4px; }
.charts { display: flex; flex-wrap: wrap; gap: 24px; }
figure { margin: 0; } figcaption { color: var(--muted); font-size: 12px; margin-top: 4px; max-width: 560px; }
svg text { font: 11px system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; fill: #374151; }
.toolbar { display: flex; gap: 12px; align-items: center; margin: 8px 0; }
#search { width: 360px; max-width: 100%; padding: 6px 9px; border: 1px solid #cbd5e1; border-radius: 5px; font: inherit; }
#count { color: var(--muted); }
#examples { width: 100%; font-size: 13px; }
#examples thead th { position: sticky; top: 0; cursor: pointer; user-select: none; z-index: 1; }
#examples thead th[aria-sort="ascending"]::after { content: " ▲"; font-size: 10px; }
#examples thead th[aria-sort="descending"]::after { content: " ▼"; font-size: 10px; }
.scroll { overflow: auto; max-height: 85vh; border: 1px solid var(--line); }
#examples td.text { white-space: pre-wrap; word-break: break-word; min-width: 12em; max-width: 24em; }
#examples .clip { max-height: 13em; overflow-y: auto; }
#examples tr:hover td { background: #f1f5f9; }
details summary { cursor: pointer; color: var(--muted); font-size: 12px; }
.reasons { font-size: 12px; color: #374151; margin: 4px 0 0; padding-left: 16px; }
.small { font-size: 12px; color: var(--muted); }
.defs dt { font-weight: 600; } .defs dd { margin: 0 0 6px 16px; color: #374151; }
"""

JS = r"""
(function () {
  "use strict";
  var table = document.getElementById("examples");
  if (!table) { return; }
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var texts = rows.map(function (r) { return r.textContent.toLowerCase(); });
  var search = document.getElementById("search");
  var count = document.getElementById("count");
  function update() {
    var q = search.value.trim().toLowerCase();
    var shown = 0;
    rows.forEach(function (r, k) {
      var hit = !q || texts[k].indexOf(q) !== -1;
      r.hidden = !hit;
      if (hit) { shown += 1; }
    });
    count.textContent = shown + " of " + rows.length + " examples";
  }
  function key(row, i, numeric) {
    var cell = row.cells[i];
    var v = cell.getAttribute("data-v");
    if (numeric) { return v === null || v === "" ? NaN : parseFloat(v); }
    return (v === null ? cell.textContent : v).toLowerCase();
  }
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, i) {
    th.addEventListener("click", function () {
      var numeric = th.getAttribute("data-type") === "num";
      var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", dir);
      var sign = dir === "ascending" ? 1 : -1;
      var order = rows.map(function (r, k) { return [key(r, i, numeric), k, r]; });
      order.sort(function (a, b) {
        var x = a[0], y = b[0];
        if (numeric) {
          var xn = isNaN(x), yn = isNaN(y);
          if (xn || yn) { return xn === yn ? a[1] - b[1] : (xn ? 1 : -1); }
        }
        if (x < y) { return -sign; }
        if (x > y) { return sign; }
        return a[1] - b[1];
      });
      rows = order.map(function (o) { return o[2]; });
      texts = rows.map(function (r) { return r.textContent.toLowerCase(); });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  search.addEventListener("input", update);
  update();
})();
"""


def page(title: str, body: str, script: str, css: str = CSS) -> str:
    """A whole HTML page in one file: nothing outside it loads (``CSP``), so it opens offline."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{css}</style>
</head>
<body>
<main>
{body}
</main>
<script>{script}</script>
</body>
</html>
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fnum(x: float | None, signed: bool = False, digits: int = 3) -> str:
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "–"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _ci(est: Mapping[str, Any] | None, signed: bool = False) -> str:
    if not est or est.get("ci_low") is None or est.get("ci_high") is None:
        return ""
    return f' <span class="ci">[{fnum(est["ci_low"], signed)}, {fnum(est["ci_high"], signed)}]</span>'


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


# --- charts -----------------------------------------------------------------------------------

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


# --- sections ------------------------------------------------------------------------------------

def _headline(doc: Mapping[str, Any]) -> str:
    has_base = "base" in doc["models"]
    head = ("<tr><th>metric</th><th class=num>base</th><th class=num>tuned</th><th class=num>Δ tuned − base</th>"
            "<th></th></tr>") if has_base else "<tr><th>metric</th><th class=num>tuned</th></tr>"
    body = []
    for name, m in doc["metrics"].items():
        title = esc(m.get("definition", ""))
        if has_base:
            word = verdict(m.get("delta"), m.get("higher_is_better"))
            cls = {"better": "better", "worse": "worse"}.get(word, "flat")
            body.append(f'<tr><td title="{title}">{esc(name)}</td>'
                        f'<td class=num>{fnum((m.get("base") or {}).get("value"))}{_ci(m.get("base"))}</td>'
                        f'<td class=num>{fnum(m["tuned"].get("value"))}{_ci(m["tuned"])}</td>'
                        f'<td class="num {cls}">{fnum((m.get("delta") or {}).get("value"), True)}{_ci(m.get("delta"), True)}</td>'
                        f'<td class="{cls}">{esc(word)}</td></tr>')
        else:
            body.append(f'<tr><td title="{title}">{esc(name)}</td>'
                        f'<td class=num>{fnum(m["tuned"].get("value"))}{_ci(m["tuned"])}</td></tr>')
    return f'<table id="headline"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _gates(doc: Mapping[str, Any]) -> str:
    if not doc["gates"]:
        return '<p class="small">No gates in the spec (add <code>gates:</code> to guard a release).</p>'
    items = []
    for g in doc["gates"]:
        badge = '<span class="badge pass">PASS</span>' if g["passed"] else '<span class="badge fail">FAIL</span>'
        why = g["message"].split(" failed: ", 1)[-1]
        detail = "" if g["passed"] else f'<div class="small worse">{esc(why)}</div>'
        values = ", ".join(f"{k} = {fnum(v)}" for k, v in g["values"].items())
        items.append(f'<li>{badge}<code>{esc(g["gate"])}</code> <span class="small">{esc(values)}</span>{detail}</li>')
    return f'<ul class="gates" id="gates">{"".join(items)}</ul>'


def _generation(doc: Mapping[str, Any]) -> str:
    gen = doc.get("generation") or {}
    sides = [s for s in ("base", "tuned") if isinstance(gen.get(s), Mapping)]
    if not sides:
        return ""
    rows = []
    for s in sides:
        g = gen[s]
        lat = g.get("latency_s") or {}
        rows.append(f"<tr><td>{s}</td><td class=num>{g['replies']}</td><td class=num>{g['reused']}</td>"
                    f"<td class=num>{fnum(g['seconds'], digits=1)}</td><td class=num>{g['prompt_tokens']:,}</td>"
                    f"<td class=num>{g['completion_tokens']:,}</td><td class=num>{fnum(g.get('tokens_per_s'), digits=1)}</td>"
                    f"<td class=num>{fnum(lat.get('p50'), digits=2)} / {fnum(lat.get('p95'), digits=2)}</td>"
                    f"<td class=num>{g['retries']}</td><td class=num>{g['finish'].get('length', 0)}</td>"
                    f"<td class=num>{g.get('errors', 0)}</td></tr>")
    # the endpoint without its scheme: the page holds no URL at all, not even as text
    where = ", ".join(f"{k}: {esc(re.sub(r'^[a-z][a-z0-9+.-]*://', '', str(v)))}" for k, v in gen.items()
                      if k in ("device", "threads", "endpoint", "concurrency"))
    return ("<table><thead><tr><th>model</th><th class=num>replies</th><th class=num>reused</th><th class=num>seconds</th>"
            "<th class=num>prompt tokens</th><th class=num>completion tokens</th><th class=num>tokens/s</th>"
            "<th class=num>latency p50 / p95 s</th><th class=num>retries</th><th class=num>cut at max tokens</th>"
            f"<th class=num>errors</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
            f'<p class="small">{where}. Reused replies come from an earlier run with the same model, prompts and '
            "decoding.</p>")


def _training(doc: Mapping[str, Any], loss: Sequence[Mapping[str, Any]]) -> str:
    chart = loss_chart(loss)
    t = doc.get("training") or {}
    facts = []
    for key in ("final_train_loss", "final_valid_loss", "min_valid_loss", "steps", "trained_tokens"):
        if isinstance(t.get(key), (int, float)):
            facts.append(f"{key.replace('_', ' ')}: {t[key]:.4g}" if isinstance(t[key], float) else
                         f"{key.replace('_', ' ')}: {t[key]:,}")
    for key in ("train_loss", "val_loss"):
        v = t.get(key)
        if isinstance(v, Mapping) and v.get("first") is not None and v.get("last") is not None:
            facts.append(f"{key.replace('_', ' ')}: {v['first']:.4g} → {v['last']:.4g}")
    text = f'<p class="small">{esc("; ".join(facts))}</p>' if facts else ""
    if not chart:
        return text + '<p class="small">The train artifact has no loss curve (loss.csv is missing or empty).</p>'
    return f"<figure>{chart}<figcaption>Loss per step from the train artifact's loss.csv.</figcaption></figure>{text}"


def _reply_cell(entry: Mapping[str, Any]) -> str:
    text = f'<div class="clip">{esc(entry.get("reply", ""))}</div>' if entry.get("reply") else \
        '<span class="small">(empty)</span>'
    extra = []
    if entry.get("finish") == "length":
        extra.append('<div class="small">cut at max_new_tokens</div>')
    if entry.get("finish") == "error":
        extra.append(f'<div class="small worse">{esc(entry.get("error", "error"))}</div>')
    judge = entry.get("judge")
    if judge:
        items = "".join(f"<li><b>{esc(k)}</b> {v['score']}/5: {esc(v.get('reason', ''))}</li>" for k, v in judge.items())
        extra.append(f'<details><summary>judge</summary><ul class="reasons">{items}</ul></details>')
    elif "judge" in entry:
        extra.append('<div class="small">no judge verdict</div>')
    return f'<td class="text">{text}{"".join(extra)}</td>'


def _prompt_cell(row: Mapping[str, Any]) -> str:
    prompt = row["prompt"]
    last_user = next((m for m in reversed(prompt) if m.get("role") == "user"), prompt[-1] if prompt else {})
    from tunepipe.evaluation.examples import content_text

    head = esc(content_text(last_user.get("content")))
    if len(prompt) > 1:
        turns = "".join(f"<div><b>{esc(m.get('role'))}</b>: {esc(content_text(m.get('content')))}</div>" for m in prompt)
        head += f"<details><summary>whole conversation ({len(prompt)} messages)</summary>{turns}</details>"
    return f'<td class="text">{head}</td>'


def _score_cell(r: Mapping[str, Any], m: str, has_base: bool) -> str:
    if has_base:
        d = r["delta"].get(m)
        b, t = r["base"]["scores"].get(m), r["tuned"]["scores"].get(m)
        cls = "flat" if not d or m == "length_ratio" else ("better" if d > 0 else "worse")
        return (f'<td class="num {cls}" data-v="{"" if d is None else f"{d:.6g}"}" '
                f'title="base {fnum(b)} → tuned {fnum(t)}">{fnum(d, True)}'
                f'<div class="ci">{fnum(b, digits=2)}→{fnum(t, digits=2)}</div></td>')
    t = r["tuned"]["scores"].get(m)
    return f'<td class=num data-v="{"" if t is None else f"{t:.6g}"}">{fnum(t)}</td>'


def _examples(doc: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    has_base = "base" in doc["models"]
    metrics = list(doc["metrics"])
    rank = doc["rank_by"]
    others = [m for m in metrics if m != rank]

    def head(m: str) -> str:
        return (f'<th data-type="num" class=num title="tuned − base; below: base→tuned">Δ {esc(m)}</th>' if has_base
                else f'<th data-type="num" class=num>{esc(m)}</th>')

    heads = ['<th data-type="num" class=num>line</th>', head(rank), "<th>prompt</th>", "<th>reference</th>"]
    heads += ["<th>base</th>", "<th>tuned</th>"] if has_base else ["<th>tuned</th>"]
    heads += [head(m) for m in others]
    body = []
    for r in rows:
        cells = [f'<td class=num data-v="{r["line"]}">{r["line"]}</td>', _score_cell(r, rank, has_base),
                 _prompt_cell(r), f'<td class="text"><div class="clip">{esc(r["reference"])}</div></td>']
        if has_base:
            cells.append(_reply_cell(r["base"]))
        cells.append(_reply_cell(r["tuned"]))
        cells += [_score_cell(r, m, has_base) for m in others]
        body.append(f'<tr data-index="{r["index"]}">{"".join(cells)}</tr>')
    note = ""
    if len(rows) < doc["examples"]:
        note = (f'<p class="small">The {len(rows)} worst of {doc["examples"]} examples by {esc(rank)} are shown '
                "(html_examples); predictions.jsonl has them all.</p>")
    order = f"worst regressions first (Δ {esc(rank)}, tuned − base)" if has_base else f"lowest {esc(rank)} first"
    return (f'<div class="toolbar"><input id="search" type="search" placeholder="Search prompts, references, replies…" '
            f'aria-label="search examples"><span id="count"></span></div>'
            f'<p class="small">Sorted {order}; click a column header to sort by it.</p>{note}'
            f'<div class="scroll"><table id="examples"><thead><tr>{"".join(heads)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _definitions(doc: Mapping[str, Any]) -> str:
    items = "".join(f"<dt>{esc(n)}</dt><dd>{esc(m.get('definition', ''))}</dd>" for n, m in doc["metrics"].items())
    return f'<details><summary>How each metric is computed</summary><dl class="defs">{items}</dl></details>'


def render_html(doc: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], loss: Sequence[Mapping[str, Any]]) -> str:
    models = doc["models"]
    has_base = "base" in models
    title = f"{models['tuned']} vs {models['base']}" if has_base else models["tuned"]
    b = doc["bootstrap"]
    sub = (f"{doc['examples']} examples of {doc['examples_source']} · decoding: {decoding_text(doc['decoding'])} · "
           f"{b['confidence']:.0%} percentile-bootstrap intervals ({b['samples']} resamples"
           f"{', paired for Δ' if has_base else ''})")
    gates_state = ""
    if doc["gates"]:
        ok = doc["gates_passed"]
        gates_state = (f'<span class="badge {"pass" if ok else "fail"}">{"GATES PASS" if ok else "GATES FAIL"}</span>')
    charts = [c for c in (metrics_chart(doc), delta_chart(doc)) if c]
    chart_html = "".join(f"<figure>{c}</figure>" for c in charts)
    judge = doc.get("judge")
    judge_html = ""
    if judge:
        unscored = ", ".join(f"{k}: {v}" for k, v in judge["unscored"].items())
        rubric = "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in judge["rubric"].items())
        judge_html = (f"<h2>Judge</h2><p>{esc(judge['model'])} scored each reply 1-5 per criterion (shown as 0-1). "
                      f"Replies without a usable verdict: {esc(unscored)}.</p><ul>{rubric}</ul>")
    return page(f"Evaluation: {title}", f"""<h1>Evaluation: {esc(title)} {gates_state}</h1>
<p class="sub">{esc(sub)}</p>
<h2>Headline</h2>
{_headline(doc)}
{_definitions(doc)}
<h2>Gates</h2>
{_gates(doc)}
<h2>Metrics</h2>
<div class="charts">{chart_html}</div>
<p class="small">{CHART_NOTE if has_base else CHART_NOTE.split(";")[0]}.</p>
{judge_html}
<h2>Training</h2>
{_training(doc, loss)}
<h2>Generation</h2>
{_generation(doc)}
<h2>Examples</h2>
{_examples(doc, rows)}""", JS)
