"""The ``evaluate`` stage through the real CLI: validation of its parameters with file and line, a
local train -> evaluate pipeline, a failing gate, and an OpenAI pipeline against the emulator."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from aimock import aimock, aimock_server  # noqa: F401  (pytest fixtures)

sys.path.append(str(Path(__file__).resolve().parents[1] / "evaluation"))  # for eval_helpers
from eval_helpers import QA, SYSTEM, chats, write_jsonl  # noqa: E402

EVALUATE = "evaluate"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-evaluate")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def numbered(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "system", "content": SYSTEM},
                          {"role": "user", "content": f"{QA[i % len(QA)][0]} (#{i})"},
                          {"role": "assistant", "content": QA[i % len(QA)][1]}]} for i in range(start, start + n)]


def test_a_mistyped_gate_is_reported_at_its_line_before_anything_runs(project: Any) -> None:
    project.write("data/validation.jsonl", "")
    project.write("model/model.json", "{}")
    project.spec(f"""\
        stages:
          evaluate:
            uses: {EVALUATE}
            inputs: {{model: model, examples: data/validation.jsonl}}
            with:
              gates:
                - tuned.rouge_l >= 0.2
                - tuned.rouge - base.rouge_l >= 0.05
                - bleu >= 30
              rank_by: rogue_l
              bootstrap: {{samples: 10}}
        """)
    result = project.run("validate", "p.yaml")
    assert result.exit_code == 2, result.output
    out = result.output
    assert "p.yaml:8:" in out and "parameter 'gates.1': gate 'tuned.rouge - base.rouge_l >= 0.05': unknown metric 'rouge'" in out
    assert "did you mean 'rouge_l'?" in out
    assert "p.yaml:9:" in out and "bleu lies in 0 to 1, but the gate compares it with 30" in out
    assert "p.yaml:10:" in out and "'rogue_l' is not one of the metrics computed" in out


def test_schema_errors_name_the_parameter(project: Any) -> None:
    project.write("data/validation.jsonl", "")
    project.write("model/model.json", "{}")
    project.spec(f"""\
        stages:
          evaluate:
            uses: {EVALUATE}
            inputs: {{model: model, examples: data/validation.jsonl}}
            with:
              metrics: [rouge_l, meteor]
              judge: {{model: gpt-4o-mini, rubric: {{Sarcastic: x}}}}
        """)
    result = project.run("validate", "p.yaml")
    assert result.exit_code == 2
    assert "meteor" in result.output and "Sarcastic" in result.output


@pytest.mark.slow
def test_train_then_evaluate_locally_through_the_cli(project: Any, tiny_model: Path) -> None:
    write_jsonl(project.root / "data/train.jsonl", numbered(12))
    write_jsonl(project.root / "data/validation.jsonl", numbered(4, start=100))

    def spec(gates: list[str]) -> None:
        project.spec(f"""\
            stages:
              train:
                uses: train
                inputs: {{train: data/train.jsonl, validation: data/validation.jsonl}}
                with: {{model: "{tiny_model}", epochs: 1, batch_size: 4, learning_rate: 0.005, seed: 7,
                        lora: {{r: 4, alpha: 8}}, max_seq_length: 256, device: cpu, threads: 1}}
              evaluate:
                uses: {EVALUATE}
                inputs: {{model: train.model, examples: data/validation.jsonl}}
                with:
                  metrics: [token_f1, rouge_l, bleu, length_ratio]
                  decoding: {{max_new_tokens: 6}}
                  device: cpu
                  threads: 1
                  bootstrap: {{samples: 200}}
                  gates: {json.dumps(gates)}
            """)

    spec(["tuned.length_ratio >= 0", "tuned.rouge_l <= 1"])
    result = project.ok("run", "p.yaml")
    assert "evaluate  done" in result.stdout and "gates=2/2 passed" in result.stdout  # its result line
    info = json.loads(project.ok("show", "p.yaml", "evaluate", "--json").stdout)
    report = Path(info["outputs"]["report"]["path"])
    assert {f["path"] for f in info["outputs"]["report"]["files"]} == {"metrics.json", "predictions.jsonl",
                                                                       "report.html", "report.md"}
    assert info["summary"]["examples"] == 4 and "→" in info["summary"]["rouge_l"]
    doc = json.loads((report / "metrics.json").read_text())
    assert doc["backend"] == "local" and doc["generation"]["tuned"]["replies"] == 4
    assert "loss-chart" in (report / "report.html").read_text()  # the train artifact's loss curve
    shown = project.ok("show", "p.yaml", "evaluate").stdout
    assert "report.html" in shown and "gates=" in shown
    assert "  | metric | base | tuned | Δ tuned − base | |" in shown  # the headline table
    assert "  - PASS `tuned.rouge_l <= 1`" in shown and f"  report: {report / 'report.html'}" in shown

    # a gate that cannot hold: exit 1, the gate and its numbers, and where the report went
    spec(["tuned.length_ratio >= 0", "tuned.rouge_l - base.rouge_l >= 0.9"])
    result = project.run("run", "p.yaml")
    assert result.exit_code == 1, result.output
    assert "evaluate  failed" in result.stdout
    text = " ".join(result.stderr.split())  # the failed stage's error: a diagnostic
    assert "gate 'tuned.rouge_l - base.rouge_l >= 0.9' failed: tuned.rouge_l - base.rouge_l =" in text
    assert "which is not >= 0.9 (tuned.rouge_l =" in text
    kept = text.split("The report is in ")[1].split(" ")[0]
    assert kept.endswith("/report/report.html") and Path(kept).is_file()
    assert "/scratch/" in kept
    assert "GATES FAIL" in Path(kept).read_text()


def test_an_openai_pipeline_trains_on_the_emulator_and_evaluates_base_against_tuned(project: Any, aimock: Any) -> None:
    write_jsonl(project.root / "data/train.jsonl", chats(12))
    write_jsonl(project.root / "data/validation.jsonl", chats(4))
    project.spec(f"""\
        stages:
          train:
            uses: train
            inputs: {{train: data/train.jsonl}}
            with:
              backend: openai
              openai: {{base_url: "{aimock.base_url}", poll_seconds: 0.01}}
          evaluate:
            uses: {EVALUATE}
            inputs: {{model: train.model, examples: data/validation.jsonl}}
            with:
              metrics: [exact_match, token_f1, rouge_l]
              openai: {{base_url: "{aimock.base_url}", concurrency: 2}}
              gates: ["delta.token_f1.ci_low > 0"]
        """)
    project.ok("run", "p.yaml", "train")
    model = json.loads(project.ok("show", "p.yaml", "train", "--json").stdout)["outputs"]["model"]["path"]
    info = json.loads((Path(model) / "model.json").read_text())
    base, tuned = info["base_model"], info["fine_tuned_model"]
    assert tuned.startswith(f"ft:{base}:")
    aimock.set_fixtures([{"match": {"model": m, "userMessage": q}, "response": {"content": reply}}
                         for q, a in QA[:4] for m, reply in ((tuned, a), (base, "No idea, sorry."))])
    result = project.ok("run", "p.yaml")
    assert "gates=1/1 passed" in result.stdout
    report = Path(json.loads(project.ok("show", "p.yaml", "evaluate", "--json").stdout)["outputs"]["report"]["path"])
    doc = json.loads((report / "metrics.json").read_text())
    assert doc["models"] == {"tuned": tuned, "base": base}
    assert doc["metrics"]["exact_match"]["tuned"]["value"] == 1.0
    assert doc["metrics"]["exact_match"]["base"]["value"] == 0.0
    md = (report / "report.md").read_text()
    assert f"# Evaluation: {tuned} vs {base}" in md and "- PASS `delta.token_f1.ci_low > 0`" in md
    # cached: the second run asks nothing
    calls = len(aimock.journal(path="/v1/chat/completions"))
    assert "evaluate  cached" in project.ok("run", "p.yaml").stdout
    assert len(aimock.journal(path="/v1/chat/completions")) == calls
