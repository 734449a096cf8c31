"""The optional judge: its prompt, parsing its verdicts, and judging replies through the emulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from eval_helpers import (
    QA,
    artifact,
    chats,
    make_ctx,
    openai_artifact,
    params,
    write_jsonl,
)

from tunepipe.evaluation.examples import Example
from tunepipe.evaluation.judge import (
    JudgeSpec,
    judge_request,
    normalized,
    parse_verdict,
    user_message,
)
from tunepipe.openai_ft.chat import Endpoint

BASE = "gpt-4o-mini-2024-07-18"
TUNED = "ft:gpt-4o-mini-2024-07-18:aimock:marv:abc123"
JUDGE = "gpt-4.1-2025-04-14"
RUBRIC = {"factually_correct": "The reply answers the question with correct facts.",
          "sarcastic": "The reply is sarcastic in tone."}


def verdict(correct: int, sarcastic: int) -> str:
    return json.dumps({"factually_correct": {"reason": f"correctness {correct}", "score": correct},
                       "sarcastic": {"reason": f"sarcasm {sarcastic}", "score": sarcastic}})


def test_parse_a_verdict() -> None:
    assert parse_verdict(verdict(5, 2), RUBRIC) == {"factually_correct": {"score": 5, "reason": "correctness 5"},
                                                    "sarcastic": {"score": 2, "reason": "sarcasm 2"}}
    fenced = "Here it is:\n```json\n" + verdict(4, 4) + "\n```"
    assert parse_verdict(fenced, RUBRIC)["sarcastic"]["score"] == 4
    loose = '{"factually_correct": {"score": "3", "reason": "ok"}, "sarcastic": {"score": 1.0}}'
    assert parse_verdict(loose, RUBRIC) == {"factually_correct": {"score": 3, "reason": "ok"},
                                            "sarcastic": {"score": 1, "reason": ""}}


@pytest.mark.parametrize(("text", "message"), [
    ("no json here", "holds no JSON object"),
    ('{"factually_correct": {"score": 3}}', "no verdict for 'sarcastic'"),
    ('{"factually_correct": {"score": 6}, "sarcastic": {"score": 1}}', "is 6, not an integer 1-5"),
    ('{"factually_correct": {"score": true}, "sarcastic": {"score": 1}}', "is True"),
    ("[1, 2]", "not a JSON object"),
    ("{broken", "holds no JSON object"),
])
def test_an_unusable_verdict_says_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_verdict(text, RUBRIC)


def test_scores_map_to_0_1() -> None:
    assert [normalized(s) for s in (1, 2, 3, 4, 5, None)] == [0.0, 0.25, 0.5, 0.75, 1.0, None]


def test_the_judge_sees_the_conversation_the_reference_the_reply_and_the_rubric() -> None:
    spec = JudgeSpec(JUDGE, RUBRIC, Endpoint())
    ex = Example(0, 1, [{"role": "system", "content": "Marv."}, {"role": "user", "content": QA[0][0]}], QA[0][1])
    text = user_message(spec, ex, "Paris.")
    assert "[system] Marv.\n[user] What's the capital of France?" in text
    assert f"<reference_reply>\n{QA[0][1]}\n</reference_reply>" in text
    assert "<reply_to_grade>\nParis.\n</reply_to_grade>" in text
    assert "- sarcastic: The reply is sarcastic in tone." in text
    req = judge_request(spec, ex, "Paris.")
    assert req["model"] == JUDGE and req["temperature"] == 0
    schema = req["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["factually_correct", "sarcastic"] and req["response_format"]["json_schema"]["strict"]


def judge_fixture(reply: str, content: str) -> dict[str, Any]:
    return {"match": {"model": JUDGE, "userMessage": f"<reply_to_grade>\n{reply}\n</reply_to_grade>"},
            "response": {"content": content}}


def test_judging_base_and_tuned_through_the_emulator(aimock: Any, tmp_path: Path) -> None:
    from tunepipe.evaluation.run import evaluate

    fixtures = []
    for i, (q, a) in enumerate(QA[:3]):
        fixtures.append({"match": {"model": TUNED, "userMessage": q}, "response": {"content": f"{a} (tuned {i})"}})
        fixtures.append({"match": {"model": BASE, "userMessage": q}, "response": {"content": f"A plain answer {i}."}})
        fixtures.append(judge_fixture(f"{a} (tuned {i})", verdict(5, 5 - i)))
        if i != 1:
            fixtures.append(judge_fixture(f"A plain answer {i}.", verdict(4, 1)))
    fixtures.append(judge_fixture("A plain answer 1.", "I refuse to answer in JSON."))  # twice: no usable verdict
    aimock.set_fixtures(fixtures)
    data = write_jsonl(tmp_path / "validation.jsonl", chats(3))
    model = openai_artifact(tmp_path / "model", BASE, TUNED)
    ctx = make_ctx(tmp_path / "run")
    p = params(metrics=["rouge_l"], openai={"base_url": aimock.base_url},
               judge={"model": JUDGE, "rubric": RUBRIC}, gates=["tuned.judge_sarcastic - base.judge_sarcastic >= 0.5"])
    summary = evaluate(ctx, {"model": artifact(model, "train.model"), "examples": artifact(data, "split.validation")}, p)
    assert summary["gates"] == "1/1 passed"
    out = ctx.output("report")
    doc = json.loads((out / "metrics.json").read_text())
    m = doc["metrics"]
    # tuned sarcasm 5, 4, 3 -> (s - 1) / 4 = 1, 0.75, 0.5: mean 0.75; base 1 -> 0 (the unscored one left out)
    assert m["judge_sarcastic"]["tuned"]["value"] == pytest.approx(0.75)
    assert m["judge_sarcastic"]["base"]["value"] == pytest.approx(0.0)
    assert m["judge_factually_correct"]["base"]["value"] == pytest.approx(0.75)
    assert "(score - 1) / 4" in m["judge_sarcastic"]["definition"]
    assert doc["judge"]["unscored"] == {"base": 1, "tuned": 0}
    assert "holds no JSON object" in doc["judge"]["errors"][0]
    rows = {r["index"]: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    assert rows[2]["tuned"]["judge"]["sarcastic"] == {"score": 3, "reason": "sarcasm 3"}
    assert rows[1]["base"]["judge"] is None and rows[1]["base"]["scores"]["judge_sarcastic"] is None
    judged = [e for e in aimock.journal(path="/v1/chat/completions") if e["body"]["model"] == JUDGE]
    assert len(judged) == 7  # 6 replies, one asked twice (another seed) after an unusable verdict
    retried = [e["body"]["seed"] for e in judged if "A plain answer 1." in e["body"]["messages"][1]["content"]]
    assert sorted(retried) == [0, 1]
    assert all(e["body"]["response_format"]["type"] == "json_schema" for e in judged)
    html = (out / "report.html").read_text()
    assert "sarcasm 3" in html and "no judge verdict" in html
