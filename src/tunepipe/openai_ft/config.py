"""The train stage's parameters as settings for an OpenAI fine-tuning job, checked before any request.

Limits enforced here are OpenAI's documented ones (``CreateFineTuningJobRequest``): suffix 1 to 64
characters, seed 0 to 2**31-1, metadata at most 16 pairs with keys of at most 64 and values of at
most 512 characters. Keys starting with ``tunepipe_`` are reserved: the backend puts the stage name
and the stage key there to find its own job again after a crash.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tunepipe.errors import UserError

METHODS = ("supervised", "dpo")
SUFFIX_MAX = 64
SEED_MAX = 2**31 - 1
METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512
RESERVED_PREFIX = "tunepipe_"
META_STAGE = "tunepipe_stage"
META_KEY = "tunepipe_key"
KEY_CHARS = 32  # the first 32 hex digits of the stage key identify the job
DEFAULT_POLL_SECONDS = 10.0
MAX_POLL_SECONDS = 60.0


@dataclass(frozen=True)
class OpenAISettings:
    """Everything the OpenAI backend needs from the stage's parameters, validated (named apart from
    the backend contract's ``Settings``, which declares what a backend adds to ``with:``)."""

    model: str
    method: str = "supervised"
    epochs: int | str = "auto"
    batch_size: int | str = "auto"
    learning_rate_multiplier: float | str = "auto"
    beta: float | str = "auto"
    seed: int | None = None
    suffix: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    base_url: str | None = None
    max_cost_usd: float | None = None
    poll_seconds: float = DEFAULT_POLL_SECONDS
    prices: Mapping[str, float] = field(default_factory=dict)
    context_limits: Mapping[str, int] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)

    def hyperparameters(self) -> dict[str, Any]:
        """The method's hyperparameters to send; "auto" ones are left out (the API's default is auto)."""
        wanted: dict[str, Any] = {"n_epochs": self.epochs, "batch_size": self.batch_size,
                                  "learning_rate_multiplier": self.learning_rate_multiplier}
        if self.method == "dpo":
            wanted["beta"] = self.beta
        return {k: v for k, v in wanted.items() if v != "auto" and v is not None}

    def method_payload(self) -> dict[str, Any]:
        """``method`` for jobs.create: ``{"type": "dpo", "dpo": {"hyperparameters": {...}}}``."""
        hyper = self.hyperparameters()
        payload: dict[str, Any] = {"type": self.method}
        if hyper:
            payload[self.method] = {"hyperparameters": hyper}
        return payload


def _auto_or_number(name: str, value: Any, *, integer: bool, minimum: float, maximum: float | None = None,
                    exclusive: bool = False) -> int | float | str:
    if value is None or value == "auto":
        return "auto"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if ok and not isinstance(value, bool):
        low_ok = value > minimum if exclusive else value >= minimum
        if low_ok and (maximum is None or value <= maximum):
            return value
    kind = "an integer" if integer else "a number"
    bound = f"greater than {minimum}" if exclusive else f"at least {minimum}"
    upper = f" and at most {maximum}" if maximum is not None else ""
    raise UserError(f"train parameter '{name}' is {value!r}: it must be \"auto\" or {kind} {bound}{upper}")


