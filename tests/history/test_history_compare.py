"""``pipeline compare``: one row per branch of a matrix sweep (a failed branch included), sorted by a
metric, the leader marked best only when its paired difference from the runner-up excludes zero;
text, JSON, the self-contained page in headless Chromium, and the user errors. On the tp_sweep test
plugins: milliseconds per run, no model."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from history_helpers import records, tree, write_record

TRAIN, EVAL = "tp_sweep:SweepTrain", "tp_sweep:SweepEval"
FAST = [0.5, 0.6, 0.7, 0.8, 0.6, 0.5, 0.7, 0.8]  # the 0.0001 branch's per-example scores: mean 0.65
SLOW = [0.2, 0.3, 0.4, 0.5, 0.3, 0.2, 0.4, 0.5]  # 0.3 lower on every example
CLOSE = [0.6, 0.5, 0.8, 0.7, 0.5, 0.6, 0.8, 0.6]  # mean 0.6375, the examples shuffled: within noise

SWEEP = f"""
stages:
  train:
    uses: {TRAIN}
    matrix: {{learning_rate: [0.0001, 0.0005, 0.002]}}
    with:
      learning_rate: "${{matrix.learning_rate}}"
      fail_at: 0.002
      scores: {{"0.0001": {FAST}, "0.0005": {SLOW}}}
  evaluate:
    uses: {EVAL}
    inputs: {{model: train.model}}
"""
B1, B5, B20 = "train@learning_rate=0.0001", "train@learning_rate=0.0005", "train@learning_rate=0.002"


@pytest.fixture
def swept(project: Any) -> Any:
    """SWEEP run once with --keep-going: two branches trained and evaluated, 0.002 failed."""
    project.spec(SWEEP)
    assert project.run("run", "p.yaml", "-k").exit_code == 1
    project.calls()
    return project


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of the text table (header first), split on runs of two or more spaces."""
    block = stdout.split("\n\n")[1]
    return [re.split(r" {2,}", line.strip()) for line in block.splitlines()]


def compare_json(project: Any, *args: str) -> dict[str, Any]:
    return json.loads(project.ok("compare", "p.yaml", *args, "--json").stdout)


def test_one_row_per_branch_best_marked_and_the_failed_branch_shown(swept: Any) -> None:
    out = swept.ok("compare", "p.yaml").stdout
    assert out.startswith("sweep 'train' of p.yaml: 3 branches, sorted by rouge_l (evaluate, tuned model, 95% "
                          "intervals; highest first)\n")
    head, *rows = table_rows(out)
    assert head == ["learning_rate", "status", "rouge_l", "length_ratio", "bleu", "train_loss", "val_loss",
                    "val_loss_best", "run"]
    assert [r[:3] for r in rows] == [["best", "0.0001", "ok"], ["0.0005", "ok", "0.350 [0.275, 0.425]"],
                                     ["0.002", "failed (train)", "-"]]
    assert rows[0][3] == "0.650 [0.575, 0.725]" and rows[0][6:9] == ["0.909", "1.009", "1.009"]
    assert (f"best: {B1}: rouge_l +0.300 [+0.300, +0.300] above the runner-up {B5}, over the same 8 examples "
            "(paired bootstrap, 95%)") in out
    assert (f"failed: {B20}: RuntimeError: loss diverged at learning rate 0.002 (`pipeline logs p.yaml {B20}`)"
            in out)
    doc = compare_json(swept)
    assert [r["branch"] for r in doc["rows"]] == [B1, B5, B20]
    failed = doc["rows"][2]
    assert failed["status"] == "failed" and failed["metrics"] == {} and failed["model"] is None
    assert failed["stages"] == {B20: "failed", "evaluate@learning_rate=0.002": "skipped"}
    assert failed["problem"] == {"stage": B20, "status": "failed", "error": "RuntimeError: loss diverged at "
                                                                             "learning rate 0.002"}
    best = doc["rows"][0]
    assert best["values"] == {"learning_rate": "0.0001"} and best["mark"] == "best"
    assert best["evaluations"] == {"evaluate": "evaluate@learning_rate=0.0001"}
    assert best["summary"] == {"steps": 6, "train_loss": 0.9091}
    assert best["metrics"]["val_loss"] == {"value": 1.0091, "low": None, "high": None}
    assert best["metrics"]["rouge_l"]["value"] == pytest.approx(0.65)
    v = doc["verdict"]
    assert (v["kind"], v["leaders"], v["runner_up"], v["examples"]) == ("best", [B1], B5, 8)
    assert v["delta"] == pytest.approx(0.3) and v["low"] == pytest.approx(0.3)
    assert doc["sort"] == {"column": "rouge_l", "descending": True}


