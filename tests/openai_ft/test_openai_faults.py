"""Answers that arrive garbled (a 200 whose JSON does not parse), against the real emulator (aimock):
what the SDK raises, and that the train stage and chat completions outlast a 30 % rate of them with
exactly one job. Two sources of garbling, both real HTTP: aimock's own chaos (``malformedRate``,
which answers *before* handling the request, so nothing was created), and a proxy in front of the
emulator that garbles answers *after* the emulator handled them (the job was created; its answer
was lost on the way)."""

from __future__ import annotations

import http.client
import http.server
import json
import random
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from openai_helpers import KEY, MODEL, chat_example, make_params, write_jsonl

from tunepipe.openai_ft.backend import train_openai

GARBLED_RATE = 0.3
JOBS_PATH = "/v1/fine_tuning/jobs"

SPEC = f"""\
stages:
  train:
    uses: train
    inputs: {{train: data/train.jsonl, validation: data/validation.jsonl}}
    with:
      backend: openai
      model: {MODEL}
      openai: {{poll_seconds: 0.05}}
"""


# -- a real proxy that garbles answers after the emulator handled the request ---------------------

class GarblingProxy:
    """HTTP in front of the emulator: every request is forwarded as it is; ``garble(method, path)``
    says whether the answer comes back cut in half (status and content type kept), as a proxy or a
    dropped packet might leave it. Whatever the request did on the emulator, it did."""

    def __init__(self, upstream: str, garble: Callable[[str, str], bool]) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.garble = garble
        self.garbled: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                body = _read_body(self)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection", "transfer-encoding", "content-length")}
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    status, kind, data = answer.status, answer.getheader("Content-Type", ""), answer.read()
                finally:
                    conn.close()
                path = self.path.split("?")[0]
                if 200 <= status < 300 and "json" in kind and proxy.garble(self.command, path):
                    with proxy.lock:
                        proxy.garbled.append((self.command, path))
                    data = data[: len(data) // 2]
                self.send_response(status)
                self.send_header("Content-Type", kind or "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _forward

        return Handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _read_body(handler: http.server.BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while size := int(handler.rfile.readline().split(b";")[0], 16):
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
        handler.rfile.readline()
        return b"".join(chunks)
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


@pytest.fixture
def proxy_factory(aimock: Any) -> Iterator[Callable[[Callable[[str, str], bool]], GarblingProxy]]:
    started: list[GarblingProxy] = []

    def start(garble: Callable[[str, str], bool]) -> GarblingProxy:
        started.append(GarblingProxy(aimock.url, garble))
        return started[-1]

    yield start
    for p in started:
        p.stop()


# -- what the SDK does, and what our client makes of it --------------------------------------------

def test_the_sdk_raises_a_bare_json_decode_error_and_our_client_retries_it(aimock, env_key) -> None:
    import openai

    from tunepipe.openai_ft.client import UnreadableAnswer, describe, fail, is_transient, make_client
    from tunepipe.openai_ft.config import settings_from_params

    garbled = {"x-aimock-chaos-malformed": "1"}
    sdk = openai.OpenAI(api_key=env_key, base_url=aimock.base_url, max_retries=2)
    with pytest.raises(json.JSONDecodeError) as bare:  # from its parser, after its retry loop
        sdk.files.list(extra_headers=garbled)
    assert not isinstance(bare.value, openai.OpenAIError) and is_transient(bare.value)
    assert len(aimock.journal(path="/v1/files")) == 1  # not retried

    settings = settings_from_params(make_params(aimock.base_url), "train")
    with pytest.raises(openai.APIConnectionError) as checked:
        make_client(settings).files.list(extra_headers=garbled)
    assert len(aimock.journal(path="/v1/files")) == 1 + 3  # retried by the SDK like a dropped connection
    assert is_transient(checked.value)
    text = describe(checked.value, settings)
    assert "the answer to GET /v1/files is not valid JSON (HTTP 200" in text and aimock.base_url in text
    with pytest.raises(UnreadableAnswer, match="listing files failed: the API's answer could not be read"):
        fail(checked.value, doing="listing files", stage="train", settings=settings)


def test_a_garbled_answer_to_create_is_checked_for_the_job_not_resent(aimock, env_key, data, make_ctx) -> None:
    """aimock's chaos answers before handling: no job came of the garbled create, so one is created next."""
    from openai_helpers import chaos_client

    http = chaos_client([{"method": "POST", "path": JOBS_PATH, "header": "x-aimock-chaos-malformed", "times": 1}])
    c = make_ctx()
    summary = train_openai(c.ctx, data["train"], None, make_params(aimock.base_url), c.out, http_client=http)
    assert summary["status"] == "succeeded"
    assert [e["response"].get("chaosAction") for e in aimock.job_creates()] == ["malformed", None]
    assert "not valid JSON" in c.log() and c.log().count("checking whether OpenAI created it anyway") == 1
    assert len(aimock.fine_tuning_jobs()) == 1


# -- the train stage under a 30 % rate ------------------------------------------------------------

@pytest.fixture
def remote(project, aimock, monkeypatch: pytest.MonkeyPatch):
    write_jsonl(project.root / "data" / "train.jsonl", [chat_example(i) for i in range(12)])
    write_jsonl(project.root / "data" / "validation.jsonl", [chat_example(i) for i in range(100, 103)])
    project.spec(SPEC)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", aimock.base_url)
    return project


RUNS = 3


def test_a_train_stage_outlasts_30_percent_garbled_answers_with_one_job_per_key(remote, aimock) -> None:
    """Three runs of the stage (three keys: seeds 1-3) with aimock answering 30 % of all requests with
    malformed JSON: each succeeds, and each key got exactly one job."""
    aimock.set_chaos(malformedRate=GARBLED_RATE)
    for seed in range(1, RUNS + 1):
        result = remote.run("run", "p.yaml", "-S", f"train.seed={seed}")
        assert result.exit_code == 0, result.output
        assert "train: fine-tuned model ft:" in result.stderr
    garbled = aimock.chaos_answers("malformed")
    assert len(garbled) >= 5, "the chaos did not strike: the test proves nothing"
    creates = aimock.job_creates_handled()
    assert len(creates) == RUNS
    assert sorted(c["body"]["seed"] for c in creates) == list(range(1, RUNS + 1))
    assert len({c["body"]["metadata"]["tunepipe_key"] for c in creates}) == RUNS
    aimock.clear_chaos()
    assert len(aimock.fine_tuning_jobs()) == RUNS


def test_answers_garbled_after_the_job_was_created_still_make_one_job(aimock, env_key, data, make_ctx,
                                                                      proxy_factory) -> None:
    """Through a proxy that garbles answers the emulator already acted on: the first create answer
    (the job exists, its id is lost) and 30 % of everything else (seeded)."""
    rng = random.Random(12)
    creates = {"n": 0}

    def garble(method: str, path: str) -> bool:
        if method == "POST" and path == JOBS_PATH:
            creates["n"] += 1
            return creates["n"] == 1
        return rng.random() < GARBLED_RATE

    proxy = proxy_factory(garble)
    c = make_ctx()
    summary = train_openai(c.ctx, data["train"], data["validation"], make_params(proxy.base_url), c.out)
    assert summary["status"] == "succeeded"
    assert ("POST", JOBS_PATH) in proxy.garbled and len(proxy.garbled) >= 3
    assert "exists although its create request's answer was lost" in c.log()
    assert len(aimock.job_creates_handled()) == 1 and len(aimock.fine_tuning_jobs()) == 1


# -- chat completions (evaluate, judge) -------------------------------------------------------------

def test_chat_completions_outlast_30_percent_garbled_answers(aimock, env_key) -> None:
    from tunepipe.evaluation.examples import Example
    from tunepipe.openai_ft.chat import Caller, Endpoint, chat_request, complete_all
    from tunepipe.replies import Decoding, Reply

    questions = [f"What is {i} plus {i}?" for i in range(24)]  # 0.7 ** 24: chaos strikes all but surely
    aimock.set_fixtures([{"match": {"userMessage": q}, "response": {"content": f"{2 * i}, obviously."}}
                         for i, q in enumerate(questions)])
    aimock.set_chaos(malformedRate=GARBLED_RATE)
    endpoint = Endpoint(base_url=aimock.base_url, max_retries=5)
    examples = [Example(i, i + 1, [{"role": "user", "content": q}], "") for i, q in enumerate(questions)]
    replies: dict[int, Reply] = {}
    complete_all(Caller(endpoint.client(), endpoint, "evaluate", lambda: False), endpoint,
                 [(ex.index, chat_request(ex.as_prompt(), MODEL, Decoding(max_new_tokens=16, seed=1))) for ex in examples],
                 stage="evaluate", doing="asking the model", done=replies.__setitem__)
    assert {i: r.text for i, r in replies.items()} == {i: f"{2 * i}, obviously." for i in range(len(questions))}
    assert aimock.chaos_answers("malformed"), "the chaos did not strike: the test proves nothing"
    assert sum(r.retries for r in replies.values()) == len(aimock.chaos_answers("malformed"))
