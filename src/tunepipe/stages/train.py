"""train: fine-tune a chat model, locally (LoRA or full, transformers + PEFT), through OpenAI, or
with any installed backend.

One stage, its backends behind one spec (:mod:`tunepipe.backends`: the built-in ``local`` and
``openai``, and those installed packages register). Each writes the same kind of artifact, a
*model reference*: a folder with ``model.json`` (:mod:`tunepipe.modelref`: ``backend``,
``base_model`` and what the evaluate stage needs to load or call the model) and the training
metrics (``metrics.json``, a loss curve as CSV). The local backend adds the adapter (or full
weights), the tokenizer with its chat template, and a merged model with ``merge: true``; the OpenAI
backend adds the fine-tuned model's name, the job and its hyperparameters.

The stage dispatches through the backends' registry; a backend imports its libraries only when it
trains, so neither torch nor openai is loaded to plan, validate or skip a cached stage. The
parameter schema, the operational paths, ``check_params``, ``resources``, ``preview`` and
``secret_env`` all come from the backends' declarations (:mod:`tunepipe.backends.params`).

Settings every backend reads (``backend``, ``model``, ``epochs``, ``batch_size``, ``seed``) are at
the top of ``with:``; so are the local backend's own, while ``openai:`` holds the OpenAI ones.
``model``, ``epochs`` and ``batch_size`` default per backend (``null`` in the schema):

========== ======================== =========================
setting    local                    openai
========== ======================== =========================
model      ``smollm2-135m-instruct`` ``gpt-4o-mini-2024-07-18``
epochs     3                        ``auto`` (the API's rule)
batch_size 8                        ``auto``
========== ======================== =========================

A setting of one backend given with another (a local-only setting with ``backend: openai``, or the
reverse) is an error, so a spec never silently trains with a setting that does nothing.

``workers: N`` (local, N > 1) trains data-parallel on N Ray Train workers when the pipeline runs
with ``--executor ray`` (:mod:`tunepipe.hf.distributed`); ``batch_size`` is then per worker, so an
optimizer step takes ``batch_size x gradient_accumulation x workers`` examples. The local executor
refuses it with a message to use ``--executor ray`` (or ``workers: 1``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunepipe.backends import params as B
from tunepipe.backends.contract import Backend, TrainData, code_modules, optional
from tunepipe.backends.registry import DEFAULT, Backends, installed
from tunepipe.errors import UserError
from tunepipe.plugins import Artifact, ParamProblem, Port, StageContext


def _auto_or(kind: dict[str, Any], description: str) -> dict[str, Any]:
    """A number (with the bounds in ``kind``), "auto", or null; one schema rather than an anyOf so
    that a wrong value gets the plain message ("0 is less than the minimum of 1")."""
    return {**kind, "type": [kind["type"], "string", "null"], "pattern": "^auto$", "default": None,
            "description": description}


def schema(backends: Backends) -> dict[str, Any]:
    """The settings every backend reads, then each backend's own (see :mod:`tunepipe.backends.params`)."""
    every = backends.all()

    def defaults(name: str) -> str:
        return "; ".join(f"{b.name} default {b.defaults.get(name)}" for b in every)

    shared = {
        "backend": {"enum": [b.name for b in every], "default": DEFAULT,
                    "description": B.per_backend(every, lambda b: b.description) + "."},
        "model": {"type": ["string", "null"], "minLength": 1, "default": None,
                  "description": B.per_backend(every, lambda b: optional(b, "model_help", "its model")) + "."},
        "epochs": _auto_or({"type": "integer", "minimum": 1}, f"Passes over the training data ({defaults('epochs')})."),
        "batch_size": _auto_or({"type": "integer", "minimum": 1}, f"Examples per step ({defaults('batch_size')})."),
        "seed": {"type": "integer", "minimum": 0, "default": 42, "description": "Seed for reproducibility."},
    }
    return {"type": "object", "additionalProperties": False, "properties": {**shared, **B.properties(every, B.TRAIN)}}