def sanitize_suffix(text: str) -> str:
    """A model-name suffix from a stage name: lowercase letters, digits and '-', at most 64 characters."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:SUFFIX_MAX].rstrip("-") or "tunepipe"


def settings_from_params(params: Mapping[str, Any], stage: str) -> OpenAISettings:
    """The settings from the train stage's parameters (already defaulted by its schema)."""
    o: Mapping[str, Any] = params.get("openai") or {}
    model = params.get("model")
    if not isinstance(model, str) or not model:
        raise UserError("the train stage needs a 'model' for the OpenAI backend, e.g. gpt-4o-mini-2024-07-18")
    method = o.get("method") or "supervised"
    if method not in METHODS:
        raise UserError(f"openai.method is {method!r}: use one of {', '.join(METHODS)}")
    suffix = o.get("suffix")
    if suffix is None:
        suffix = sanitize_suffix(stage)
    elif not isinstance(suffix, str) or not 1 <= len(suffix) <= SUFFIX_MAX:
        raise UserError(f"openai.suffix must be a string of 1 to {SUFFIX_MAX} characters "
                        f"(it ends the fine-tuned model's name); got {suffix!r}")
    seed = params.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= SEED_MAX):
        raise UserError(f"train parameter 'seed' is {seed!r}: OpenAI takes an integer from 0 to {SEED_MAX}")
    metadata = _user_metadata(o.get("metadata") or {})
    poll = o.get("poll_seconds", DEFAULT_POLL_SECONDS)
    if not isinstance(poll, (int, float)) or isinstance(poll, bool) or poll <= 0:
        raise UserError(f"openai.poll_seconds must be a positive number of seconds; got {poll!r}")
    max_cost = o.get("max_cost_usd")
    if max_cost is not None and (not isinstance(max_cost, (int, float)) or isinstance(max_cost, bool) or max_cost < 0):
        raise UserError(f"openai.max_cost_usd must be a number of US dollars (or null); got {max_cost!r}")
    env = o.get("api_key_env") or "OPENAI_API_KEY"
    if not isinstance(env, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env):
        raise UserError(f"openai.api_key_env must name an environment variable (e.g. OPENAI_API_KEY); got {env!r}")
    return OpenAISettings(
        model=model,
        method=method,
        epochs=_auto_or_number("epochs", params.get("epochs", "auto"), integer=True, minimum=1, maximum=50),
        batch_size=_auto_or_number("batch_size", params.get("batch_size", "auto"), integer=True, minimum=1,
                                   maximum=256),
        learning_rate_multiplier=_auto_or_number("openai.learning_rate_multiplier",
                                                 o.get("learning_rate_multiplier", "auto"), integer=False,
                                                 minimum=0, exclusive=True),
        beta=_auto_or_number("openai.beta", o.get("beta", "auto"), integer=False, minimum=0, maximum=2,
                             exclusive=True),
        seed=seed,
        suffix=suffix,
        api_key_env=env,
        base_url=o.get("base_url") or None,
        max_cost_usd=float(max_cost) if max_cost is not None else None,
        poll_seconds=float(poll),
        prices=dict(o.get("prices") or {}),
        context_limits=dict(o.get("context_limits") or {}),
        metadata=metadata,
    )


def _user_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    if not isinstance(metadata, Mapping):
        raise UserError("openai.metadata must be a mapping of strings to strings")
    out: dict[str, str] = {}
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise UserError(f"openai.metadata must map strings to strings; {k!r}: {v!r} is not")
        if k.startswith(RESERVED_PREFIX):
            raise UserError(f"openai.metadata key {k!r}: keys starting with '{RESERVED_PREFIX}' are reserved "
                            "for tunepipe's own job identification; rename it")
        if not 1 <= len(k) <= METADATA_MAX_KEY:
            raise UserError(f"openai.metadata key {k!r} is {len(k)} characters: OpenAI allows 1 to {METADATA_MAX_KEY}")
        if len(v) > METADATA_MAX_VALUE:
            raise UserError(f"openai.metadata value of {k!r} is {len(v)} characters: OpenAI allows at most "
                            f"{METADATA_MAX_VALUE}")
        out[k] = v
    limit = METADATA_MAX_PAIRS - 2
    if len(out) > limit:
        raise UserError(f"openai.metadata has {len(out)} pairs: OpenAI allows {METADATA_MAX_PAIRS} per job and "
                        f"tunepipe uses 2 ({META_STAGE}, {META_KEY}), so at most {limit} are yours")
    return out


def key_tag(stage_key: str) -> str:
    """The value of ``tunepipe_key`` for a stage key: its first 32 hex digits."""
    return stage_key[:KEY_CHARS]


def job_metadata(settings: OpenAISettings, stage: str, stage_key: str) -> dict[str, str]:
    """Metadata identifying the pipeline stage (the user's pairs first, then tunepipe's two)."""
    return {**settings.metadata, META_STAGE: stage[:METADATA_MAX_VALUE], META_KEY: key_tag(stage_key)}
