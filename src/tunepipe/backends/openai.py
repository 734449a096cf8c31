"""The ``openai`` backend: the OpenAI fine-tuning API, and chat completions for replies.

Training is :func:`tunepipe.openai_ft.backend.train_openai` (exactly one job per stage key), replies
:class:`tunepipe.openai_ft.replier.OpenAIReplier`; both are loaded by name when used (``code``), so
the SDK's seconds of import are paid only then and a stage's key covers only its role's code. Its settings are grouped under ``openai:`` in both stages. The weights of a
fine-tuned model stay at OpenAI: exporting one writes its model reference instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunepipe.backends.contract import EXPORT_FORMATS, Exported, Settings, TrainData, part
from tunepipe.errors import UserError
from tunepipe.modelref import ModelRef
from tunepipe.plugins import StageContext
from tunepipe.replies import Replier

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
KEY_ENV = "OPENAI_API_KEY"

TRAIN_BLOCK = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "method": {"enum": ["supervised", "dpo"], "default": "supervised",
                   "description": "supervised on chat examples, or dpo on preference pairs (format target "
                                  "openai-dpo)."},
        "learning_rate_multiplier": {"type": ["number", "string"], "exclusiveMinimum": 0, "pattern": "^auto$",
                                     "default": "auto", "description": "A number or auto (the API's choice)."},
        "beta": {"type": ["number", "string"], "exclusiveMinimum": 0, "pattern": "^auto$", "default": "auto",
                 "description": "DPO only: how strongly the model is held to the reference (or auto)."},
        "suffix": {"type": ["string", "null"], "maxLength": 64, "default": None,
                   "description": "Part of the fine-tuned model's name (default: derived from the stage)."},
        "api_key_env": {"type": "string", "pattern": ENV_NAME, "default": KEY_ENV,
                        "description": "The environment variable that holds the API key (the key itself never "
                                       "goes into a spec, cache key, artifact or log)."},
        "base_url": {"type": ["string", "null"], "default": None,
                     "description": "API base URL (default: OPENAI_BASE_URL, else OpenAI's)."},
        "max_cost_usd": {"type": ["number", "null"], "minimum": 0, "default": None,
                         "description": "Refuse to start a job whose estimated cost is above this."},
        "poll_seconds": {"type": "number", "exclusiveMinimum": 0, "default": 10,
                         "description": "First interval between status polls (backs off to 60 s)."},
        "prices": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}, "default": {},
                   "description": "USD per 1M training tokens, by model: extends or overrides the table."},
        "context_limits": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1},
                           "default": {}, "description": "Training context per model: extends the table."},
        "metadata": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 512},
                     "maxProperties": 14, "default": {},
                     "description": "Extra job metadata (tunepipe adds the stage and its key)."},
    },
}

REPLY_BLOCK = {
    "type": "object",
    "additionalProperties": False,
    "description": "OpenAI models (a train stage with backend: openai): how to call the API.",
    "properties": {
        "api_key_env": {"type": "string", "pattern": ENV_NAME, "default": KEY_ENV,
                        "description": "The environment variable holding the API key (never the key itself)."},
        "base_url": {"type": ["string", "null"], "default": None,
                     "description": "API base URL (default: OPENAI_BASE_URL, else OpenAI's)."},
        "concurrency": {"type": "integer", "minimum": 1, "maximum": 64, "default": 4,
                        "description": "Requests in flight at once."},
        "max_retries": {"type": "integer", "minimum": 0, "maximum": 20, "default": 5,
                        "description": "The SDK's retries of a rate limit (honouring Retry-After), server error or "
                                       "dropped connection; then the request waits and is tried again (3 more times)."},
    },
}

TRAIN = Settings(
    properties={"openai": {**TRAIN_BLOCK, "default": {}, "description": "openai backend settings."}},
    block="openai",
    # how a run goes, never what it trains: editing one never creates a second paid job. base_url is not
    # here: another endpoint is another service, where this stage's job does not exist (README, Training).
    operational=("openai.poll_seconds", "openai.max_cost_usd", "openai.api_key_env", "openai.prices",
                 "openai.context_limits"),
    secrets={"openai.api_key_env": KEY_ENV},
)

REPLY = Settings(
    properties={"openai": {**REPLY_BLOCK, "default": {}}},
    block="openai",
    operational=("openai.concurrency", "openai.max_retries", "openai.api_key_env"),
    secrets={"openai.api_key_env": KEY_ENV},
)


class OpenAIBackend:
    name = "openai"
    description = "the OpenAI fine-tuning API"
    model_help = "a model that can be fine-tuned (default gpt-4o-mini-2024-07-18)"
    defaults: Mapping[str, Any] = {"model": "gpt-4o-mini-2024-07-18", "epochs": "auto", "batch_size": "auto"}
    train_settings = TRAIN
    reply_settings = REPLY
    packages: tuple[str, ...] = ()
    hosted = True  # its models are served by the API itself: `pipeline serve` points there instead
    # loaded by name (see the contract's ``code``): a train key never covers the chat code, nor an
    # evaluate key the fine-tuning code
    code: Mapping[str, str] = {"train": "tunepipe.openai_ft.backend", "reply": "tunepipe.openai_ft.replier"}
    model_fields = {"fine_tuned_model": "the fine-tuning job did not succeed; run the train stage again"}
    foreign_hint = ("remove it; the OpenAI backend's settings go under openai: (e.g. "
                    "learning_rate_multiplier)")

    def preview(self, train: Path, params: Mapping[str, Any]) -> list[str]:
        """The estimate of billable tokens and cost, before anything is uploaded."""
        return [str(part(self, "train").estimate(train, params))]

    def train(self, ctx: StageContext, data: TrainData, params: Mapping[str, Any], out: Path) -> dict[str, Any]:
        if data.base_model is not None:
            raise UserError("the base_model input is a local model folder, for backend: local; OpenAI fine-tunes "
                            "the model named by model:")
        return part(self, "train").train_openai(ctx, data.train, data.validation, params, out)

    def replier(self, ctx: StageContext, model: ModelRef, *, base: bool, settings: Mapping[str, Any],
                http_client: Any = None) -> Replier:
        return part(self, "reply").OpenAIReplier(ctx, model, base=base, settings=settings, http_client=http_client)

    def export(self, model: ModelRef, fmt: str, out: Path, **options: Any) -> Exported:
        """No format: OpenAI does not hand out a fine-tuned model's weights. The model reference is
        written instead, which names the model to call."""
        from tunepipe import modelref

        if fmt not in EXPORT_FORMATS:
            raise UserError(f"unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
        modelref.write(out, model.info)
        return Exported(fmt, out, (modelref.FILE,),
                        f"not exported as {fmt}: the weights of {model.get('fine_tuned_model')} stay at OpenAI, "
                        "which does not let them be downloaded; model.json names the model to call through the API")