def test_leaders_within_noise_are_tied(swept: Any) -> None:
    swept.run("run", "p.yaml", "-k", "-S", f'train.scores={{"0.0001": {FAST}, "0.0005": {CLOSE}}}')
    out = swept.ok("compare", "p.yaml").stdout
    assert [r[0] for r in table_rows(out)[1:3]] == ["tied", "tied"]
    tied = next(line for line in out.splitlines() if line.startswith("tied: "))
    assert tied.startswith(f"tied: {B1}, {B5}: the leader {B1} minus the runner-up {B5} is rouge_l +0.013 [")
    assert tied.endswith("over the same 8 examples (paired bootstrap, 95%); the interval includes zero, so no "
                         "branch is shown to be best")
    v = compare_json(swept)["verdict"]
    assert v["kind"] == "tied" and v["low"] < 0 < v["high"]


def test_sorting_by_a_loss_or_a_corpus_metric_is_not_tested(swept: Any) -> None:
    out = swept.ok("compare", "p.yaml", "--sort", "val_loss").stdout
    assert "sorted by val_loss (training; lowest first)" in out
    assert [r[0] for r in table_rows(out)[1:]] == ["0.0005", "0.0001", "0.002"]  # unmarked
    assert (f"leader by val_loss: {B5}, not marked best: val_loss has no per-example scores to pair: the order is "
            "not tested against noise") in out
    out = swept.ok("compare", "p.yaml", "--sort", "evaluate.bleu").stdout
    assert "bleu is a corpus statistic (per-example scores do not add up to it): not paired" in out
    result = swept.run("compare", "p.yaml", "--sort", "rouge")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == ("error: --sort rouge: no such metric in this sweep (metrics: rouge_l, length_ratio, "
                             "bleu, train_loss, val_loss, val_loss_best)\n")


def test_the_latest_entry_of_each_branch_counts(swept: Any) -> None:
    """A newer run interrupted while 0.0005 trained: the branch shows it, without the losses of a model it
    did not finish; its evaluate branch's latest result (from the older run) and the other branches stay."""
    last = json.loads(records(swept)[-1].read_text())
    entry = {**last["stages"][B5], "status": "running"}
    write_record(records(swept)[-1].parent, "29990101T000000-1", {
        **last, "run_id": "29990101T000000-1", "started": last["started"] + 60, "status": "interrupted",
        "stages": {B5: entry}})
    doc = compare_json(swept)
    rows = {r["branch"]: r for r in doc["rows"]}
    assert rows[B5]["status"] == "interrupted" and rows[B5]["stages"][B5] == "interrupted"
    assert rows[B5]["model"] is None and "val_loss" not in rows[B5]["metrics"]
    assert rows[B5]["stages"]["evaluate@learning_rate=0.0005"] == "done" and "rouge_l" in rows[B5]["metrics"]
    assert rows[B5]["run"] != rows[B1]["run"] and rows[B1]["status"] == "ok" and rows[B1]["mark"] == "best"
    assert "interrupted (train)" in swept.ok("compare", "p.yaml").stdout


