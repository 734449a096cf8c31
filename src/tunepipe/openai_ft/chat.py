"""Chat completions from an OpenAI model, ``concurrency`` requests at a time (the OpenAI replier's
and the evaluate stage's judge's way of asking).

Retries, two layers:

* the SDK retries a rate limit (429, honouring ``Retry-After``), a server error (5xx), a timeout,
  a dropped connection or an answer that arrived garbled (not valid JSON: see
  :mod:`tunepipe.openai_ft.client`) up to ``max_retries`` times with its own back-off;
* when it gives up on such a transient error, the request waits (5 s, then 20 s, 60 s, while the
  other requests go on) and is tried again, :data:`OUTER_ATTEMPTS` times in all: a long rate-limit
  window slows an evaluation down rather than failing it.

A refused key (401), a permission error (403) or an unknown model (404) stops the stage at once (a
UserError that says what to fix). A request the API rejects for its content (400/422, e.g. a prompt
over the context window) gives that prompt an empty reply marked ``finish: error`` with the API's
message, and the others go on; when every request of a batch fails, the stage fails.

Each reply records its token usage, the latency from the first attempt to the answer, and how many
retries it took; ``seed`` is sent, so the API decodes as reproducibly as it can.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from tunepipe.errors import StageFailed
from tunepipe.replies import Decoding, Prompt, Reply

OUTER_ATTEMPTS = 4
OUTER_WAITS_S = (5.0, 20.0, 60.0)
SLICE_S = 0.1


@dataclass(frozen=True)
class Endpoint:
    """Where and how to call the API (the key itself is read from ``api_key_env`` when calling)."""

    api_key_env: str = "OPENAI_API_KEY"
    base_url: str | None = None
    concurrency: int = 4
    max_retries: int = 5

    @classmethod
    def from_params(cls, p: Mapping[str, Any]) -> Endpoint:
        return cls(p["api_key_env"], p.get("base_url"), int(p["concurrency"]), int(p["max_retries"]))

    def settings(self, model: str) -> Any:
        from tunepipe.openai_ft.config import OpenAISettings

        return OpenAISettings(model=model, api_key_env=self.api_key_env, base_url=self.base_url)

    def client(self, http_client: Any = None) -> Any:
        from tunepipe.openai_ft.client import make_client

        return make_client(self.settings("-"), http_client=http_client, max_retries=self.max_retries)

    def label(self) -> str:
        from tunepipe.openai_ft.client import endpoint_label

        return endpoint_label(self.settings("-"))


def chat_request(prompt: Prompt, model: str, decoding: Decoding) -> dict[str, Any]:
    """The chat-completions request for one prompt under ``decoding``."""
    req: dict[str, Any] = {"model": model, "messages": prompt.messages, "max_completion_tokens": decoding.max_new_tokens,
                           "temperature": decoding.temperature, "top_p": decoding.top_p, "seed": decoding.seed}
    if prompt.tools:
        req["tools"] = prompt.tools
    return req


def _reply_of(completion: Any, seconds: float, retries: int) -> Reply:
    choice = completion.choices[0] if completion.choices else None
    message = getattr(choice, "message", None)
    text = getattr(message, "content", None)
    if text is None and getattr(message, "tool_calls", None):
        text = "\n".join(f"{c.function.name}({c.function.arguments})" for c in message.tool_calls
                         if getattr(c, "function", None) is not None)
    if text is None:
        text = getattr(message, "refusal", None) or ""
    usage = getattr(completion, "usage", None)
    return Reply(text.strip(), int(getattr(usage, "prompt_tokens", 0) or 0),
                 int(getattr(usage, "completion_tokens", 0) or 0), seconds,
                 str(getattr(choice, "finish_reason", None) or "stop"), retries)


class Caller:
    """Calls the API for one request with the outer retry layer; raises what cannot be retried."""

    def __init__(self, client: Any, endpoint: Endpoint, stage: str, is_stopping: Callable[[], bool]) -> None:
        self.client, self.endpoint, self.stage = client, endpoint, stage
        self.is_stopping = is_stopping

    def __call__(self, request: Mapping[str, Any]) -> Reply:
        import openai

        from tunepipe.openai_ft.client import describe, is_transient

        started = time.monotonic()
        retries = 0
        for attempt in range(OUTER_ATTEMPTS):
            try:
                raw = self.client.chat.completions.with_raw_response.create(**request)
                retries += int(getattr(raw, "retries_taken", 0) or 0)
                return _reply_of(raw.parse(), time.monotonic() - started, retries)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
                return Reply("", latency_s=time.monotonic() - started, finish="error", retries=retries,
                             extra={"error": describe(e, self.endpoint.settings(request["model"]))})
            except Exception as e:
                if not is_transient(e) or attempt == OUTER_ATTEMPTS - 1:
                    raise
                retries += self.endpoint.max_retries + 1
                deadline = time.monotonic() + OUTER_WAITS_S[min(attempt, len(OUTER_WAITS_S) - 1)]
                while time.monotonic() < deadline and not self.is_stopping():
                    time.sleep(SLICE_S)
                if self.is_stopping():
                    raise
        raise AssertionError("unreachable")  # pragma: no cover


def complete_all(call: Callable[[dict[str, Any]], Reply], endpoint: Endpoint,
                 requests: Sequence[tuple[int, dict[str, Any]]], *, stage: str, doing: str,
                 done: Callable[[int, Reply], None], check_cancelled: Callable[[], None] = lambda: None,
                 progress: Callable[[int], None] = lambda _n: None) -> None:
    """Send ``(index, request)`` pairs through ``call`` (a :class:`Caller`, or a function around
    one), at most ``endpoint.concurrency`` at a time; ``done(index, reply)`` runs in this thread as
    each answer arrives (in completion order)."""
    from tunepipe.openai_ft.client import fail

    if not requests:
        return
    pending = list(reversed(requests))
    running: dict[Future[Reply], int] = {}
    finished = errors = 0
    first_error = ""
    pool = ThreadPoolExecutor(max_workers=max(1, endpoint.concurrency), thread_name_prefix="tunepipe-eval")
    clean = False
    try:
        while pending or running:
            while pending and len(running) < endpoint.concurrency:
                index, req = pending.pop()
                running[pool.submit(call, req)] = index
            check_cancelled()
            ready, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
            for fut in ready:
                index = running.pop(fut)
                try:
                    reply = fut.result()
                except Exception as e:
                    fail(e, doing=doing, stage=stage, settings=endpoint.settings(requests[0][1]["model"]))
                if reply.finish == "error":
                    errors += 1
                    first_error = first_error or str(reply.extra.get("error", ""))
                done(index, reply)
                finished += 1
                progress(finished)
        clean = True
    finally:
        # on an error or Ctrl-C, do not wait for requests in flight (the SDK may be sleeping on a retry)
        pool.shutdown(wait=clean, cancel_futures=True)
    if errors == len(requests):
        raise StageFailed(stage, f"{doing}: the API rejected all {errors} requests, e.g. {first_error}")