class Train:
    """The train stage plugin: the stage's own part (inputs, shared settings, finding the JSONL
    files) and a dispatch to the chosen backend for everything else."""

    name = "train"
    version = "0.1.0"
    description = "Fine-tune a chat model: local LoRA/full (transformers + PEFT, offline) or the OpenAI API."
    params_schema = B.FromBackends(schema)
    # How a run goes, never what it trains: not in the cache key (each backend lists its own, e.g. the
    # local device and threads, OpenAI's polling and budget), so editing one never reruns training nor
    # creates a second paid job.
    operational = B.FromBackends(lambda backends: B.operational(backends.all(), B.TRAIN))
    inputs = {"train": Port("training examples: split.train (train.jsonl) or a JSONL file"),
              "validation": Port("validation examples: split.validation (for validation loss)", optional=True),
              "base_model": Port("local: a folder holding a Hugging Face model to start from (instead of "
                                 "model:); its content enters the cache key", optional=True)}
    outputs = {"model": Port("model.json (a model reference the evaluate stage loads or calls), metrics.json, "
                             "loss.csv; local: adapter/, tokenizer/ (with the chat template), merged/")}
    # the built-in backends' libraries; an installed backend's enter the key when it is chosen (packages_for)
    packages = B.FromBackends(lambda backends: B.packages(backends.get(n) for n in backends.builtin))

    def __init__(self) -> None:
        installed().all()  # a backend that cannot be loaded is reported as this stage's problem, now

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        p = resolve_params(ctx.stage, params)
        train = _jsonl(inputs["train"], "train")
        given = inputs.get("validation")
        validation = _jsonl(given, "validation") if given is not None else None
        if validation is not None and validation.stat().st_size == 0:
            ctx.log.info("the validation input is empty: no validation loss")
            validation = None
        data = TrainData(train, validation, inputs.get("base_model"))
        return backend_of(p).train(ctx, data, p, ctx.output("model"))

    def check_params(self, params: Mapping[str, Any]) -> list[ParamProblem]:
        return check_params(params)

    def resources(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """What the stage's own Ray task asks for: the backend's say (the local backend with
        ``workers`` > 1 only coordinates Ray Train workers: ``{"cpus": 0}``)."""
        hook = optional(backend_of(params), "resources", None)
        return dict(hook(params)) if hook is not None else {}

    def preview(self, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> list[str]:
        """What ``--dry-run`` shows for this stage when its inputs exist (the OpenAI cost estimate)."""
        p = resolve_params("", params)
        hook = optional(backend_of(p), "preview", None)
        if hook is None or inputs.get("train") is None:
            return []
        return list(hook(_jsonl(inputs["train"], "train"), p))

    def secret_env(self, params: Mapping[str, Any]) -> list[str]:
        """The variables the chosen backend reads secrets from (OpenAI: its ``openai.api_key_env``):
        secrets of the whole run, whatever their names, refused in parameters and redacted everywhere."""
        return B.secret_env([backend_of(params)], B.TRAIN, params)

    def code_for(self, params: Mapping[str, Any], inputs: Mapping[str, Any]) -> list[str]:
        """The chosen backend's module and its training code enter the key, not its replier's nor
        another backend's: editing how replies are made never re-runs (or pays for) training."""
        return code_modules(backend_of(params), "train")

    def packages_for(self, params: Mapping[str, Any]) -> list[str]:
        """An installed backend's distribution and libraries, when it is the chosen one: their versions
        enter the key (its code is not in tunepipe's fingerprint)."""
        name = params.get("backend") or DEFAULT
        dist = installed().distribution(name)
        if dist is None:
            return []
        return [dist, *optional(backend_of(params), "packages", ())]


def backend_of(params: Mapping[str, Any]) -> Backend:
    return installed().get(params.get("backend") or DEFAULT)


def resolve_params(stage: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters with the backend's defaults filled in, checked across fields."""
    p = dict(params)
    backend = backend_of(p)
    for name, value in backend.defaults.items():
        if p.get(name) is None:
            p[name] = value
    problems = check_params(params)
    if problems:  # validation reports these with file and line; this guards direct calls
        where = f"stage '{stage}'" if stage else "the train stage"
        raise UserError("; ".join(f"{where}: {'.'.join(map(str, q.path))} {q.message}: {q.hint}" for q in problems))
    resolve = optional(backend, "resolve", None)
    return dict(resolve(p)) if resolve is not None else p


def check_params(params: Mapping[str, Any]) -> list[ParamProblem]:
    """Settings of another backend given with the chosen one (refused, so nothing is silently
    ignored), then the chosen backend's own checks."""
    from tunepipe.spec.schema import with_defaults

    backends = installed()
    chosen = backend_of(params)
    problems = B.foreign_settings(params, chosen, backends.all(), with_defaults(Train.params_schema, {}))
    own = optional(chosen, "check_params", None)
    return problems + (list(own(params)) if own is not None else [])


def _jsonl(art: Artifact, port: str) -> Path:
    """The one JSONL file of an input (a file, or a stage output folder holding one)."""
    if art.path.is_file():
        return art.path
    files = [f for f in art.files() if f.suffix == ".jsonl"]
    named = [f for f in files if f.stem == port]
    if len(named) == 1:
        return named[0]
    if len(files) == 1:
        return files[0]
    listing = ", ".join(art.label(f) for f in files) or "no .jsonl files"
    raise UserError(f"input '{port}' ({art.name}) must hold one JSONL file of examples, "
                    f"found {listing}; point '{port}' at one file or at split.{port}")
