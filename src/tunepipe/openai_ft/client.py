"""The API key, the SDK client, and what an API error means for the user.

The key is read from the environment variable the stage names (``openai.api_key_env``) and handed
to the SDK only: it never goes into a message, a log line, a file or a summary. Messages quoted
from the API pass through :func:`scrub` (the key's value replaced by the variable's name), so even an
API that echoed a key back could not leak it through us.

Retries: the SDK retries 408/409/429/5xx and dropped connections itself (``MAX_RETRIES`` times,
0.5-8 s back-off, honouring ``Retry-After``). Polling adds its own retry on top (see
:mod:`tunepipe.openai_ft.jobs`); creating a job does not use the SDK's retries (see there why).

Garbled answers: a 2xx answer whose JSON does not parse (cut short by a proxy, a server bug) makes
the SDK raise a bare ``json.JSONDecodeError`` from its parser, after its retry loop and outside
``openai.OpenAIError``, so nothing retried it. The clients made here check such a body as it arrives
(:func:`check_json`) and raise ``httpx2.DecodingError``, a transport error: the SDK retries it like a
dropped connection, then raises ``APIConnectionError`` from it. So it is transient everywhere
(:func:`is_transient`), and a garbled answer to the create call, made with the SDK's retries off,
goes through ``create_job``'s look-up (did OpenAI create the job anyway?) like any lost answer.
A step that looks before it acts may also be run again when its answers stay garbled
(:class:`UnreadableAnswer`, :func:`again_if_unreadable`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import urlsplit

from tunepipe.errors import StageFailed, UserError
from tunepipe.openai_ft.config import OpenAISettings
from tunepipe.redact import redact

if TYPE_CHECKING:
    import openai

MAX_RETRIES = 2
TIMEOUT_S = 120.0  # per request: a hung connection must not block Ctrl-C for the SDK's default 10 minutes
POLL_TIMEOUT_S = 30.0  # per status check or events page while following a job
CONNECT_TIMEOUT_S = 10.0
UPLOAD_TIMEOUT_S = 1800.0  # a 512 MB file over a slow link
STEP_ATTEMPTS = 4  # runs of a look-before-you-act step whose answers stay garbled (again_if_unreadable)
STEP_WAIT_S = 2.0  # before the second run of such a step; doubled each time
KEYS_URL = "https://platform.openai.com/api-keys"

T = TypeVar("T")


class UnreadableAnswer(StageFailed):
    """A step failed because the API's answers kept arriving garbled, after the SDK's retries. The
    server is up and answering, so a step that is safe to repeat is worth running again."""


def api_key(settings: OpenAISettings) -> str:
    """The API key from the environment, or a UserError that says how to set it."""
    env = settings.api_key_env
    value = os.environ.get(env, "")
    if not value.strip():
        raise UserError(f"the OpenAI backend needs an API key in the environment variable {env}, which is "
                        f"{'empty' if env in os.environ else 'not set'}: create a key at {KEYS_URL} and "
                        f"`export {env}=...` in the shell that runs the pipeline (or set openai.api_key_env "
                        "to the variable that holds it)")
    return value.strip()


def scrub(text: str, settings: OpenAISettings | None = None) -> str:
    """``text`` without the API key (nor any other secret of the environment)."""
    if settings is not None:
        key = os.environ.get(settings.api_key_env, "").strip()
        if key:
            text = text.replace(key, f"<{settings.api_key_env}>")
    return redact(text)


def base_url(settings: OpenAISettings) -> str | None:
    """The API base URL: the stage's, else OPENAI_BASE_URL, else None (the SDK's default)."""
    return settings.base_url or os.environ.get("OPENAI_BASE_URL") or None


def endpoint_label(settings: OpenAISettings) -> str:
    """Where requests go, for logs: scheme, host and path, never credentials in the URL."""
    url = base_url(settings)
    if not url:
        return "api.openai.com (the SDK's default)"
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def make_client(settings: OpenAISettings, *, http_client: Any = None, max_retries: int = MAX_RETRIES) -> openai.OpenAI:
    """An SDK client for the stage's key and endpoint. ``http_client``: an ``openai.DefaultHttpxClient``
    of the caller's (tests add fault-injection headers through one; proxies could too). Either way its
    answers go through :func:`check_json` (the hook is added to the caller's client)."""
    import openai

    kwargs: dict[str, Any] = {"api_key": api_key(settings), "max_retries": max_retries,
                              "timeout": openai.Timeout(TIMEOUT_S, connect=CONNECT_TIMEOUT_S)}
    url = base_url(settings)
    if url:
        kwargs["base_url"] = url
    kwargs["http_client"] = with_json_check(http_client if http_client is not None else openai.DefaultHttpxClient())
    return openai.OpenAI(**kwargs)


def with_json_check(http_client: Any) -> Any:
    """``http_client`` with :func:`check_json` among its response hooks (added once)."""
    hooks = http_client.event_hooks
    if check_json not in hooks["response"]:
        http_client.event_hooks = {**hooks, "response": [*hooks["response"], check_json]}
    return http_client


def check_json(response: Any) -> None:
    """Response hook: a 2xx answer the SDK would parse as JSON whose body does not parse raises
    ``httpx2.DecodingError``, which the SDK retries like a dropped connection (a bare JSONDecodeError
    from its parser is retried by no one). Binary downloads and event streams are left alone."""
    import httpx2

    kind = response.headers.get("content-type", "").split(";")[0].strip()
    if not 200 <= response.status_code < 300 or response.status_code == 204 or not kind.endswith("json"):
        return
    if response.request.headers.get("accept", "application/json") != "application/json":
        return  # files.content asks for application/binary: its bytes are returned, not parsed
    body = response.read()
    try:
        json.loads(body)
    except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
        request = response.request
        raise httpx2.DecodingError(f"the answer to {request.method} {request.url.path} is not valid JSON (HTTP "
                                   f"{response.status_code}, {len(body)} bytes)", request=request) from None


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying later: rate limit, server error, timeout, dropped connection, an
    answer that arrived garbled."""
    import openai

    if isinstance(exc, (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)):
        return True
    return is_unreadable(exc) or (isinstance(exc, openai.APIStatusError) and exc.status_code in (408, 409))


def is_unreadable(exc: BaseException) -> bool:
    """An answer that arrived but could not be read, however it surfaced: through :func:`check_json`
    (after the SDK's retries), from the SDK's own parser (a client without the check), or as an
    answer of the wrong shape (``APIResponseValidationError``)."""
    import httpx2
    import openai

    if isinstance(exc, (json.JSONDecodeError, openai.APIResponseValidationError)):
        return True
    return isinstance(exc, openai.APIConnectionError) and isinstance(exc.__cause__, httpx2.DecodingError)


def describe(exc: BaseException, settings: OpenAISettings | None = None) -> str:
    """One line for an SDK error: status, code and the API's own message and param (key scrubbed)."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        message = body.get("message") if isinstance(body.get("message"), str) else None
        parts = [f"HTTP {exc.status_code}"]
        if exc.code:
            parts.append(str(exc.code))
        text = " ".join(parts) + f": {message or exc.message}"
        if exc.param:
            text += f" (param: {exc.param})"
        return scrub(text, settings)
    if isinstance(exc, openai.APITimeoutError):
        return "the request timed out"
    if is_unreadable(exc):
        return scrub(f"the API's answer could not be read: {_unreadable_detail(exc)}; garbled on the way from "
                     f"{endpoint_label(settings)} (a proxy?) or by the server", settings)
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        return scrub(f"could not reach the API at {endpoint_label(settings)} "
                     f"({type(cause).__name__ if cause else 'connection error'}): check the network, or "
                     "openai.base_url / OPENAI_BASE_URL", settings)
    return scrub(f"{type(exc).__name__}: {exc}", settings)


def fail(exc: BaseException, *, doing: str, stage: str, settings: OpenAISettings) -> NoReturn:
    """Raise what an SDK error means: a UserError for the key, permissions and rejected requests,
    else StageFailed. ``doing``: what was being done ("creating the fine-tuning job")."""
    import openai

    env = settings.api_key_env
    if isinstance(exc, openai.AuthenticationError):
        raise UserError(f"OpenAI rejected the API key in {env} (HTTP 401) while {doing}: set {env} to a valid "
                        f"key of the account to bill ({KEYS_URL}); check that it was not revoked, and that "
                        f"openai.base_url / OPENAI_BASE_URL point where the key belongs") from None
    if isinstance(exc, openai.PermissionDeniedError):
        raise UserError(f"the API key in {env} may not do this ({doing}): {describe(exc, settings)}. Check the "
                        "key's project permissions and that the account may fine-tune this model") from None
    if isinstance(exc, (openai.BadRequestError, openai.UnprocessableEntityError)):
        raise UserError(f"OpenAI refused the request while {doing}: {describe(exc, settings)}. Fix the "
                        "parameter it names in the train stage (or the data) and run again") from None
    if isinstance(exc, openai.NotFoundError):
        raise UserError(f"OpenAI answered 404 while {doing}: {describe(exc, settings)}. Check the model name, "
                        f"that openai.base_url / OPENAI_BASE_URL point at the OpenAI API, and that the key in {env} "
                        "belongs to the project that owns the job and files") from None
    if is_unreadable(exc):
        raise UnreadableAnswer(stage, f"{doing} failed: {describe(exc, settings)}") from None
    raise StageFailed(stage, f"{doing} failed: {describe(exc, settings)}") from None


def _unreadable_detail(exc: BaseException) -> str:
    """What was wrong with an answer :func:`is_unreadable` says could not be read."""
    import openai

    if isinstance(exc, json.JSONDecodeError):
        return f"it is not valid JSON ({exc.msg})"
    if isinstance(exc, openai.APIResponseValidationError):
        return f"HTTP {exc.status_code}, but not the shape the API documents"
    return str(exc.__cause__)


def again_if_unreadable(step: Callable[[], T], *, log: Any, sleep: Callable[[float], None],
                        attempts: int = STEP_ATTEMPTS) -> T:
    """``step()``, run again from the top (up to ``attempts`` times in all, waiting 2 s, 4 s, ...) when it
    fails with :class:`UnreadableAnswer`. Only for steps safe to repeat, which look before they act
    (find or create the job: a repeat finds what the first run uploaded or created)."""
    wait = STEP_WAIT_S
    for attempt in range(1, attempts + 1):
        try:
            return step()
        except UnreadableAnswer as e:
            if attempt == attempts:
                raise
            log.warning("%s (attempt %d of %d): trying again in %.0f s", e, attempt, attempts, wait)
            sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")
