"""The ASGI app: OpenAI's ``/v1/models`` and ``/v1/chat/completions`` (plain and streamed) over one
:class:`~tunepipe.replies.Replier`, and ``/health``.

A request is checked (:mod:`tunepipe.serve.openai_api`), measured against the model's context when
the replier can count tokens (:class:`Measures`), then queued (:class:`~tunepipe.serve.batcher.Batcher`).
Every error is answered in OpenAI's error shape; a failure of the model is a 500 whose message says
what failed, never a traceback (that goes to the server's log).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tunepipe.errors import TunepipeError
from tunepipe.replies import Decoding, Replier, Reply
from tunepipe.serve import openai_api as api
from tunepipe.serve.batcher import Batcher, in_new_thread
from tunepipe.serve.stops import StopScan, cut

log = logging.getLogger("tunepipe.serve")
MAX_BODY = 8 * 2**20  # bytes; a chat request is far smaller


@runtime_checkable
class Measures(Protocol):
    """Optional for a replier: how many tokens a prompt takes and how many the model holds (prompt
    and reply), so that a prompt that does not fit is refused instead of cut (the local replier)."""

    def prompt_tokens(self, prompt: Any) -> int:
        ...

    def context_length(self) -> int | None:
        ...


@dataclass
class Served:
    """One model behind the app: the replier, the id clients name it by, its queue.
    ``max_tokens``: the reply length when a request does not say (less when the context is short)."""

    replier: Replier
    model_id: str
    batcher: Batcher
    max_tokens: int = 512
    created: int = field(default_factory=lambda: int(time.time()))
    _context: list[int | None] = field(default_factory=list)  # [] until asked

    def warm(self) -> None:
        """Load the model now (a server's start, not its first request); its context is kept.
        On a thread of its own like every model call (see :mod:`tunepipe.serve.batcher`)."""
        if isinstance(self.replier, Measures) and not self._context:
            self._context.append(in_new_thread(self.replier.context_length).result())

    async def context(self) -> int | None:
        if not isinstance(self.replier, Measures):
            return None
        if not self._context:
            value = await self.batcher.call(self.replier.context_length)
            self._context[:] = [value]
        return self._context[0]

    async def fit(self, req: api.ChatRequest) -> tuple[Decoding, int | None]:
        """The request's decoding and prompt tokens; a 400 ``context_length_exceeded`` when prompt and
        reply do not fit the model's context."""
        if not isinstance(self.replier, Measures):
            return req.decoding(req.max_tokens or self.max_tokens), None
        try:
            n = await run_in_threadpool(self.replier.prompt_tokens, req.prompt)
        except TunepipeError as e:  # the chat template cannot render these messages
            raise api.ApiError(400, str(e), param="messages", code="invalid_value") from None
        limit = await self.context()
        wanted = req.max_tokens or self.max_tokens
        if limit is not None and req.max_tokens is None:
            wanted = max(1, min(wanted, limit - n))
        if limit is not None and n + wanted > limit:
            raise api.ApiError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                               f"{n + wanted} tokens ({n} in the messages, {wanted} in the completion). Please reduce "
                               "the length of the messages or completion.", param="messages",
                               code="context_length_exceeded")
        return req.decoding(wanted), n


def make_app(replier: Replier, model_id: str, *, max_batch: int = 8, max_tokens: int = 512,
             gather_s: float = 0.01) -> Starlette:
    """The app serving ``replier`` as model ``model_id``. ``max_batch``: prompts generated together;
    ``max_tokens``: the reply length when a request gives none; ``gather_s``: how long an idle
    server waits for requests sent together before it starts generating."""
    served = Served(replier, model_id, Batcher(replier, max_batch, gather_s), max_tokens)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await served.batcher.close()

    routes = [Route("/health", health), Route("/v1/models", models), Route("/v1/models/{name:path}", model),
              Route("/v1/chat/completions", chat_completions, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.served = served
    return app


def served_by(request: Request) -> Served:
    return request.app.state.served


# --- endpoints -----------------------------------------------------------------------------------

async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "model": served_by(request).model_id})


async def models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [_model(served_by(request))]})


async def model(request: Request) -> Response:
    served = served_by(request)
    if request.path_params["name"] != served.model_id:
        return _error(_no_model(request.path_params["name"], served))
    return JSONResponse(_model(served))


