"""``pipeline diff``: parameters, inputs and plugin code per stage, and every metric of every
evaluate stage against the bootstrap noise (paired on the same examples, else by interval overlap)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from history_helpers import BETTER, NOISE, ids

from tunepipe.history import significance as S
from tunepipe.history.changes import ABSENT, stage_changes


def metric_rows(stdout: str) -> dict[str, list[str]]:
    """metric -> the cells of its row in the text table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c for c in line.strip().split("  ") if c]
        if cells and cells[0] in ("rouge_l", "length_ratio", "bleu"):
            rows[cells[0]] = [c.strip() for c in cells[1:]]
    return rows


def test_default_diff_is_the_last_two_runs_parameters_inputs_and_a_paired_gain(hist) -> None:
    hist.ok("run", "p.yaml")
    hist.write("data/in.txt", "changed")
    hist.ok("run", "p.yaml", "-S", "a.extra.depth.n=2", "-S", BETTER)
    out = hist.ok("diff", "p.yaml", "-S", "a.extra.depth.n=2", "-S", BETTER).stdout  # the workspace is the last run
    new, old = ids(hist.ok("runs", "p.yaml").stdout)
    assert out.splitlines()[0].startswith(f"run {old} (") and f"→ run {new} (" in out.splitlines()[0]
    assert "\nparameters\n  a   extra.depth.n  1 → 2\n  ev  tuned          [0.2,0.3,0.4,0.5,0.3,0.2,0.4,0.5] → " \
           "[0.5,0.6,0.7,0.8,0.6,0.5,0.7,0.8]\n" in out
    inputs = out.split("\ninputs\n")[1].split("\n\n")[0].splitlines()
    assert inputs[0].split()[:2] == ["a", "data/in.txt"] and inputs[1].split()[:3] == ["b", "a.out", "(upstream)"]
    assert "metrics of ev (tuned model; Δ interval: paired bootstrap over the same 8 examples, 95%)" in out
    rows = metric_rows(out)
    assert rows["rouge_l"] == ["0.350", "0.650", "+0.300", "[+0.300, +0.300]", "better"]  # +0.3 on every example
    assert rows["length_ratio"] == ["1.350", "1.650", "+0.300", "[+0.300, +0.300]", "higher"]  # no better side
    assert rows["bleu"][3:] == ["intervals apart", "better"]  # a corpus statistic: not paired
    assert "note: bleu: a corpus statistic (per-example scores do not add up to it): intervals compared" in out


def test_a_shuffle_of_the_same_mean_is_within_noise(hist) -> None:
    hist.ok("run", "p.yaml")
    hist.ok("run", "p.yaml", "-S", NOISE)
    doc = json.loads(hist.ok("diff", "p.yaml", "--json").stdout)
    rouge = next(m for m in doc["metrics"] if m["metric"] == "rouge_l")
    assert rouge["basis"] == "paired" and rouge["delta"] == pytest.approx(0, abs=1e-12)
    assert rouge["verdict"] == "same" and rouge["outside"] is False
    hist.ok("run", "p.yaml", "-S", "ev.tuned=[0.3, 0.4, 0.4, 0.5, 0.2, 0.3, 0.5, 0.5]")  # +0.0375 on average, noisy
    doc = json.loads(hist.ok("diff", "p.yaml", "--json").stdout)
    rouge = next(m for m in doc["metrics"] if m["metric"] == "rouge_l")
    assert rouge["delta"] == pytest.approx(0.0375) and rouge["low"] < 0 < rouge["high"]
    assert rouge["outside"] is False and rouge["verdict"] == "within noise"


