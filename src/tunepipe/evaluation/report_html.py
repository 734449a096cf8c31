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

Every text from data (prompts, replies, judge reasons, model names) is HTML-escaped. The page shell
is :mod:`tunepipe.evaluation.html_page`'s, the charts :mod:`tunepipe.evaluation.charts`'.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from tunepipe.evaluation.charts import delta_chart, loss_chart, metrics_chart
from tunepipe.evaluation.html_page import esc, fnum, page
from tunepipe.evaluation.report_md import decoding_text, verdict

CHART_NOTE = ("Bars: the aggregate of each metric with its interval; right: the paired difference tuned − base, "
              "green where its interval lies above zero, red where below")

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


def _ci(est: Mapping[str, Any] | None, signed: bool = False) -> str:
    if not est or est.get("ci_low") is None or est.get("ci_high") is None:
        return ""
    return f' <span class="ci">[{fnum(est["ci_low"], signed)}, {fnum(est["ci_high"], signed)}]</span>'


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