async def chat_completions(request: Request) -> Response:
    served = served_by(request)
    try:
        req = api.parse_chat(await _json(request))
        if req.model != served.model_id:
            raise _no_model(req.model, served)
        decoding, prompt_tokens = await served.fit(req)
        if req.stream:
            return StreamingResponse(_events(served, req, decoding, prompt_tokens), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        reply = await served.batcher.reply(req.prompt, decoding)
    except api.ApiError as e:
        return _error(e)
    except Exception as e:  # noqa: BLE001 - the model failed: a 500 that says so
        return _error(_failed(e))
    text, stopped = cut(reply.text, req.stop)
    finish = "stop" if stopped else api.finish_reason(reply.finish)
    return JSONResponse(api.completion(api.completion_id(), served.model_id, text, finish,
                                       api.usage(reply.prompt_tokens, reply.completion_tokens)))


async def _events(served: Served, req: api.ChatRequest, decoding: Decoding,
                  prompt_tokens: int | None) -> AsyncIterator[str]:
    """Server-sent events: a first chunk with the role, one per piece, one with the finish reason,
    the usage chunk when asked, ``[DONE]``. A failure after the start is an error event (the SDK
    raises it) and no ``[DONE]``."""
    cid, created, model_id = api.completion_id(), int(time.time()), served.model_id
    usage_too = req.include_usage

    def event(delta: dict[str, Any], finish: str | None = None) -> str:
        return _sse(api.chunk(cid, model_id, created, delta, finish, with_usage=usage_too))

    yield event({"role": "assistant", "content": ""})
    scan, reply = StopScan(req.stop), None
    try:
        async with aclosing(served.batcher.stream(req.prompt, decoding)) as pieces:  # a stop ends generation
            async for item in pieces:
                if isinstance(item, Reply):
                    reply = item
                elif text := scan.feed(item):
                    yield event({"content": text})
                if scan.stopped:
                    break
    except Exception as e:  # noqa: BLE001 - after a 200 the error goes in the stream
        yield _sse(_failed(e).body())
        return
    if rest := scan.flush():
        yield event({"content": rest})
    finish = "stop" if scan.stopped or reply is None else api.finish_reason(reply.finish)
    yield event({}, finish)
    if usage_too:
        counted = reply.prompt_tokens if reply is not None else prompt_tokens or 0
        tokens = api.usage(counted, reply.completion_tokens if reply is not None else 0)
        yield _sse(api.chunk(cid, model_id, created, {}, tokens=tokens, with_usage=True))
    yield "data: [DONE]\n\n"


# --- errors --------------------------------------------------------------------------------------

async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's 404 and 405 (and any other HTTP error) in OpenAI's shape."""
    status = getattr(exc, "status_code", 500)
    where = f"{request.method} {request.url.path}"
    if status == 404:
        message = f"Unknown request URL: {where}. This server has /v1/chat/completions, /v1/models and /health."
        code: str | None = "unknown_url"
    elif status == 405:
        message = f"Method not allowed: {where}. /v1/chat/completions takes POST; the others GET."
        code = "method_not_allowed"
    else:
        message, code = f"{where}: {getattr(exc, 'detail', '') or 'HTTP error'}", None
    headers = getattr(exc, "headers", None)
    return _error(api.ApiError(status, message, code=code), headers)


async def server_error(request: Request, exc: Exception) -> Response:
    """Whatever escaped a handler: a 500 with its message; the traceback goes to the log."""
    return _error(_failed(exc))


def _failed(e: Exception) -> api.ApiError:
    log.error("generation failed", exc_info=e)
    return api.ApiError(500, f"the model failed to reply: {type(e).__name__}: {e}", type="server_error")


def _no_model(name: str, served: Served) -> api.ApiError:
    return api.ApiError(404, f"The model `{name}` does not exist or you do not have access to it. This server "
                        f"serves `{served.model_id}`.", param="model", code="model_not_found")


def _error(e: api.ApiError, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


# --- helpers -------------------------------------------------------------------------------------

async def _json(request: Request) -> Any:
    """The body as JSON: 413 past MAX_BODY bytes, 400 when it is not JSON."""
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > MAX_BODY:
            raise api.ApiError(413, f"the request body is over {MAX_BODY // 2**20} MiB", code="request_too_large")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:
        raise api.ApiError(400, f"We could not parse the JSON body of your request ({type(e).__name__}: {e}). "
                           "The body must be a JSON object, sent with Content-Type: application/json.") from None


def _model(served: Served) -> dict[str, Any]:
    return {"id": served.model_id, "object": "model", "created": served.created, "owned_by": "tunepipe"}


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