def test_other_examples_cannot_be_paired_and_fall_back_to_interval_overlap(hist) -> None:
    hist.ok("run", "p.yaml")
    hist.ok("run", "p.yaml", "-S", "ev.first=5", "-S", BETTER)
    out = hist.ok("diff", "p.yaml").stdout
    assert ("metrics of ev (tuned model; the examples cannot be paired: the runs evaluated different examples "
            "(8 and 8, 3 shared); the runs' 95% intervals compared)") in out
    assert metric_rows(out)["rouge_l"] == ["0.350", "0.650", "+0.300", "intervals apart", "better"]
    doc = json.loads(hist.ok("diff", "p.yaml", "--json").stdout)
    assert doc["evaluations"] == [{"stage": "ev", "examples": 8, "paired": False, "confidence": 0.95,
                                   "why": "the runs evaluated different examples (8 and 8, 3 shared)"}]
    hist.ok("run", "p.yaml", "-S", "ev.first=6", "-S", "ev.tuned=[0.5, 0.6, 0.7, 0.8, 0.6, 0.5, 0.7, 0.7]")
    rouge = next(m for m in json.loads(hist.ok("diff", "p.yaml", "--json").stdout)["metrics"]
                 if m["metric"] == "rouge_l")
    assert rouge["basis"] == "overlap" and rouge["outside"] is False and rouge["verdict"] == "within noise"
    assert rouge["low"] is None and rouge["high"] is None


def test_markdown_for_a_pull_request(hist) -> None:
    hist.ok("run", "p.yaml")
    hist.ok("run", "p.yaml", "-S", "b.text=a|b", "-S", BETTER)
    md = hist.ok("diff", "p.yaml", "--md").stdout
    new, old = ids(hist.ok("runs", "p.yaml").stdout)
    assert md.startswith(f"### `p.yaml`: run {old} → {new}\n")
    assert "| stage | what | old | new |\n|---|---|---|---|\n| b | text | -b | a\\|b |\n" in md
    assert "**Metrics of ev** (tuned model; paired bootstrap over the same 8 examples, 95% interval of Δ)" in md
    assert "| rouge_l | 0.350 | 0.650 | +0.300 | [+0.300, +0.300] | better |" in md
    assert md.endswith("intervals compared_\n") and "\n\n\n" not in md
    assert "\n\n_bleu: a corpus statistic (per-example scores do not add up to it): intervals compared_" in md


def test_run_ids_pick_the_runs(hist) -> None:
    hist.ok("run", "p.yaml")
    hist.ok("run", "p.yaml", "-S", "b.text=two")
    hist.ok("run", "p.yaml", "-S", "b.text=three")
    third, second, first = ids(hist.ok("runs", "p.yaml").stdout)
    one = json.loads(hist.ok("diff", "p.yaml", first[:5], "--json").stdout)  # a prefix, against the latest
    assert (one["a"]["id"], one["b"]["id"]) == (first, third)
    assert one["changes"][0] == {"stage": "b", "kind": "param", "what": "text", "old": "-b", "new": "three"}
    back = json.loads(hist.ok("diff", "p.yaml", third, second, "--json").stdout)  # as given: third → second
    assert back["changes"][0]["old"] == "three" and back["changes"][0]["new"] == "two"
    for args, message in (((third,), f"error: run {third} is the latest run: name another run to compare it with"),
                          ((first, first), f"error: run {first} is the same run"),
                          (("nope",), "error: no run of p.yaml has the id 'nope'")):
        result = hist.run("diff", "p.yaml", *args)
        assert result.exit_code == 2 and result.stderr.startswith(message), result.stderr
        assert len(result.stderr.splitlines()) == 1


def test_one_run_is_not_enough(hist) -> None:
    hist.ok("run", "p.yaml")
    result = hist.run("diff", "p.yaml")
    assert result.exit_code == 2
    assert "a diff needs two; run `pipeline run p.yaml` again after a change" in result.stderr


def test_a_failed_gate_s_report_is_read_from_the_scratch_folder(hist) -> None:
    hist.ok("run", "p.yaml")
    assert hist.run("run", "p.yaml", "-S", "ev.gate=0.9", "-S", BETTER).exit_code == 1
    doc = json.loads(hist.ok("diff", "p.yaml", "--json").stdout)
    assert doc["b"]["status"] == "failed"
    rouge = next(m for m in doc["metrics"] if m["metric"] == "rouge_l")
    assert (rouge["old"], rouge["new"], rouge["verdict"]) == (pytest.approx(0.35), pytest.approx(0.65), "better")
    runs = hist.ok("runs", "p.yaml").stdout.splitlines()
    assert runs[0].endswith("2 cached, 1 failed (ev)")
    assert runs[2].endswith("metrics  ev (base→tuned, the failed stage's report): rouge_l 0.238→0.650")