def test_a_sweep_without_evaluate_has_values_status_and_summaries(project: Any) -> None:
    project.spec(f"""
stages:
  train:
    uses: {TRAIN}
    matrix: {{learning_rate: [0.0001, 0.0005], epochs: [1, 2]}}
    with: {{learning_rate: "${{matrix.learning_rate}}", epochs: "${{matrix.epochs}}"}}
""")
    project.ok("run", "p.yaml", "train@learning_rate=0.0005,epochs=2", "train@learning_rate=0.0001,epochs=1")
    out = project.ok("compare", "p.yaml").stdout
    assert out.startswith("sweep 'train' of p.yaml: 4 branches, sorted by val_loss (training; lowest first)\n")
    head, *rows = table_rows(out)
    assert head == ["learning_rate", "epochs", "status", "train_loss", "val_loss", "val_loss_best", "summary", "run"]
    assert [r[:3] for r in rows] == [["0.0005", "2", "ok"], ["0.0001", "1", "ok"], ["0.0001", "2", "not run"],
                                     ["0.0005", "1", "not run"]]
    assert rows[0][6] == "steps=6 train_loss=0.1538"  # 2 / (1 + 0.0005 * 2000 * 2 * 6)
    assert ("not run yet: train@learning_rate=0.0001,epochs=2, train@learning_rate=0.0005,epochs=1 "
            "(`pipeline run p.yaml train` runs them)") in out


def test_compare_runs_nothing_and_writes_nothing_in_the_cache(swept: Any) -> None:
    before = tree(swept.cache)
    swept.ok("compare", "p.yaml")
    swept.ok("compare", "p.yaml", "--json")
    swept.ok("compare", "p.yaml", "--html", "out/sweep.html")
    assert tree(swept.cache) == before and swept.calls() == []


def one_error(result: Any) -> str:
    assert result.exit_code == 2 and result.stdout == "", result.output
    assert len(result.stderr.splitlines()) == 1, result.stderr
    return result.stderr


def test_user_errors_are_one_line_and_exit_2(project: Any) -> None:
    project.spec(SWEEP)
    assert one_error(project.run("compare", "p.yaml")).startswith("error: no runs of p.yaml are recorded")
    project.run("run", "p.yaml", "-k")
    assert "no stage 'trian'. Did you mean 'train'?" in one_error(project.run("compare", "p.yaml", "trian"))
    assert one_error(project.run("compare", "p.yaml", "evaluate")) == (
        "error: 'evaluate' has no matrix of its own: it fans out alongside 'train'; compare train (its matrix "
        "stages: train)\n")
    project.spec(f"stages:\n  a:\n    uses: {TRAIN}\n    with: {{learning_rate: 0.1}}\n", name="plain.yaml")
    project.ok("run", "plain.yaml")
    assert one_error(project.run("compare", "plain.yaml")).startswith("error: plain.yaml has no matrix stage: ")
    project.spec(SWEEP.replace("  evaluate:\n", "  again:\n    uses: tp_sweep:SweepTrain\n    matrix: {epochs: [1, 2]}"
                               "\n    with: {learning_rate: 0.1, epochs: \"${matrix.epochs}\"}\n  evaluate:\n"),
                 name="two.yaml")
    assert one_error(project.run("compare", "two.yaml")) == (
        "error: two.yaml has 2 matrix stages (train, again): name one, e.g. `pipeline compare two.yaml train`\n")
    project.run("run", "two.yaml", "evaluate", "-k")
    assert one_error(project.run("compare", "two.yaml", "again")) == (
        "error: no branch of 'again' is in the recorded run of two.yaml: run `pipeline run two.yaml again` first\n")


# --- the page ------------------------------------------------------------------------------------

