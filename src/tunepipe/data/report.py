"""Data statistics and the validation report (JSON and Markdown).

Percentiles are exact. A :class:`Distribution` keeps a histogram (value -> count) instead of the
values: memory grows with the number of *distinct* values (for token counts at most the longest
example's length, for messages per example a handful), never with the number of examples, and every
order statistic is still exact. Percentiles use linear interpolation between the closest ranks
(numpy's default, so p50 is the median); the cookbook's "p5"/"p95" are really the 10th/90th.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from tunepipe.data.chat import CATEGORIES, ERROR, WARNING

# The OpenAI cookbook's default-epochs rule (Chat_finetuning_data_prep.ipynb).
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25

PERCENTILES = (5, 50, 95)


class Distribution:
    """Exact summary statistics of non-negative integers, in memory bounded by distinct values."""

    def __init__(self, values: Iterable[int] = ()) -> None:
        self.counts: Counter[int] = Counter()
        self.n = 0
        self.total = 0
        for v in values:
            self.add(v)

    def add(self, value: int) -> None:
        self.counts[value] += 1
        self.n += 1
        self.total += value

    def add_many(self, values: list[int]) -> None:
        """``add`` each value (a whole batch at C speed)."""
        self.counts.update(values)
        self.n += len(values)
        self.total += sum(values)

    def _at_ranks(self, ranks: list[int]) -> dict[int, int]:
        """The values at the given 0-based ranks of the sorted data."""
        want = sorted(set(ranks))
        out: dict[int, int] = {}
        seen, k = 0, 0
        for value in sorted(self.counts):
            seen += self.counts[value]
            while k < len(want) and want[k] < seen:
                out[want[k]] = value
                k += 1
            if k == len(want):
                break
        return out

    def quantiles(self, qs: Iterable[float]) -> list[float]:
        """Quantiles (0..1) with linear interpolation between closest ranks (numpy's 'linear')."""
        qs = list(qs)
        if not self.n:
            return [math.nan for _ in qs]
        pos = [(self.n - 1) * q for q in qs]
        at = self._at_ranks([math.floor(h) for h in pos] + [math.ceil(h) for h in pos])
        return [at[math.floor(h)] + (h - math.floor(h)) * (at[math.ceil(h)] - at[math.floor(h)]) for h in pos]

    def summary(self) -> dict[str, Any]:
        """count, min, max, mean and p5/p50/p95 (None for an empty distribution)."""
        if not self.n:
            return {"count": 0, "min": None, "max": None, "mean": None,
                    **{f"p{p}": None for p in PERCENTILES}}
        ps = self.quantiles(p / 100 for p in PERCENTILES)
        return {"count": self.n, "min": min(self.counts), "max": max(self.counts),
                "mean": round(self.total / self.n, 2), **{f"p{p}": _num(v) for p, v in zip(PERCENTILES, ps)}}


def _num(v: float) -> int | float:
    return int(v) if float(v).is_integer() else round(v, 2)


def default_epochs(n_examples: int) -> int:
    """The cookbook's default epochs for ``n_examples`` training examples."""
    if n_examples <= 0:
        return TARGET_EPOCHS
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


def estimate_cost(billable_tokens: int, price_per_million: float | None) -> float | None:
    """USD for ``billable_tokens`` at a price per 1M tokens, to 1/100 of a cent (None: no price)."""
    if price_per_million is None:
        return None
    return round(billable_tokens * price_per_million / 1_000_000, 4)


def format_problem(p: Mapping[str, Any]) -> str:
    """``record 12 (data/marv.jsonl:5): error missing_content: messages[1].content is empty``."""
    where = f"record {p['record']}" if p.get("record") is not None else "data set"
    if p.get("file"):
        where = f"record {p['file']}:{p['record']}"
    if p.get("source"):
        where += f" ({p['source']})"
    return f"{where}: {p['severity']} {p['category']}: {p['message']}"


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) >= 1 or v == 0 else f"{v:.4f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("`", "\\`").replace("|", "\\|").replace("\n", " ")