def test_a_missing_report_is_said(hist) -> None:
    hist.ok("run", "p.yaml")
    hist.spec(hist.root.joinpath("p.yaml").read_text().replace("tuned: [", "tuned: [1.5, "))  # 9 scores, base 8
    result = hist.run("run", "p.yaml")
    assert result.exit_code == 1
    out = hist.ok("diff", "p.yaml").stdout
    new = ids(hist.ok("runs", "p.yaml").stdout)[0]
    assert f"metrics of ev (tuned model): run {new} has no evaluation report of stage 'ev' (stage failed)" in out


# --- the pure parts --------------------------------------------------------------------------------

def test_stage_changes_name_dotted_parameters_inputs_code_and_packages() -> None:
    old = {"format": 2, "plugin": {"name": "x", "identity": "m:X", "version": "1"}, "code": "c1",
           "params": {"lr": 0.001, "lora": {"r": 8, "targets": ["q", "v"]}, "gone": 1},
           "inputs": {"data": [{"name": "a.jsonl", "digest": "d1"}, {"name": "b.jsonl", "digest": "d2"}],
                      "model": [{"name": "train.model", "digest": "m1"}]},
           "env": {"torch": "2.4"}}
    new = {**old, "code": "c2", "plugin": {"name": "x", "identity": "m:X", "version": "2"},
           "params": {"lr": 0.002, "lora": {"r": 8, "targets": "all-linear"}, "added": {}},
           "inputs": {"data": [{"name": "a.jsonl", "digest": "d1"}, {"name": "c.jsonl", "digest": "d3"}],
                      "model": [{"name": "train.model", "digest": "m2"}]},
           "env": {"torch": "2.5"}}
    found = [(c.kind, c.what, c.old, c.new, c.upstream) for c in stage_changes("s", old, new, {"train": ["model"]})]
    assert found == [
        ("plugin", "version", "1", "2", False), ("code", "code", "c1", "c2", False),
        ("param", "lr", 0.001, 0.002, False), ("param", "lora.targets", ["q", "v"], "all-linear", False),
        ("param", "added", ABSENT, {}, False), ("param", "gone", 1, ABSENT, False),
        ("input", "c.jsonl", ABSENT, "d3", False), ("input", "b.jsonl", "d2", ABSENT, False),
        ("input", "train.model", "m1", "m2", True), ("package", "torch", "2.4", "2.5", False)]
    assert stage_changes("s", old, old) == []
    assert stage_changes("s", {}, {}) == []


def test_paired_bootstrap_matches_a_direct_numpy_computation() -> None:
    rng = np.random.default_rng(3)
    old = list(rng.uniform(0, 1, 40))
    new = [x + d for x, d in zip(old, rng.normal(0.05, 0.1, 40))]
    p = S.paired(old, new, samples=2000, confidence=0.9, seed=11)
    assert p.delta == pytest.approx(float(np.mean(np.subtract(new, old))))
    gen = np.random.default_rng(11)  # the evaluate stage's resampler: seeded, index draws per resample
    idx = gen.integers(0, 40, size=(2000, 40))
    means = np.subtract(new, old)[idx].mean(axis=1)
    lo, hi = np.percentile(means, [5, 95])
    assert (p.low, p.high) == (pytest.approx(lo), pytest.approx(hi)) and p.n == 40
    assert p.excludes_zero is bool(lo > 0 or hi < 0)
    with_gaps = S.paired([0.1, None, 0.3], [0.2, 0.5, None], samples=100, confidence=0.95, seed=0)
    assert with_gaps.n == 1 and with_gaps.delta == pytest.approx(0.1)
    assert S.paired([None], [None], samples=10, confidence=0.95, seed=0).excludes_zero is None


