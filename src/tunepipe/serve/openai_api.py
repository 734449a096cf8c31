"""OpenAI's chat-completions wire format: a request body read into a prompt and its decoding, and
answers, chunks and errors written in the shapes the official SDK parses.

Requests are checked as OpenAI checks them, with its error types and codes (``invalid_type``,
``invalid_value``, ``model_not_found``, ``context_length_exceeded``), so a client sees the error it
would see from OpenAI. Parameters that would change the answer but are not served (``n`` > 1,
``tools``, ``logprobs``, a ``response_format`` other than text) are refused, not ignored; the rest
of OpenAI's parameters (``user``, penalties, ...) are accepted and have no effect.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tunepipe.replies import Decoding, Prompt

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOPS = 4
SEEDS = (-2**63, 2**64 - 1)  # what torch.manual_seed takes


class ApiError(Exception):
    """An error answer: HTTP ``status`` and OpenAI's ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    """A checked ``POST /v1/chat/completions``. ``max_tokens`` None: as many as the server allows."""

    model: str
    prompt: Prompt
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool

    def decoding(self, max_new_tokens: int) -> Decoding:
        return Decoding(max_new_tokens, self.temperature, self.top_p, self.seed)


def parse_chat(body: Any) -> ChatRequest:
    """``body`` (parsed JSON) checked and read; an :class:`ApiError` (400) names the first problem.
    OpenAI's defaults: ``temperature`` 1 (sampling), ``top_p`` 1; ``seed`` defaults to 0."""
    if not isinstance(body, Mapping):
        raise ApiError(400, f"the request body must be a JSON object, not {_kind(body)}")
    model = _typed(body, "model", str, "a string", required=True)
    refuse_unserved(body)
    stream = bool(_typed(body, "stream", bool, "a boolean"))
    options = _typed(body, "stream_options", Mapping, "an object")
    if options is not None and not stream:
        raise ApiError(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                       param="stream_options", code="invalid_value")
    include_usage = bool(_typed(options or {}, "include_usage", bool, "a boolean", name="stream_options.include_usage"))
    return ChatRequest(model, Prompt(messages(body.get("messages")), where="the request"), max_tokens(body),
                       _number(body, "temperature", 1.0, 0.0, 2.0), _number(body, "top_p", 1.0, 0.0, 1.0),
                       _seed(body), stops(body.get("stop")), stream, include_usage)


def refuse_unserved(body: Mapping[str, Any]) -> None:
    n = _typed(body, "n", int, "an integer")
    if n is not None and n != 1:
        raise ApiError(400, f"n is {n}: this server gives one choice per request (n: 1); send {n} requests "
                       "(with different seeds) for more", param="n", code="invalid_value")
    for name in ("tools", "functions"):
        if body.get(name):
            raise ApiError(400, f"'{name}' is not supported by this server (the model's replies are text; tool "
                           "calls are not parsed)", param=name, code="unsupported_parameter")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise ApiError(400, "'logprobs' is not supported by this server", param="logprobs",
                       code="unsupported_parameter")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, Mapping) and fmt.get("type") == "text"):
        raise ApiError(400, "'response_format' other than {\"type\": \"text\"} is not supported by this server",
                       param="response_format", code="unsupported_parameter")


def messages(value: Any) -> list[dict[str, Any]]:
    """The chat messages as templates take them: text content as a string, ``developer`` read as
    ``system`` (chat templates know no developer role)."""
    if value is None:
        raise ApiError(400, "Missing required parameter: 'messages'.", param="messages",
                       code="missing_required_parameter")
    if not isinstance(value, list):
        raise _type_error("messages", "an array", value)
    if not value:
        raise ApiError(400, "Invalid 'messages': empty array. Expected an array with minimum length 1.",
                       param="messages", code="empty_array")
    return [_message(m, f"messages[{i}]") for i, m in enumerate(value)]


def _message(m: Any, where: str) -> dict[str, Any]:
    if not isinstance(m, Mapping):
        raise _type_error(where, "an object", m)
    role = m.get("role")
    if role is None:
        raise ApiError(400, f"Missing required parameter: '{where}.role'.", param=f"{where}.role",
                       code="missing_required_parameter")
    if role not in ROLES:
        raise ApiError(400, f"Invalid value: {role!r}. Supported values are: {', '.join(repr(r) for r in ROLES)}.",
                       param=f"{where}.role", code="invalid_value")
    out = {k: v for k, v in m.items() if k in ("name", "tool_calls", "tool_call_id")}
    out["role"] = "system" if role == "developer" else role
    content = m.get("content")
    if content is None and not (role == "assistant" and m.get("tool_calls")):
        raise ApiError(400, f"Missing required parameter: '{where}.content'.", param=f"{where}.content",
                       code="missing_required_parameter")
    out["content"] = _text(content, f"{where}.content") if content is not None else None
    return out


