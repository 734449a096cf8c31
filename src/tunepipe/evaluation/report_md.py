"""report.md: the headline table, the gates and the worst regressions, for terminals and pull requests."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

TOP = 10  # regressions listed
CELL = 90  # characters of a text cell


def num(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def interval(est: Mapping[str, Any] | None, signed: bool = False) -> str:
    if not est:
        return "–"
    lo, hi = est.get("ci_low"), est.get("ci_high")
    ci = f" [{num(lo, signed)}, {num(hi, signed)}]" if lo is not None and hi is not None else ""
    return num(est.get("value"), signed) + ci


def _cell(text: Any, limit: int = CELL) -> str:
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("|", "\\|") or "(empty)"


def verdict(delta: Mapping[str, Any] | None, higher_is_better: bool | None) -> str:
    """'better' / 'worse' when the paired interval excludes 0, else 'no clear change'."""
    if not delta or delta.get("ci_low") is None or delta.get("ci_high") is None or higher_is_better is None:
        return ""
    lo, hi = delta["ci_low"], delta["ci_high"]
    if lo > 0:
        return "better" if higher_is_better else "worse"
    if hi < 0:
        return "worse" if higher_is_better else "better"
    return "no clear change"


def decoding_text(d: Mapping[str, Any]) -> str:
    how = "greedy" if d.get("strategy") == "greedy" else f"sampling (temperature {d['temperature']}, top_p {d['top_p']})"
    return f"{how}, at most {d['max_new_tokens']} new tokens, seed {d['seed']}"


def render_md(doc: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    models = doc["models"]
    has_base = "base" in models
    title = f"{models['tuned']} vs {models['base']}" if has_base else models["tuned"]
    b = doc["bootstrap"]
    out = [f"# Evaluation: {title}", ""]
    out.append(f"{doc['examples']} examples of `{doc['examples_source']}`; decoding: {decoding_text(doc['decoding'])}. "
               f"Intervals: {b['confidence']:.0%} percentile bootstrap over examples ({b['samples']} resamples, seed "
               f"{b['seed']}{', paired for the difference' if has_base else ''}).")
    out.append("")
    if has_base:
        out += ["| metric | base | tuned | Δ tuned − base | |", "|---|---|---|---|---|"]
    else:
        out += ["| metric | tuned |", "|---|---|"]
    for name, m in doc["metrics"].items():
        if has_base:
            out.append(f"| {name} | {interval(m.get('base'))} | {interval(m['tuned'])} | "
                       f"{interval(m.get('delta'), signed=True)} | {verdict(m.get('delta'), m.get('higher_is_better'))} |")
        else:
            out.append(f"| {name} | {interval(m['tuned'])} |")
    out.append("")
    if doc["gates"]:
        out.append("## Gates")
        out.append("")
        for g in doc["gates"]:
            out.append(f"- {'PASS' if g['passed'] else 'FAIL'} `{g['gate']}`" + ("" if g["passed"] else f": {g['message']}"))
        out.append("")
    rank = doc["rank_by"]
    reg = doc.get("regressions")
    if has_base and rows:
        out.append(f"## Worst regressions by {rank}")
        out.append("")
        if reg:
            out.append(f"{reg['worse']} examples worse, {reg['better']} better, {reg['same']} unchanged on {rank}.")
            out.append("")
        out += ["| line | prompt | reference | base | tuned | Δ |", "|---|---|---|---|---|---|"]
        for r in rows[:TOP]:
            last_user = next((m.get("content") for m in reversed(r["prompt"]) if m.get("role") == "user"), "")
            out.append(f"| {r['line']} | {_cell(last_user, 60)} | {_cell(r['reference'], 60)} | {_cell(r['base']['reply'])} "
                       f"| {_cell(r['tuned']['reply'])} | {num(r['delta'].get(rank), signed=True)} |")
        out.append("")
    gen = doc.get("generation") or {}
    sides = [s for s in ("base", "tuned") if isinstance(gen.get(s), Mapping)]
    if sides:
        out.append("## Generation")
        out.append("")
        out += ["| model | replies | reused | seconds | completion tokens | tokens/s | latency p50 / p95 s | retries | cut at max tokens |",
                "|---|---|---|---|---|---|---|---|---|"]
        for s in sides:
            g = gen[s]
            lat = g.get("latency_s") or {}
            out.append(f"| {s} | {g['replies']} | {g['reused']} | {g['seconds']} | {g['completion_tokens']} | "
                       f"{g['tokens_per_s'] if g.get('tokens_per_s') is not None else '–'} | "
                       f"{lat.get('p50')} / {lat.get('p95')} | {g['retries']} | {g['finish'].get('length', 0)} |")
        out.append("")
    judge = doc.get("judge")
    if judge:
        out.append(f"Judge: {judge['model']}; replies without a usable verdict: "
                   + ", ".join(f"{k} {v}" for k, v in judge["unscored"].items()) + ".")
        out.append("")
    out.append("Files: `metrics.json` (numbers and definitions), `predictions.jsonl` (every example, worst "
               "regressions first), `report.html` (charts and a searchable table).")
    return "\n".join(out) + "\n"