def test_pairing_needs_the_same_examples_and_finds_them_in_any_order() -> None:
    rows = [{"index": i, "prompt": f"p{i}", "reference": f"r{i}", "tuned": {"scores": {"m": i / 10}}} for i in range(4)]
    a, b = S.pairing(rows, list(reversed(rows)))  # type: ignore[misc]
    assert [rows[i]["index"] for i in a] == [rows[::-1][j]["index"] for j in b]
    assert S.scores(rows, a, "m") == [0.0, 0.1, 0.2, 0.3] and S.scores(rows, a, "absent") == [None] * 4
    other = [dict(r, reference="changed") if r["index"] == 2 else r for r in rows]
    assert S.pairing(rows, other) == "the runs evaluated different examples (4 and 4, 3 shared)"
    assert S.pairing(rows, None) == "a run's per-example scores (predictions.jsonl) are missing"
    assert S.overlap((0.1, 0.2), (0.2, 0.3)) is True and S.overlap((0.1, 0.2), (0.25, 0.3)) is False
    assert S.overlap((None, 0.2), (0.25, 0.3)) is None
    assert S.settings({"bootstrap": {"samples": 50, "confidence": 0.8, "seed": 4}}) == (50, 0.8, 4)
    assert S.settings({}) == (1000, 0.95, 0) and not math.isnan(S.DEFAULT_CONFIDENCE)


# --- the workspace ---------------------------------------------------------------------------------

def test_edits_since_the_last_run_are_diffed_against_the_workspace_before_running(hist) -> None:
    hist.ok("run", "p.yaml")
    hist.write("p.yaml", (hist.root / "p.yaml").read_text().replace('text: "-b"', 'text: "-B"'))
    hist.write("data/in.txt", "changed")
    hist.calls()
    out = hist.ok("diff", "p.yaml").stdout
    assert hist.calls() == []  # planned, not run
    (last,) = ids(hist.ok("runs", "p.yaml").stdout)
    assert out.splitlines()[0].startswith(f"run {last} (") and out.splitlines()[0].endswith(
        "→ the workspace (not run yet)")
    assert "\nparameters\n  b  text  -b → -B\n" in out
    assert "  a  data/in.txt" in out.split("\ninputs\n")[1]
    assert ("metrics of ev (tuned model): the workspace has no evaluation report of stage 'ev' yet (pending: "
            "run the pipeline to get its metrics)") in out
    doc = json.loads(hist.ok("diff", "p.yaml", "--json").stdout)
    assert doc["b"]["id"] == "workspace" and doc["b"]["status"] == "workspace"
    assert {(c["stage"], c["kind"]) for c in doc["changes"]} >= {("a", "input"), ("b", "param")}


def test_an_unchanged_workspace_and_a_set_run_fall_back_to_the_last_two_runs(hist) -> None:
    hist.ok("run", "p.yaml")
    hist.ok("run", "p.yaml", "-S", BETTER)  # the workspace (no -S) is the first run again
    new, old = ids(hist.ok("runs", "p.yaml").stdout)
    out = hist.ok("diff", "p.yaml").stdout
    assert out.splitlines()[0].startswith(f"run {old} (") and f"→ run {new} (" in out.splitlines()[0]
    # named, the workspace is diffed all the same: it undoes the -S
    out = hist.ok("diff", "p.yaml", new, "workspace").stdout
    assert out.splitlines()[0].endswith("→ the workspace (not run yet)") and "\nparameters\n  ev  tuned" in out
    # the evaluate stage is fresh in the workspace: its metrics are the first run's, compared for real
    assert "rouge_l" in out and "-0.300" in out


def test_one_run_and_an_unchanged_workspace_is_a_clear_error(hist) -> None:
    hist.ok("run", "p.yaml")
    r = hist.run("diff", "p.yaml")
    assert r.exit_code == 2 and "only one run" in r.stderr and "the workspace matches it" in r.stderr


def test_a_broken_pipeline_file_still_diffs_the_runs_and_says_why_not_the_workspace(hist) -> None:
    hist.ok("run", "p.yaml")
    hist.ok("run", "p.yaml", "-S", BETTER)
    hist.write("p.yaml", (hist.root / "p.yaml").read_text().replace("uses:", "usess:", 1))
    r = hist.run("diff", "p.yaml")
    assert r.exit_code == 0 and "→ run " in r.stdout.splitlines()[0]
    assert "note: the workspace cannot be planned (" in r.stderr and "showing the last two runs" in r.stderr
    r = hist.run("diff", "p.yaml", "workspace")
    assert r.exit_code == 2 and "usess" in r.stderr and "Traceback" not in r.stderr
    r = hist.run("diff", "p.yaml", "workspace", "abc")
    assert r.exit_code == 2 and "the workspace is the newer side" in r.stderr