def _text(content: Any, where: str) -> str:
    """A message's text: a string, or OpenAI's content parts, which must all be text here."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _type_error(where, "a string or an array of text parts", content)
    parts = []
    for i, part in enumerate(content):
        if not (isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            kind = part.get("type") if isinstance(part, Mapping) else _kind(part)
            raise ApiError(400, f"Invalid content part {where}[{i}] ({kind}): this model reads text only "
                           "({\"type\": \"text\", \"text\": \"...\"})", param=f"{where}[{i}]", code="invalid_value")
        parts.append(part["text"])
    return "".join(parts)


def max_tokens(body: Mapping[str, Any]) -> int | None:
    """``max_completion_tokens`` (OpenAI's newer name) or else ``max_tokens``; at least 1."""
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = _typed(body, name, int, "an integer")
    if value is not None and value < 1:
        raise ApiError(400, f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got "
                       f"{value} instead.", param=name, code="integer_below_min_value")
    return value


def stops(value: Any) -> tuple[str, ...]:
    """``stop``: a string or up to 4 strings; the reply ends before the first one it contains."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise _type_error("stop", "a string or an array of strings", value)
    if len(items) > MAX_STOPS:
        raise ApiError(400, f"Invalid 'stop': array too long. Expected an array with maximum length {MAX_STOPS}, "
                       f"but got an array with length {len(items)} instead.", param="stop",
                       code="array_above_max_length")
    return tuple(s for s in items if s)


def _number(body: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = _typed(body, name, (int, float), "a number")
    if value is None:
        return default
    if not (math.isfinite(value) and low <= value <= high):
        raise ApiError(400, f"Invalid '{name}': {value} is not between {low:g} and {high:g}.", param=name,
                       code="invalid_value")
    return float(value)


def _seed(body: Mapping[str, Any]) -> int:
    value = _typed(body, "seed", int, "an integer")
    if value is not None and not SEEDS[0] <= value <= SEEDS[1]:
        raise ApiError(400, f"Invalid 'seed': {value} is out of range (a 64-bit integer).", param="seed",
                       code="invalid_value")
    return value or 0


def _typed(body: Mapping[str, Any], key: str, types: Any, expected: str, *, required: bool = False,
           name: str | None = None) -> Any:
    """``body[key]`` when it is of ``types`` (booleans are not numbers), None when absent or null."""
    value = body.get(key)
    name = name or key
    if value is None:
        if required:
            raise ApiError(400, f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
        return None
    if not isinstance(value, types) or (isinstance(value, bool) and types is not bool):
        raise _type_error(name, expected, value)
    return value


def _type_error(name: str, expected: str, value: Any) -> ApiError:
    return ApiError(400, f"Invalid type for '{name}': expected {expected}, but got {_kind(value)} instead.",
                    param=name, code="invalid_type")


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a decimal", str: "a string", list: "an array",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# --- answers -------------------------------------------------------------------------------------

def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(cid: str, model: str, text: str, finish: str, tokens: dict[str, int]) -> dict[str, Any]:
    """A ``chat.completion`` with one choice."""
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": finish}],
            "usage": tokens, "system_fingerprint": None}


def chunk(cid: str, model: str, created: int, delta: dict[str, Any], finish: str | None = None, *,
          tokens: dict[str, int] | None = None, with_usage: bool = False) -> dict[str, Any]:
    """A ``chat.completion.chunk``; with ``tokens`` the usage chunk (no choices) that ends a stream
    asked with ``stream_options.include_usage`` (then every chunk has ``usage``: null)."""
    choices = [] if tokens is not None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices,
           "system_fingerprint": None}
    if with_usage:
        out["usage"] = tokens
    return out


def finish_reason(finish: str) -> str:
    """OpenAI's finish_reason for a :class:`~tunepipe.replies.Reply`'s ``finish``."""
    return "length" if finish == "length" else "stop"
