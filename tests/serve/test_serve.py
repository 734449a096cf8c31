"""The OpenAI-compatible server, for real: uvicorn in a thread on a free port, a LocalReplier on a
tiny trained model behind it, and the official ``openai`` SDK (or plain HTTP) as the client."""

from __future__ import annotations

import http.client
import json
import random
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / "evaluation"))  # for eval_helpers
from eval_helpers import QA, SYSTEM, local_artifact, make_ctx  # noqa: E402

from tunepipe import modelref  # noqa: E402
from tunepipe.errors import UserError  # noqa: E402
from tunepipe.replies import Decoding, Prompt  # noqa: E402

MODEL = "marv-tiny"


class Running:
    """A server on 127.0.0.1 in a thread: its port, a client, and plain HTTP to it."""

    def __init__(self, app: Any) -> None:
        from tunepipe.serve import bind
        from tunepipe.serve.server import server

        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.server = server(app, log="warning")
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="unused", max_retries=0,
                                    timeout=60)

    def http(self, method: str, path: str, body: bytes | str | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read().decode()
            return resp.status, json.loads(data) if "json" in resp.getheader("Content-Type", "") else data
        finally:
            conn.close()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def replier_for(folder: Path, weights: Path, run: Path) -> Any:
    from tunepipe.hf.replier import LocalReplier

    ref = modelref.read(local_artifact(folder, weights), name="train.model")
    return LocalReplier(make_ctx(run), ref, base=False, settings={"device": "cpu", "threads": 1, "batch_size": 8})


@pytest.fixture(scope="module")
def weights(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny weights with large random values: greedy replies of varied words, not one token again."""
    from tiny_model import build_tiny_model
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model), local_files_only=True)
    return build_tiny_model(tmp_path_factory.mktemp("varied"), tok=tok, seed=3, initializer_range=0.5)


@pytest.fixture(scope="module")
def replier(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("serve")
    return replier_for(root / "model", weights, root / "run")


@pytest.fixture(scope="module")
def served(replier: Any) -> Iterator[Running]:
    from tunepipe.serve import make_app

    running = Running(make_app(replier, MODEL, max_batch=8))
    yield running
    running.stop()


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def own_reply(replier: Any, messages: list[dict[str, str]], max_tokens: int) -> Any:
    (reply,) = replier.reply([Prompt(messages)], Decoding(max_tokens))
    return reply


def test_the_one_model_is_listed_and_the_server_is_healthy(served: Running) -> None:
    assert [m.id for m in served.client.models.list()] == [MODEL]
    assert served.client.models.retrieve(MODEL).owned_by == "tunepipe"
    with pytest.raises(openai.NotFoundError, match="model_not_found|does not exist"):
        served.client.models.retrieve("gpt-4o")
    assert served.http("GET", "/health") == (200, {"status": "ok", "model": MODEL})


def test_a_greedy_answer_is_the_repliers_own_reply(served: Running, replier: Any) -> None:
    messages = chat(QA[0][0])
    answer = served.client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0)
    own = own_reply(replier, messages, 12)
    assert answer.object == "chat.completion" and answer.model == MODEL and answer.id.startswith("chatcmpl-")
    (choice,) = answer.choices
    assert choice.message.role == "assistant" and choice.message.content == own.text and own.text
    assert choice.finish_reason == ("length" if own.finish == "length" else "stop")
    assert answer.usage.prompt_tokens == own.prompt_tokens == replier.prompt_tokens(Prompt(messages))
    assert answer.usage.completion_tokens == own.completion_tokens <= 12
    assert answer.usage.total_tokens == own.prompt_tokens + own.completion_tokens


def test_a_stream_joins_to_the_plain_answer_and_ends_with_a_finish_reason(served: Running) -> None:
    messages = chat(QA[1][0])
    plain = served.client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=16,
                                                  temperature=0)
    chunks = list(served.client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=16,
                                                        temperature=0, stream=True,
                                                        stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 3  # pieces, not one block at the end
    assert "".join(pieces) == plain.choices[0].message.content
    last = [c for c in chunks if c.choices][-1]
    assert last.choices[0].finish_reason == plain.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage


def test_a_stop_sequence_ends_the_answer_before_it_plain_and_streamed(served: Running) -> None:
    messages = chat(QA[2][0])
    full = served.client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0)
    text = full.choices[0].message.content
    stop = text.split()[2]  # a word in the middle
    plain = served.client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0,
                                                  stop=[stop, "never in it"])
    assert plain.choices[0].message.content == text[:text.find(stop)]
    assert plain.choices[0].finish_reason == "stop"
    streamed = list(served.client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16,
                                                          temperature=0, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == text[:text.find(stop)]
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_concurrent_requests_are_batched_and_answered_as_one_at_a_time(served: Running, replier: Any) -> None:
    questions = [q for q, _ in QA]
    expected = [own_reply(replier, chat(q), 10).text for q in questions]
    notes = replier.ctx.notes.lines
    notes.clear()
    start = threading.Barrier(len(questions))

    def ask(q: str) -> str:
        start.wait()
        answer = served.client.chat.completions.create(model=MODEL, messages=chat(q), max_tokens=10, temperature=0)
        return answer.choices[0].message.content

    with ThreadPoolExecutor(len(questions)) as pool:
        answers = list(pool.map(ask, questions))
    assert answers == expected
    batches = [int(n.split("/")[1].split()[0]) for n in notes if n.startswith("tuned ") and n.endswith(" replies")]
    assert sum(batches) == len(questions) and max(batches) > 1  # fewer reply() calls than requests


def test_plain_and_streamed_requests_at_once_are_all_answered(served: Running) -> None:
    def plain(i: int) -> str:
        return served.client.chat.completions.create(model=MODEL, messages=chat(QA[i][0]), max_tokens=8,
                                                     temperature=0).choices[0].message.content

    def streamed(i: int) -> str:
        chunks = served.client.chat.completions.create(model=MODEL, messages=chat(QA[i][0]), max_tokens=8,
                                                       temperature=0, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks)

    with ThreadPoolExecutor(8) as pool:
        plains = list(pool.map(plain, range(4)))
        both = list(pool.map(lambda i: (plain(i), streamed(i)), range(4)))
    assert [p for p, _ in both] == plains and [s for _, s in both] == plains


def test_closing_a_stream_early_stops_generation(served: Running) -> None:
    stream = served.client.chat.completions.create(model=MODEL, messages=chat("Tell me everything."),
                                                   max_tokens=1800, temperature=0, stream=True)
    first = [next(stream) for _ in range(3)]
    assert first[-1].choices[0].delta.content
    stream.close()
    t0 = time.monotonic()
    answer = served.client.chat.completions.create(model=MODEL, messages=chat(QA[3][0]), max_tokens=4,
                                                   temperature=0)
    assert answer.choices[0].message.content and time.monotonic() - t0 < 3  # the model was let go
    deadline = time.monotonic() + 5
    while any(t.name == "tunepipe-stream" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "tunepipe-stream" for t in threading.enumerate())


@pytest.mark.parametrize("request_, error, code, words", [
    ({"model": "gpt-4o"}, openai.NotFoundError, "model_not_found", "`gpt-4o` does not exist"),
    ({"messages": []}, openai.BadRequestError, "empty_array", "'messages'"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, openai.BadRequestError, "invalid_value", "'wizard'"),
    ({"messages": [{"role": "user"}]}, openai.BadRequestError, "missing_required_parameter", "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     openai.BadRequestError, "invalid_value", "text only"),
    ({"n": 2}, openai.BadRequestError, "invalid_value", "one choice per request"),
    ({"max_tokens": 4000}, openai.BadRequestError, "context_length_exceeded", "maximum context length is 2048"),
    ({"messages": [{"role": "user", "content": "word " * 3000}]}, openai.BadRequestError,
     "context_length_exceeded", "in the messages"),
    ({"max_tokens": 0}, openai.BadRequestError, "integer_below_min_value", "'max_tokens'"),
    ({"temperature": 3}, openai.BadRequestError, "invalid_value", "'temperature'"),
    ({"extra_body": {"max_tokens": "many"}}, openai.BadRequestError, "invalid_type", "expected an integer"),
    ({"stream_options": {"include_usage": True}}, openai.BadRequestError, "invalid_value", "'stream'"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, openai.BadRequestError,
     "unsupported_parameter", "'tools'"),
])
def test_a_bad_request_is_refused_in_openais_shape(served: Running, request_: dict[str, Any], error: type,
                                                   code: str, words: str) -> None:
    args = {"model": MODEL, "messages": chat("hi"), "max_tokens": 4, **request_}
    with pytest.raises(error) as caught:
        served.client.chat.completions.create(**args)
    assert caught.value.code == code and words in caught.value.message


@pytest.mark.parametrize("method, path, body, status, code", [
    ("POST", "/v1/chat/completions", "{not json", 400, None),
    ("POST", "/v1/chat/completions", "[1, 2]", 400, None),
    ("POST", "/v1/chat/completions", "", 400, None),
    ("POST", "/v1/chat/completions", "[" * 100_000 + "]" * 100_000, 400, None),
    ("POST", "/v1/chat/completions", '{"model": "marv-tiny", "messages": "hi"}', 400, "invalid_type"),
    ("POST", "/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}]}', 400,
     "missing_required_parameter"),
    ("POST", "/v1/chat/completions", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                                                 "temperature": True}), 400, "invalid_type"),
    ("GET", "/v1/chat/completions", None, 405, "method_not_allowed"),
    ("POST", "/v1/completions", "{}", 404, "unknown_url"),
    ("GET", "/", None, 404, "unknown_url"),
])
def test_wrong_paths_methods_and_bodies_get_an_error_object(served: Running, method: str, path: str,
                                                            body: str | None, status: int, code: str | None) -> None:
    got, doc = served.http(method, path, body)
    assert got == status and set(doc) == {"error"}
    assert set(doc["error"]) == {"message", "type", "param", "code"} and doc["error"]["code"] == code
    assert doc["error"]["message"] and "Traceback" not in doc["error"]["message"]


def test_no_body_crashes_the_server(served: Running) -> None:
    rng = random.Random(7)
    values: list[Any] = [None, True, -1, 0, 2**70, 1.5, float("nan"), "", "x" * 50, [], {}, [None], {"a": 1},
                         [{"role": "user"}], [{"role": "user", "content": 5}], [{"content": "hi"}]]
    keys = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "n",
            "stream", "stream_options", "tools", "logprobs", "response_format"]
    statuses = set()
    for _ in range(150):
        body: dict[str, Any] = {"model": MODEL, "messages": chat("hi"), "max_tokens": 2}
        for key in rng.sample(keys, rng.randint(1, 3)):
            body[key] = rng.choice(values)
        status, doc = served.http("POST", "/v1/chat/completions", json.dumps(body))
        statuses.add(status)
        assert status in (200, 400, 404), (body, doc)
        if status != 200:
            assert set(doc) == {"error"} and doc["error"]["message"], (body, doc)
        elif body.get("stream"):
            assert doc.endswith("data: [DONE]\n\n"), (body, doc)
        else:
            assert doc["choices"][0]["message"]["content"] is not None, (body, doc)
    assert statuses >= {400}
    assert served.http("GET", "/health")[0] == 200
    assert served.http("POST", "/v1/chat/completions", b"x" * (9 * 2**20))[0] == 413


def test_a_model_that_fails_gives_a_500_with_a_message(weights: Path, tmp_path: Path) -> None:
    from tunepipe.serve import make_app

    broken = replier_for(tmp_path / "model", weights, tmp_path / "run")
    for f in (tmp_path / "model" / "full").glob("*.safetensors"):
        f.write_bytes(b"not weights")
    running = Running(make_app(broken, MODEL))
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            running.client.chat.completions.create(model=MODEL, messages=chat("hi"), max_tokens=4)
        assert caught.value.status_code == 500 and caught.value.type == "server_error"
        assert "the model failed to reply" in caught.value.message and "Traceback" not in caught.value.message
        assert running.http("GET", "/health")[0] == 200  # still serving
    finally:
        running.stop()


def test_a_port_in_use_is_a_user_error_before_the_model_loads(weights: Path, tmp_path: Path) -> None:
    from tunepipe.serve import run_server

    other = replier_for(tmp_path / "model", weights, tmp_path / "run")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(UserError) as caught:
            run_server(other, "127.0.0.1", port, log="warning")
    assert str(caught.value).startswith(f"port {port} on 127.0.0.1 is in use") and "--port" in str(caught.value)
    assert other._model is None  # refused before loading anything
