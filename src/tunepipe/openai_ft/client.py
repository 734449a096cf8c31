"""The API key, the SDK client, and what an API error means for the user.

The key is read from the environment variable the stage names (``openai.api_key_env``) and handed
to the SDK only: it never goes into a message, a log line, a file or a summary. Messages quoted
from the API pass through :func:`scrub` (the key's value replaced by the variable's name), so even an
API that echoed a key back could not leak it through us.

Retries: the SDK retries 408/409/429/5xx and dropped connections itself (``MAX_RETRIES`` times,
0.5-8 s back-off, honouring ``Retry-After``). Polling adds its own retry on top (see
:mod:`tunepipe.openai_ft.jobs`); creating a job does not use the SDK's retries (see there why).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

from tunepipe.errors import StageFailed, UserError
from tunepipe.openai_ft.config import Settings
from tunepipe.redact import redact

if TYPE_CHECKING:
    import openai

MAX_RETRIES = 2
TIMEOUT_S = 120.0  # per request: a hung connection must not block Ctrl-C for the SDK's default 10 minutes
POLL_TIMEOUT_S = 30.0  # per status check or events page while following a job
CONNECT_TIMEOUT_S = 10.0
UPLOAD_TIMEOUT_S = 1800.0  # a 512 MB file over a slow link
KEYS_URL = "https://platform.openai.com/api-keys"


def api_key(settings: Settings) -> str:
    """The API key from the environment, or a UserError that says how to set it."""
    env = settings.api_key_env
    value = os.environ.get(env, "")
    if not value.strip():
        raise UserError(f"the OpenAI backend needs an API key in the environment variable {env}, which is "
                        f"{'empty' if env in os.environ else 'not set'}: create a key at {KEYS_URL} and "
                        f"`export {env}=...` in the shell that runs the pipeline (or set openai.api_key_env "
                        "to the variable that holds it)")
    return value.strip()


def scrub(text: str, settings: Settings | None = None) -> str:
    """``text`` without the API key (nor any other secret of the environment)."""
    if settings is not None:
        key = os.environ.get(settings.api_key_env, "").strip()
        if key:
            text = text.replace(key, f"<{settings.api_key_env}>")
    return redact(text)


def base_url(settings: Settings) -> str | None:
    """The API base URL: the stage's, else OPENAI_BASE_URL, else None (the SDK's default)."""
    return settings.base_url or os.environ.get("OPENAI_BASE_URL") or None


def endpoint_label(settings: Settings) -> str:
    """Where requests go, for logs: scheme, host and path, never credentials in the URL."""
    url = base_url(settings)
    if not url:
        return "api.openai.com (the SDK's default)"
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def make_client(settings: Settings, *, http_client: Any = None, max_retries: int = MAX_RETRIES) -> openai.OpenAI:
    """An SDK client for the stage's key and endpoint. ``http_client``: an ``openai.DefaultHttpxClient``
    of the caller's (tests add fault-injection headers through one; proxies could too)."""
    import openai

    kwargs: dict[str, Any] = {"api_key": api_key(settings), "max_retries": max_retries,
                              "timeout": openai.Timeout(TIMEOUT_S, connect=CONNECT_TIMEOUT_S)}
    url = base_url(settings)
    if url:
        kwargs["base_url"] = url
    if http_client is not None:
        kwargs["http_client"] = http_client
    return openai.OpenAI(**kwargs)


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying later: rate limit, server error, timeout, dropped connection."""
    import openai

    if isinstance(exc, (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)):
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code in (408, 409)


def describe(exc: BaseException, settings: Settings | None = None) -> str:
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
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        return scrub(f"could not reach the API at {endpoint_label(settings)} "
                     f"({type(cause).__name__ if cause else 'connection error'}): check the network, or "
                     "openai.base_url / OPENAI_BASE_URL", settings)
    return scrub(f"{type(exc).__name__}: {exc}", settings)


def fail(exc: BaseException, *, doing: str, stage: str, settings: Settings) -> NoReturn:
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
    raise StageFailed(stage, f"{doing} failed: {describe(exc, settings)}") from None
