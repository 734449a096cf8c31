"""The reports: report.html self-contained and escaped, opened in real headless Chromium (table,
charts, search, sorting, no console errors, no network, a screenshot); report.md."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from eval_helpers import (
    SYSTEM,
    artifact,
    make_ctx,
    openai_artifact,
    params,
    png_pixels,
    write_jsonl,
)

BASE = "gpt-4o-mini-2024-07-18"
TUNED = "ft:gpt-4o-mini-2024-07-18:aimock:marv:abc123"
JUDGE = "gpt-4o-mini-judge"
N = 30
NASTY = "<script>alert('owned')</script></td></table><img src=x onerror=alert(1)> & \"quotes\""


def question(i: int) -> str:
    return f"[q{i:02d}] What is {i} + {i}?"


def answer(i: int) -> str:
    return f"{2 * i}. Did you really need me for that?"


def fixtures() -> list[dict[str, Any]]:
    out = []
    for i in range(N):
        tuned = answer(i) if i % 5 else f"{2 * i}, obviously."
        base = NASTY if i == 7 else (f"The sum of {i} and {i} is {2 * i}." if i % 3 else "I do not know.")
        out.append({"match": {"model": TUNED, "userMessage": f"[q{i:02d}]"}, "response": {"content": tuned}})
        out.append({"match": {"model": BASE, "userMessage": f"[q{i:02d}]"}, "response": {"content": base}})
        for reply in (tuned, base):
            out.append({"match": {"model": JUDGE, "userMessage": f"<reply_to_grade>\n{reply}\n</reply_to_grade>"},
                        "response": {"content": json.dumps({"sarcastic": {"reason": f"judged: {reply[:20]}",
                                                                          "score": 5 if reply == tuned else 2}})}})
    return out


def make_report(server: Any, root: Path, **over: Any) -> tuple[Path, dict[str, Any]]:
    from tunepipe.evaluation.run import evaluate

    server.reset()
    server.set_fixtures(fixtures())
    data = write_jsonl(root / "validation.jsonl",
                       [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question(i)},
                                      {"role": "assistant", "content": answer(i)}]} for i in range(N)])
    model = openai_artifact(root / "model", BASE, TUNED)
    if over.pop("no_loss", False):
        (model / "loss.csv").unlink()
    ctx = make_ctx(root / "run")
    p = params(**{"metrics": ["exact_match", "token_f1", "rouge_l", "bleu", "length_ratio"],
                  "openai": {"base_url": server.base_url}, "judge": {"model": JUDGE, "rubric": {"sarcastic": "Is it sarcastic?"}},
                  "gates": ["tuned.rouge_l >= 0.2", "delta.rouge_l.ci_low > 0"], "bootstrap": {"samples": 300}, **over})
    evaluate(ctx, {"model": artifact(model, "train.model"), "examples": artifact(data, "split.validation")}, p)
    out = ctx.output("report")
    return out, json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def report(aimock_server: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    import os

    os.environ.setdefault("OPENAI_API_KEY", "sk-test-evaluate")
    return make_report(aimock_server, tmp_path_factory.mktemp("report"))


def test_the_html_is_self_contained(report: tuple[Path, dict[str, Any]]) -> None:
    html = (report[0] / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.I), "no URL of any kind"
    assert not re.search(r"<[a-z][^>]*\s(src|href|action|srcset|poster)\s*=", html, re.I), "nothing loaded or linked"
    assert "<link" not in html and "@import" not in html and "url(" not in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert html.count("<svg") == 3 and html.count("<script>") == 1


def test_replies_are_escaped(report: tuple[Path, dict[str, Any]]) -> None:
    html = (report[0] / "report.html").read_text()
    assert "<script>alert" not in html and "onerror=alert" not in html.replace("&lt;img src=x onerror=alert", "")
    assert "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt;&lt;/td&gt;&lt;/table&gt;&lt;img src=x" in html
    assert "<img" not in html


def test_the_examples_are_sorted_worst_regression_first(report: tuple[Path, dict[str, Any]]) -> None:
    out, doc = report
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    deltas = [r["delta"]["rouge_l"] for r in rows]
    assert len(rows) == N and deltas == sorted(deltas)
    html = (out / "report.html").read_text()
    order = [int(x) for x in re.findall(r'<tr data-index="(\d+)"', html)]
    assert order == [r["index"] for r in rows]


def test_report_md(report: tuple[Path, dict[str, Any]]) -> None:
    out, doc = report
    md = (out / "report.md").read_text()
    assert md.startswith(f"# Evaluation: {TUNED} vs {BASE}\n")
    assert "| metric | base | tuned | Δ tuned − base | |" in md
    for name in doc["metrics"]:
        assert re.search(rf"^\| {name} \| [0-9.]+ \[[0-9.]+, [0-9.]+\] \| ", md, re.M), name
    assert "- PASS `tuned.rouge_l >= 0.2`" in md
    assert "## Worst regressions by rouge_l" in md and md.count("\n| ") >= 10
    assert "Judge: gpt-4o-mini-judge" in md


def test_at_most_html_examples_rows_are_shown(aimock_server: Any, tmp_path: Path) -> None:
    out, doc = make_report(aimock_server, tmp_path, html_examples=5, judge=None, gates=[])
    html = (out / "report.html").read_text()
    assert html.count('<tr data-index="') == 5
    assert f"The 5 worst of {N} examples by rouge_l are shown" in html
    assert len((out / "predictions.jsonl").read_text().splitlines()) == N


def non_blank(path: Path, rows: int = 320) -> tuple[float, int]:
    """(share of the pixels that are not the background colour, distinct colours) in the first rows."""
    width, height, channels, data = png_pixels(path, max_rows=rows)
    assert (width, height) == (1280, 1000)
    pixels = [row[i:i + 3] for row in data for i in range(0, len(row), channels)]
    background = max(set(pixels[:2000]), key=pixels[:2000].count)
    share = sum(p != background for p in pixels) / len(pixels)
    return share, len(set(pixels))


def test_the_report_renders_in_headless_chromium(browser: Any, report: tuple[Path, dict[str, Any]],
                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    out, doc = report
    page = out / "report.html"
    browser.open(page.as_uri())
    js = browser.evaluate
    # the table and the charts are there and take up room
    assert js("document.querySelectorAll('#headline tbody tr').length") == len(doc["metrics"])
    assert js("document.querySelectorAll('#examples tbody tr').length") == N
    assert js("document.getElementById('count').textContent") == f"{N} of {N} examples"
    bounded = [m for m in doc["metrics"] if m != "length_ratio"]
    assert js("document.querySelectorAll('#metrics-chart rect.bar').length") == 2 * len(bounded)
    assert js("document.querySelectorAll('#delta-chart circle.point').length") == len(bounded)
    assert js("document.querySelectorAll('#loss-chart polyline').length") == 2
    for element in ("#headline", "#examples", "#metrics-chart", "#delta-chart", "#loss-chart", "#gates"):
        box = js(f"(() => {{ const r = document.querySelector('{element}').getBoundingClientRect(); "
                 "return [r.width, r.height]; })()")
        assert box[0] > 100 and box[1] > 30, (element, box)
    # the nasty reply is text, not markup
    assert js("document.querySelectorAll('#examples img, #examples script').length") == 0
    assert js("[...document.querySelectorAll('#examples td')].some(td => td.textContent.includes(\"<script>alert('owned')\"))")
    # search
    js("(() => { const s = document.getElementById('search'); s.value = '[q07]'; "
       "s.dispatchEvent(new Event('input')); })()")
    assert js("[...document.querySelectorAll('#examples tbody tr')].filter(r => !r.hidden).length") == 1
    assert js("document.getElementById('count').textContent") == f"1 of {N} examples"
    js("(() => { const s = document.getElementById('search'); s.value = ''; s.dispatchEvent(new Event('input')); })()")
    assert js("[...document.querySelectorAll('#examples tbody tr')].filter(r => !r.hidden).length") == N
    # sorting: by line, up then down; then the rank metric's difference, ascending = worst first again
    lines = "[...document.querySelectorAll('#examples tbody tr')].map(r => Number(r.cells[0].dataset.v))"
    js("document.querySelector('#examples thead th').click()")
    assert js(lines) == list(range(1, N + 1))
    assert js("document.querySelector('#examples thead th').getAttribute('aria-sort')") == "ascending"
    js("document.querySelector('#examples thead th').click()")
    assert js(lines) == list(range(N, 0, -1))
    js("document.querySelectorAll('#examples thead th')[1].click()")
    firsts = js("[...document.querySelectorAll('#examples tbody tr')].map(r => Number(r.cells[1].dataset.v))")
    assert firsts == sorted(firsts)
    # nothing went wrong, nothing was fetched
    assert browser.problems() == []
    assert browser.requests() == [page.as_uri()]
    assert not [e for e in browser.events if e["method"] == "Page.javascriptDialogOpening"]
    # a screenshot of the top of the page, which is not blank
    browser.open(page.as_uri())
    shot = browser.screenshot(tmp_path_factory.mktemp("screenshots") / "report.png")
    print(f"\nscreenshot of report.html: {shot}")
    share, colours = non_blank(shot)
    assert share > 0.03 and colours > 20, (share, colours)


def test_a_tuned_only_report_without_a_loss_curve_renders_too(browser: Any, aimock_server: Any, tmp_path: Path) -> None:
    out, doc = make_report(aimock_server, tmp_path, compare_base=False, judge=None, no_loss=True,
                           gates=["tuned.rouge_l >= 0.2"])
    page = out / "report.html"
    browser.open(page.as_uri())
    assert browser.evaluate("document.querySelectorAll('#examples tbody tr').length") == N
    assert browser.evaluate("document.querySelectorAll('#metrics-chart rect.bar').length") == 4
    assert browser.evaluate("document.getElementById('delta-chart')") is None
    assert browser.evaluate("document.body.textContent.includes('has no loss curve')")
    assert browser.problems() == [] and browser.requests() == [page.as_uri()]