def _cdp() -> Any:
    """tests/evaluation/cdp.py (the evaluate report's Chromium driver), loaded by path."""
    spec = importlib.util.spec_from_file_location("tp_compare_cdp", Path(__file__).parents[1] / "evaluation" / "cdp.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    cdp = _cdp()
    if cdp.chromium_path() is None:
        why = "Debian's chromium is not installed (as root: apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    b = cdp.Browser()
    yield b
    b.close()


def test_the_page_is_self_contained_and_renders_in_headless_chromium(swept: Any, browser: Any) -> None:
    result = swept.ok("compare", "p.yaml", "--html", "out/sweep.html")
    assert result.stderr == "wrote out/sweep.html\n"
    page = swept.root / "out" / "sweep.html"
    assert os.listdir(page.parent) == ["sweep.html"]  # written atomically: no temporary file left
    html = page.read_text()
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.I), "no URL of any kind"
    assert not re.search(r"<[a-z][^>]*\s(src|href|action|srcset|poster)\s*=", html, re.I), "nothing loaded"
    assert "<link" not in html and "@import" not in html and "url(" not in html and "default-src 'none'" in html
    browser.open(page.as_uri())
    js = browser.evaluate
    assert js("document.querySelectorAll('#branches tbody tr').length") == 3
    assert js("[...document.querySelectorAll('#branches tbody tr')].map(r => r.dataset.branch)") == [B1, B5, B20]
    assert js("document.querySelector('#branches tbody tr .badge').textContent") == "best"
    assert js("document.querySelectorAll('svg.metric-chart').length") == 6  # 3 evaluate metrics, 3 losses
    assert js("document.querySelectorAll('svg.metric-chart[data-metric=rouge_l] rect.bar').length") == 2
    assert js("document.querySelectorAll('svg.metric-chart[data-metric=rouge_l] path.interval').length") == 2
    curves = "[...document.querySelectorAll('#loss-curves polyline')].map(p => p.dataset.branch + ' ' + p.classList[1])"
    assert sorted(js(curves)) == [f"{B1} train", f"{B1} val", f"{B5} train", f"{B5} val"]
    box = js("(() => { const r = document.querySelector('#loss-curves').getBoundingClientRect(); "
             "return [r.width, r.height]; })()")
    assert box[0] > 300 and box[1] > 100
    js("document.querySelector('#branches tbody tr').dispatchEvent(new Event('mouseenter'))")
    assert js("document.querySelectorAll('#loss-curves polyline.dim').length") == 2  # the other branch's
    assert browser.problems() == [] and browser.requests() == [page.as_uri()]


def test_results_the_pipeline_would_no_longer_reuse_are_marked_stale(swept: Any) -> None:
    out = swept.ok("compare", "p.yaml").stdout
    assert "stale" not in out
    swept.write("p.yaml", (swept.root / "p.yaml").read_text().replace("fail_at: 0.002", "fail_at: 0.003"))
    out = swept.ok("compare", "p.yaml").stdout
    statuses = {r[1] if r[0] == "best" else r[0]: (r[2] if r[0] == "best" else r[1]) for r in table_rows(out)[1:]}
    assert statuses == {"0.0001": "ok, stale", "0.0005": "ok, stale", "0.002": "failed (train)"}
    line = next(x for x in out.splitlines() if x.startswith("stale: "))
    assert f"{B1} (parameter fail_at: 0.002 -> 0.003)" in line and "`pipeline run p.yaml train` brings them up to date" in line
    doc = json.loads(swept.ok("compare", "p.yaml", "--json").stdout)
    rows = {r["branch"]: r for r in doc["rows"]}
    assert list(rows[B1]["stale"]) == [B1, "evaluate@learning_rate=0.0001"] and rows[B20]["stale"] is None
    # -S undoes the edit for this command: nothing is stale
    assert "stale" not in swept.ok("compare", "p.yaml", "-S", "train.fail_at=0.002").stdout


def test_a_stage_after_the_evaluation_that_never_ran_is_named_with_how_to_run_it(project: Any) -> None:
    project.spec(SWEEP.replace("[0.0001, 0.0005, 0.002]", "[0.0001, 0.0005]") + """
  ship:
    uses: tp_testplugins:Emit
    inputs: {src: evaluate.report}
""")
    project.ok("run", "p.yaml", "evaluate")  # not `ship`
    out = project.ok("compare", "p.yaml").stdout
    assert {r[2] if r[0] == "best" else r[1] for r in table_rows(out)[1:]} == {"incomplete (ship not run)"}
    assert ("not run yet: ship@learning_rate=0.0001, ship@learning_rate=0.0005 "
            "(`pipeline run p.yaml` runs them)") in out
    assert "pipeline logs" not in out
