"""The OpenAI path against the real API emulator (aimock): chat fixtures, rate limits, errors,
bounded concurrency, usage and latency, and the evaluate run end to end."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from eval_helpers import (
    QA,
    artifact,
    chat_fixtures,
    chats,
    make_ctx,
    openai_artifact,
    params,
    write_jsonl,
)

from tunepipe.errors import StageFailed, UserError
from tunepipe.evaluation.examples import Example
from tunepipe.evaluation.metrics import METRICS
from tunepipe.openai_ft.chat import Caller, Endpoint, chat_request, complete_all
from tunepipe.replies import Decoding, Reply

BASE = "gpt-4o-mini-2024-07-18"
TUNED = "ft:gpt-4o-mini-2024-07-18:aimock:marv:abc123"


def header_client(header: str, value: str = "1", times: int = 1, path: str = "/v1/chat/completions") -> Any:
    """An SDK http client that adds an aimock fault header to the first ``times`` matching requests
    (the emulator then really answers with the fault)."""
    import openai

    seen = {"n": 0}

    def hook(request: Any) -> None:
        if request.url.path == path and seen["n"] < times:
            seen["n"] += 1
            request.headers[header] = value

    return openai.DefaultHttpxClient(event_hooks={"request": [hook]})


def examples(n: int = 4) -> list[Example]:
    return [Example(i, i + 1, [{"role": "system", "content": "Marv."}, {"role": "user", "content": q}], a)
            for i, (q, a) in enumerate(QA[:n])]


def fixtures(n: int = 4) -> list[dict[str, Any]]:
    pairs = []
    for q, a in QA[:n]:
        pairs.append((TUNED, q, a.split(".")[0] + ". Obviously."))
        pairs.append((BASE, q, "I believe the answer is " + a.split()[-1]))
    return chat_fixtures(pairs)


def send(aimock: Any, exs: list[Example], model: str, endpoint: Endpoint | None = None, http_client: Any = None,
         call: Any = None) -> dict[int, Reply]:
    endpoint = endpoint or Endpoint(base_url=aimock.base_url, max_retries=3)
    client = endpoint.client(http_client)
    out: dict[int, Reply] = {}
    complete_all(call or Caller(client, endpoint, "evaluate", lambda: False), endpoint,
                 [(ex.index, chat_request(ex.as_prompt(), model, Decoding(max_new_tokens=64, seed=5))) for ex in exs],
                 stage="evaluate", doing=f"asking {model}", done=out.__setitem__)
    return out


def test_replies_with_usage_latency_and_the_decoding_sent(aimock: Any) -> None:
    aimock.set_fixtures(fixtures())
    exs = examples()
    tuned = send(aimock, exs, TUNED)
    base = send(aimock, exs, BASE)
    assert tuned[0].text == "Paris, as if everyone doesn't know that already. Obviously."
    assert base[3].text == "I believe the answer is that?"
    for r in [*tuned.values(), *base.values()]:
        assert r.finish == "stop" and r.retries == 0 and r.latency_s > 0
        assert r.prompt_tokens > 0 and r.completion_tokens > 0
    bodies = [e["body"] for e in aimock.journal(path="/v1/chat/completions")]
    assert len(bodies) == 8
    assert {b["model"] for b in bodies} == {BASE, TUNED}
    assert all(b["temperature"] == 0 and b["seed"] == 5 and b["max_completion_tokens"] == 64 and b["top_p"] == 1
               for b in bodies)
    assert sum(b["messages"] == exs[0].prompt for b in bodies) == 2  # the prompt: messages before the reply


def test_a_rate_limit_is_retried_and_counted(aimock: Any) -> None:
    aimock.set_fixtures(fixtures(2))
    started = time.monotonic()
    replies = send(aimock, examples(2), TUNED, http_client=header_client("x-aimock-chaos-ratelimit", times=2))
    assert all(r.finish == "stop" and r.text.endswith("Obviously.") for r in replies.values())
    assert sum(r.retries for r in replies.values()) == 2
    statuses = [e["response"]["status"] for e in aimock.journal(path="/v1/chat/completions")]
    assert statuses.count(429) == 2 and statuses.count(200) == 2
    assert time.monotonic() - started >= 1.0  # Retry-After: 1 was honoured


def test_requests_in_flight_never_exceed_the_concurrency(aimock: Any) -> None:
    aimock.set_fixtures(fixtures(4))
    endpoint = Endpoint(base_url=aimock.base_url, concurrency=2, max_retries=0)
    client = endpoint.client(header_client("x-aimock-chaos-latency", "300", times=100))
    inner = Caller(client, endpoint, "evaluate", lambda: False)
    lock, now, peak = threading.Lock(), [0], [0]

    def counting(request: dict[str, Any]) -> Reply:
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        try:
            return inner(request)
        finally:
            with lock:
                now[0] -= 1

    exs = examples(4) + [Example(4 + i, 5 + i, ex.prompt, ex.reference) for i, ex in enumerate(examples(4))]
    started = time.monotonic()
    replies = send(aimock, exs, TUNED, endpoint=endpoint, call=counting)
    assert len(replies) == 8 and peak[0] == 2
    assert time.monotonic() - started >= 4 * 0.3  # 8 requests of 0.3 s, 2 at a time


def test_a_request_the_api_rejects_marks_its_example_and_the_rest_go_on(aimock: Any) -> None:
    aimock.set_fixtures([{"match": {"userMessage": QA[1][0]},
                          "response": {"error": {"message": "This model's maximum context length is 16 tokens",
                                                 "type": "invalid_request_error", "code": "context_length_exceeded"},
                                       "status": 400}}, *fixtures(3)])
    replies = send(aimock, examples(3), TUNED)
    assert replies[1].finish == "error" and replies[1].text == ""
    assert "HTTP 400" in replies[1].extra["error"] and "maximum context length" in replies[1].extra["error"]
    assert replies[0].finish == replies[2].finish == "stop"


def test_every_request_rejected_fails_the_stage(aimock: Any) -> None:
    aimock.set_fixtures([{"match": {"userMessage": "?"},
                          "response": {"error": {"message": "bad request", "type": "invalid_request_error"},
                                       "status": 400}}])
    with pytest.raises(StageFailed, match="rejected all 3 requests, e.g. HTTP 400"):
        send(aimock, examples(3), TUNED)


def test_an_unknown_model_is_a_user_error(aimock: Any) -> None:
    aimock.set_fixtures(fixtures(1))  # no fixture for this model: the emulator answers 404
    with pytest.raises(UserError, match="404 while asking ft:nope"):
        send(aimock, examples(1), "ft:nope")


def test_a_refused_key_names_the_variable_not_the_key(aimock_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server = aimock_factory(api_keys=["sk-good"], fixtures=fixtures(1))
    monkeypatch.setenv("EVAL_KEY", "sk-wrong-key-value")
    with pytest.raises(UserError) as e:
        send(server, examples(1), TUNED, endpoint=Endpoint("EVAL_KEY", server.base_url, max_retries=0))
    assert "EVAL_KEY" in str(e.value) and "sk-wrong-key-value" not in str(e.value)
    monkeypatch.setenv("EVAL_KEY", "sk-good")
    assert send(server, examples(1), TUNED, endpoint=Endpoint("EVAL_KEY", server.base_url))[0].finish == "stop"


def test_a_missing_key_says_how_to_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(UserError, match="NO_SUCH_KEY_VAR, which is not set"):
        Endpoint("NO_SUCH_KEY_VAR", "http://127.0.0.1:9/v1").client()


def _openai_run(aimock: Any, tmp_path: Path, name: str = "run", shared: Path | None = None, **over: Any) -> Any:
    from tunepipe.evaluation.run import evaluate

    model = openai_artifact(tmp_path / "model", BASE, TUNED)
    data = tmp_path / "validation.jsonl"
    if not data.exists():
        write_jsonl(data, chats(4))
    ctx = make_ctx(tmp_path / name, shared=shared)
    p = params(**{"metrics": ["exact_match", "token_f1", "rouge_l", "bleu", "length_ratio"],
                  "openai": {"base_url": aimock.base_url}, **over})
    summary = evaluate(ctx, {"model": artifact(model, "train.model"), "examples": artifact(data, "split.validation")}, p)
    return ctx, summary


def test_evaluate_an_openai_model_against_its_base(aimock: Any, tmp_path: Path) -> None:
    aimock.set_fixtures(fixtures(4))
    ctx, summary = _openai_run(aimock, tmp_path, gates=["tuned.rouge_l - base.rouge_l >= 0.05"])
    assert summary["examples"] == 4 and summary["gates"] == "1/1 passed"
    assert summary["rouge_l"].count("→") == 1
    doc = json.loads((ctx.output("report") / "metrics.json").read_text())
    assert doc["backend"] == "openai" and doc["models"] == {"tuned": TUNED, "base": BASE}
    assert doc["metrics"]["rouge_l"]["delta"]["value"] > 0.05
    assert doc["metrics"]["bleu"]["aggregate"] == "corpus"
    gen = doc["generation"]
    assert gen["tuned"]["replies"] == 4 and gen["tuned"]["prompt_tokens"] > 0 and gen["concurrency"] == 4
    assert gen["tuned"]["latency_s"]["p95"] >= gen["tuned"]["latency_s"]["p50"] > 0
    assert len(aimock.journal(path="/v1/chat/completions")) == 8

    # a rerun with other gates and metrics asks the API nothing (the replies are in the shared area)
    ctx2, _ = _openai_run(aimock, tmp_path, "run2", shared=tmp_path / "run" / "shared",
                          metrics=["rouge_l"], gates=["tuned.rouge_l >= 0.1"])
    assert len(aimock.journal(path="/v1/chat/completions")) == 8
    doc2 = json.loads((ctx2.output("report") / "metrics.json").read_text())
    assert doc2["generation"]["tuned"]["reused"] == 4


def test_an_interrupted_run_resumes_with_the_missing_replies(aimock: Any, tmp_path: Path) -> None:
    aimock.set_fixtures(fixtures(4))
    ctx, _ = _openai_run(aimock, tmp_path, compare_base=False)
    final = next((tmp_path / "run" / "shared" / "evaluate").glob("tuned-*.jsonl"))
    lines = final.read_text().splitlines()
    # as if the run had died after two replies: they are in scratch, nothing is in the shared area
    final.unlink()
    store_key = final.stem.removeprefix("tuned-")
    partial = tmp_path / "run" / "scratch" / f"replies-tuned-{store_key[:16]}.jsonl"
    partial.write_text("\n".join(lines[:2]) + "\n" + '{"index": 3, "text": "cut by a cr')  # a torn last line
    before = len(aimock.journal(path="/v1/chat/completions"))
    ctx, _ = _openai_run(aimock, tmp_path, compare_base=False)
    assert len(aimock.journal(path="/v1/chat/completions")) - before == 2
    doc = json.loads((ctx.output("report") / "metrics.json").read_text())
    assert doc["generation"]["tuned"]["reused"] == 2 and doc["generation"]["tuned"]["generated"] == 2
    assert not partial.exists() and final.exists()


def test_a_failing_gate_fails_the_stage_and_keeps_the_report_in_scratch(aimock: Any, tmp_path: Path) -> None:
    aimock.set_fixtures(fixtures(4))
    with pytest.raises(StageFailed) as e:
        _openai_run(aimock, tmp_path, gates=["tuned.rouge_l >= 0.1", "tuned.rouge_l - base.rouge_l >= 0.9",
                                             "tuned.exact_match >= 0.5"])
    message = str(e.value)
    assert message.startswith("stage 'evaluate': gate 'tuned.rouge_l - base.rouge_l >= 0.9' failed: "
                              "tuned.rouge_l - base.rouge_l = ")
    assert "which is not >= 0.9 (tuned.rouge_l = " in message and ", base.rouge_l = " in message
    assert "(and 1 more gate)" in message
    kept = tmp_path / "run" / "scratch" / "report"
    assert f"{kept}/report.html" in message
    assert {p.name for p in kept.iterdir()} == {"metrics.json", "predictions.jsonl", "report.html", "report.md"}
    doc = json.loads((kept / "metrics.json").read_text())
    assert doc["gates_passed"] is False and [g["passed"] for g in doc["gates"]] == [True, False, False]
    assert "FAIL" in (kept / "report.md").read_text() and "GATES FAIL" in (kept / "report.html").read_text()
    assert list((tmp_path / "run" / "out").iterdir()) == []  # nothing in the output: it is not published


def test_without_the_base_only_the_tuned_model_is_asked(aimock: Any, tmp_path: Path) -> None:
    aimock.set_fixtures(fixtures(4))
    ctx, summary = _openai_run(aimock, tmp_path, compare_base=False, max_examples=3)
    assert {e["body"]["model"] for e in aimock.journal(path="/v1/chat/completions")} == {TUNED}
    assert summary["examples"] == 3 and "→" not in str(summary["rouge_l"])
    doc = json.loads((ctx.output("report") / "metrics.json").read_text())
    assert doc["models"] == {"tuned": TUNED} and "base" not in doc["metrics"]["rouge_l"]
    assert doc["regressions"] is None


@pytest.mark.slow
def test_the_default_metrics_include_semantic_similarity(aimock: Any, tmp_path: Path) -> None:
    aimock.set_fixtures(fixtures(4))
    ctx, summary = _openai_run(aimock, tmp_path, metrics=list(METRICS))
    assert list(summary)[:3] == ["examples", "rouge_l", "semantic"]
    doc = json.loads((ctx.output("report") / "metrics.json").read_text())
    sem = doc["metrics"]["semantic"]
    assert 0 < sem["base"]["value"] < sem["tuned"]["value"] <= 1
    assert sem["tuned"]["ci_low"] <= sem["tuned"]["value"] <= sem["tuned"]["ci_high"]
    assert "all-MiniLM-L6-v2" in sem["definition"]
    rows = [json.loads(x) for x in (ctx.output("report") / "predictions.jsonl").read_text().splitlines()]
    assert all(-1 <= r["tuned"]["scores"]["semantic"] <= 1 for r in rows)