def sev_cat(p: Mapping[str, Any]) -> str:
    return f"{p['severity']} `{p['category']}`"


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as readable Markdown."""
    h = report["headline"]
    lines = [f"# Data report: {report['target']}", ""]
    who = report.get("model") or report.get("tokenizer")
    lines += [f"Target `{report['target']}`, tokens counted with {report['token_counter']}"
              + (f" for `{who}`" if who else "") + ".", ""]
    lines += ["| | |", "|---|---|"]
    for label, key in (("examples written", "examples"), ("invalid examples", "invalid"),
                       ("warnings", "warnings"), ("records read", "records"),
                       ("tokens per example (p50)", "tokens_p50"), ("billable tokens", "billable_tokens"),
                       ("epochs", "epochs"), ("estimated cost (USD)", "est_cost_usd")):
        lines.append(f"| {label} | {_cell(h.get(key))} |")
    lines.append("")

    for title, sev in (("Errors", ERROR), ("Warnings", WARNING)):
        counts = report["errors" if sev == ERROR else "warnings"]
        lines += [f"## {title}", ""]
        if not counts:
            lines += ["None.", ""]
            continue
        lines += ["| category | count | meaning |", "|---|---:|---|"]
        for cat, n in counts.items():
            lines.append(f"| `{cat}` | {n:,} | {_md_escape(CATEGORIES[cat][1])} |")
        lines.append("")

    lines += ["## Statistics (valid examples)", "",
              "| per example | min | p5 | p50 | p95 | max | mean |", "|---|---:|---:|---:|---:|---:|---:|"]
    for label, key in (("messages", "messages_per_example"), ("tokens", "tokens_per_example"),
                       ("assistant tokens", "assistant_tokens_per_example")):
        s = report["stats"][key]
        lines.append(f"| {label} | " + " | ".join(_cell(s[k]) for k in ("min", "p5", "p50", "p95", "max", "mean"))
                     + " |")
    lines += ["", f"Percentiles: {report['stats']['method']}.", ""]

    lim = report["token_limit"]
    lines += ["## Token limit, epochs and cost", ""]
    if lim["limit"] is None:
        lines.append(f"- Training context: unknown for `{lim['model']}` ({lim['note']}).")
    else:
        lines.append(f"- Training context of `{lim['model']}`: {lim['limit']:,} tokens ({lim['source']}); "
                     f"{lim['over_limit']:,} example(s) over it will be truncated.")
    ep = report["epochs"]
    lines.append(f"- Epochs: {ep['value']} ({ep['source']}).")
    lines.append(f"- Billable tokens: {report['billable_tokens']:,} "
                 "(Σ min(limit, tokens per example) × epochs).")
    cost = report["cost"]
    if cost["usd"] is None:
        lines.append(f"- Estimated cost: unknown ({cost['note']}).")
    else:
        usd = f"{cost['usd']:,.2f}" if cost["usd"] >= 1 else f"{cost['usd']:.4f}"
        lines.append(f"- Estimated cost: ${usd} at ${cost['price_per_1m_tokens']:,.2f} per 1M "
                     f"training tokens ({cost['price_source']}).")
    lines.append(f"- {report['note']}")
    lines.append("")

    probs = report["problems"]
    if probs.get("data_set"):
        lines += ["## Data set", ""]
        lines += [f"- {sev_cat(p)}: {_md_escape(p['message'])}" for p in probs["data_set"]]
        lines.append("")
    lines += ["## Problems", ""]
    if not probs["total"]:
        lines += ["None.", ""]
    else:
        shown = probs["first"]
        lines.append(f"{probs['total']:,} problem(s); the first {len(shown)} below, every one in "
                     f"`{probs['file']}`.")
        lines.append("")
        lines += [f"- {_md_escape(format_problem(p))}" for p in shown]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(folder: Any, report: Mapping[str, Any]) -> None:
    """report.json and report.md into ``folder``; both are rendered first, so an error in either
    leaves neither file behind (never a report.json without its report.md)."""
    texts = {"report.json": json.dumps(report, indent=2, ensure_ascii=False) + "\n",
             "report.md": render_markdown(report)}
    for name, text in texts.items():
        (folder / name).write_text(text, encoding="utf-8")
