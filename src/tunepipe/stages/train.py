"""train: fine-tune a chat model, locally (LoRA or full, transformers + PEFT) or through OpenAI.

One stage, two backends behind one spec. Both write the same kind of artifact, a *model
reference*: a folder with ``model.json`` (``format: tunepipe-model/1``, ``backend``, ``base_model``
and what the evaluate stage needs to load or call the model) and the training metrics
(``metrics.json``, a loss curve as CSV). The local backend adds the adapter (or full weights), the
tokenizer with its chat template, and a merged model with ``merge: true``; the OpenAI backend adds
the fine-tuned model's name, the job and its hyperparameters.

The backends live in :mod:`tunepipe.hf` and :mod:`tunepipe.openai_ft` and are imported only when a
stage runs, so neither torch nor openai is loaded to plan, validate or skip a cached stage.

Settings shared by both backends are at the top of ``with:``; ``openai:`` holds the OpenAI ones.
``model``, ``epochs`` and ``batch_size`` default per backend (``null`` in the schema):

========== ======================== =========================
setting    local                    openai
========== ======================== =========================
model      ``smollm2-135m-instruct`` ``gpt-4o-mini-2024-07-18``
epochs     3                        ``auto`` (the API's rule)
batch_size 8                        ``auto``
========== ======================== =========================

A local-only setting given with ``backend: openai`` (or the reverse) is an error, so a spec never
silently trains with a setting that does nothing.

``workers: N`` (local, N > 1) trains data-parallel on N Ray Train workers when the pipeline runs
with ``--executor ray`` (:mod:`tunepipe.hf.distributed`); ``batch_size`` is then per worker, so an
optimizer step takes ``batch_size x gradient_accumulation x workers`` examples. The local executor
refuses it with a message to use ``--executor ray`` (or ``workers: 1``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunepipe.errors import UserError
from tunepipe.plugins import Artifact, ParamProblem, Port, StageContext

DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "local": {"model": "smollm2-135m-instruct", "epochs": 3, "batch_size": 8},
    "openai": {"model": "gpt-4o-mini-2024-07-18", "epochs": "auto", "batch_size": "auto"},
}

# Settings that only one backend reads, with their schema defaults: setting one of them for the
# other backend is refused (see _check_backend_settings).
LOCAL_ONLY = ("learning_rate", "lora", "max_seq_length", "gradient_accumulation", "schedule", "warmup",
              "weight_decay", "max_grad_norm", "eval_every", "save_every", "merge", "device", "threads", "workers")

def _auto_or(kind: dict[str, Any], description: str) -> dict[str, Any]:
    """A number (with the bounds in ``kind``), "auto", or null; one schema rather than an anyOf so
    that a wrong value gets the plain message ("0 is less than the minimum of 1")."""
    return {**kind, "type": [kind["type"], "string", "null"], "pattern": "^auto$", "default": None,
            "description": description}


_LORA = {
    "type": ["object", "boolean"],
    "additionalProperties": False,
    "properties": {
        "r": {"type": "integer", "minimum": 1, "default": 8, "description": "LoRA rank."},
        "alpha": {"type": "number", "exclusiveMinimum": 0, "default": 16, "description": "LoRA alpha (scale = alpha / r)."},
        "dropout": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.05, "description": "LoRA dropout."},
        "target_modules": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1,
                           "default": ["q_proj", "k_proj", "v_proj", "o_proj"],
                           "description": "Names of the linear layers that get adapters (e.g. q_proj, "
                                          "up_proj); \"all-linear\" as the only item means every one."},
    },
}

_OPENAI = {
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
        "api_key_env": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$", "default": "OPENAI_API_KEY",
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


class Train:
    """The train stage plugin.

    Besides the plugin contract it has the optional ``resources(params)`` hook, which the Ray
    executor reads to size the stage's task: ``{"cpus": 0}`` with ``workers`` > 1, where the stage
    only coordinates Ray Train workers that take their own CPUs (or GPUs) and must not hold one of
    theirs; ``{}`` (the executor's default, 1 CPU) otherwise. Keys: ``cpus``, ``gpus``,
    ``memory`` (bytes).
    """

    name = "train"
    version = "0.1.0"
    description = "Fine-tune a chat model: local LoRA/full (transformers + PEFT, offline) or the OpenAI API."
    params_schema: Mapping[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "backend": {"enum": ["local", "openai"], "default": "local",
                        "description": "local: transformers + PEFT on this machine (offline); openai: the "
                                       "OpenAI fine-tuning API."},
            "model": {"type": ["string", "null"], "minLength": 1, "default": None,
                      "description": "local: a packaged model (smollm2-135m-instruct, the default) or a Hugging "
                                     "Face model id in the local HF cache (a folder: the base_model input); "
                                     "openai: a model that can be fine-tuned (default gpt-4o-mini-2024-07-18)."},
            "epochs": _auto_or({"type": "integer", "minimum": 1}, "Passes over the training data (local default 3; "
                               "openai default auto)."),
            "batch_size": _auto_or({"type": "integer", "minimum": 1}, "Examples per step (local default 8; "
                                   "openai default auto)."),
            "seed": {"type": "integer", "minimum": 0, "default": 42, "description": "Seed for reproducibility."},
            # local backend
            "learning_rate": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                              "description": "local: peak learning rate (default 2e-4 with LoRA, 2e-5 full)."},
            "lora": {**_LORA, "default": {},
                     "description": "local: LoRA settings (true: the defaults); false trains all weights "
                                    "(full fine-tuning)."},
            "max_seq_length": {"type": "integer", "minimum": 16, "default": 1024,
                               "description": "local: longer examples are truncated (and counted)."},
            "gradient_accumulation": {"type": "integer", "minimum": 1, "default": 1,
                                      "description": "local: batches per optimizer step."},
            "schedule": {"enum": ["linear", "cosine", "constant"], "default": "linear",
                         "description": "local: learning-rate schedule after warm-up."},
            "warmup": {"type": "number", "minimum": 0, "default": 0.1,
                       "description": "local: warm-up, a fraction of the optimizer steps (< 1) or a step count."},
            "weight_decay": {"type": "number", "minimum": 0, "default": 0.0},
            "max_grad_norm": {"type": "number", "exclusiveMinimum": 0, "default": 1.0},
            "eval_every": {"type": "integer", "minimum": 0, "default": 0,
                           "description": "local: validation loss every N optimizer steps too (0: each epoch)."},
            "save_every": {"type": "integer", "minimum": 1, "default": 25,
                           "description": "local: checkpoint every N optimizer steps (and each epoch) for resume."},
            "merge": {"type": "boolean", "default": False,
                      "description": "local: also write the adapter merged into the base weights."},
            "device": {"enum": ["auto", "cpu", "cuda", "mps"], "default": "auto",
                       "description": "local: auto picks CUDA, then MPS, then CPU."},
            "threads": {"type": ["integer", "null"], "minimum": 1, "default": None,
                        "description": "local: CPU threads for torch (default: the run's -j; with workers > 1, "
                                       "the CPUs of each worker, default 1)."},
            "workers": {"type": "integer", "minimum": 1, "default": 1,
                        "description": "local: data-parallel Ray Train workers (needs --executor ray); batch_size "
                                       "is per worker: a step takes batch_size x gradient_accumulation x workers "
                                       "examples."},
            "openai": {**_OPENAI, "default": {}, "description": "openai backend settings."},
        },
    }
    # How a run goes, never what it trains: not in the cache key, so editing one never reruns training
    # nor creates a second paid job. openai.base_url is not here: another endpoint is another service,
    # where this stage's job does not exist (see README, Training).
    operational = ("device", "threads", "save_every", "openai.poll_seconds", "openai.max_cost_usd",
                   "openai.api_key_env", "openai.prices", "openai.context_limits")
    inputs = {"train": Port("training examples: split.train (train.jsonl) or a JSONL file"),
              "validation": Port("validation examples: split.validation (for validation loss)", optional=True),
              "base_model": Port("local: a folder holding a Hugging Face model to start from (instead of "
                                 "model:); its content enters the cache key", optional=True)}
    outputs = {"model": Port("model.json (a model reference the evaluate stage loads or calls), metrics.json, "
                             "loss.csv; local: adapter/, tokenizer/ (with the chat template), merged/")}
    packages: tuple[str, ...] = ("torch", "transformers", "peft")

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        p = resolve_params(ctx.stage, params)
        train = _jsonl(inputs["train"], "train", ctx.stage)
        validation = _jsonl(inputs.get("validation"), "validation", ctx.stage)
        if validation is not None and validation.stat().st_size == 0:
            ctx.log.info("the validation input is empty: no validation loss")
            validation = None
        out = ctx.output("model")
        base: Artifact | None = inputs.get("base_model")
        if base is not None:
            if p["backend"] != "local":
                raise UserError(f"stage '{ctx.stage}': the base_model input is a local model folder, for "
                                "backend: local; OpenAI fine-tunes the model named by model:")
            if not base.path.is_dir():
                raise UserError(f"stage '{ctx.stage}': base_model ({base.name}) must be a folder holding a "
                                "Hugging Face model (config.json and weights)")
            p["model"] = str(base.path)
        if p["backend"] == "local":
            from tunepipe.hf.trainer import train_local

            return train_local(ctx, train, validation, p, out)
        from tunepipe.openai_ft.backend import train_openai

        return train_openai(ctx, train, validation, p, out)

    def check_params(self, params: Mapping[str, Any]) -> list[ParamProblem]:
        return check_params(params)

    def resources(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """What the stage's own Ray task asks for (see the class docs): nothing with workers > 1."""
        if params.get("backend", "local") == "local" and (params.get("workers") or 1) > 1:
            return {"cpus": 0}
        return {}

    def preview(self, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> list[str]:
        """What ``--dry-run`` shows for this stage when its inputs exist: the OpenAI cost estimate."""
        p = resolve_params("", params)
        if p["backend"] != "openai" or inputs.get("train") is None:
            return []
        from tunepipe.openai_ft.estimate import estimate

        return [str(estimate(_jsonl(inputs["train"], "train", ""), p))]

    def secret_env(self, params: Mapping[str, Any]) -> list[str]:
        """The variable the OpenAI backend reads its API key from: a secret of the whole run, whatever
        its name (``openai.api_key_env: MYCREDS``), refused in parameters and redacted everywhere."""
        if params.get("backend") != "openai":
            return []
        return [(params.get("openai") or {}).get("api_key_env") or "OPENAI_API_KEY"]


def resolve_params(stage: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters with the backend's defaults filled in, checked across fields."""
    p = dict(params)
    backend = p["backend"]
    for name, value in DEFAULTS[backend].items():
        if p.get(name) is None:
            p[name] = value
    problems = check_params(params)
    if problems:  # validation reports these with file and line; this guards direct calls
        where = f"stage '{stage}'" if stage else "the train stage"
        raise UserError("; ".join(f"{where}: {'.'.join(map(str, q.path))} {q.message}: {q.hint}" for q in problems))
    if backend == "local":
        for name in ("epochs", "batch_size"):
            if p[name] == "auto":
                p[name] = DEFAULTS["local"][name]
        if p["lora"] is not False:
            lora = dict(p["lora"]) if isinstance(p["lora"], Mapping) else {}
            for k, spec in _LORA["properties"].items():
                lora.setdefault(k, spec["default"])
            p["lora"] = lora
    return p


def check_params(params: Mapping[str, Any]) -> list[ParamProblem]:
    """Settings of one backend given with the other: refused, so nothing is silently ignored."""
    from tunepipe.spec.schema import with_defaults

    defaults = with_defaults(Train.params_schema, {})
    if params["backend"] == "openai":
        return [ParamProblem((k,), "only applies to backend: local",
                             "remove it; the OpenAI backend's settings go under openai: (e.g. "
                             "learning_rate_multiplier)")
                for k in LOCAL_ONLY if params.get(k, defaults[k]) != defaults[k]]
    problems = [ParamProblem(("openai", k), "only applies to backend: openai", "remove it or set backend: openai")
                for k, v in (params.get("openai") or {}).items() if v != defaults["openai"].get(k)]
    model = params.get("model") or ""
    if model.startswith(("./", "../", "~", ".\\", "..\\")):
        problems.append(ParamProblem(("model",), f"'{model}' is a relative folder, which would be read from "
                                     "wherever pipeline runs",
                                     "give the folder as an input instead: inputs: {base_model: " + model + "} "
                                     "(relative to this file; its content then enters the cache key)"))
    return problems


def _jsonl(art: Artifact | None, port: str, stage: str) -> Path | None:
    """The one JSONL file of an input (a file, or a stage output folder holding one)."""
    if art is None:
        return None
    if art.path.is_file():
        return art.path
    files = [f for f in art.files() if f.suffix == ".jsonl"]
    named = [f for f in files if f.stem == port]
    if len(named) == 1:
        return named[0]
    if len(files) == 1:
        return files[0]
    listing = ", ".join(art.label(f) for f in files) or "no .jsonl files"
    raise UserError(f"stage '{stage}': input '{port}' ({art.name}) must hold one JSONL file of examples, "
                    f"found {listing}; point '{port}' at one file or at split.{port}")
