"""The ``local`` backend: LoRA or full fine-tuning with transformers + PEFT on this machine, offline.

Training is :func:`tunepipe.hf.trainer.train_local`, replies :class:`tunepipe.hf.replier.LocalReplier`,
export :func:`tunepipe.hf.export.export`; each is loaded by name when used (``code``), so loading this
backend costs no torch and a stage's key covers only the code of its role. Its train settings sit at the
top of the train stage's ``with:`` (``learning_rate``, ``lora``, ...), its reply settings at the
top of the evaluate stage's (``batch_size``, ``device``, ``threads``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunepipe.backends.contract import Exported, Settings, TrainData, part
from tunepipe.errors import UserError
from tunepipe.modelref import ModelRef
from tunepipe.plugins import ParamProblem, StageContext
from tunepipe.replies import Replier

LORA: Mapping[str, Any] = {
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

DEVICE = {"enum": ["auto", "cpu", "cuda", "mps"], "default": "auto",
          "description": "local: auto picks CUDA, then MPS, then CPU."}

TRAIN = Settings(
    properties={
        "learning_rate": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                          "description": "local: peak learning rate (default 2e-4 with LoRA, 2e-5 full)."},
        "lora": {**LORA, "default": {},
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
        "device": DEVICE,
        "threads": {"type": ["integer", "null"], "minimum": 1, "default": None,
                    "description": "local: CPU threads for torch (default: the run's -j; with workers > 1, "
                                   "the CPUs of each worker, default 1)."},
        "workers": {"type": "integer", "minimum": 1, "default": 1,
                    "description": "local: data-parallel Ray Train workers (needs --executor ray); batch_size "
                                   "is per worker: a step takes batch_size x gradient_accumulation x workers "
                                   "examples."},
    },
    # how a run goes, never what it trains (hf.settings.NOT_FINGERPRINTED also lets a resume change them)
    operational=("device", "threads", "save_every"),
)

REPLY = Settings(
    properties={
        "batch_size": {"type": "integer", "minimum": 1, "maximum": 1024, "default": 8,
                       "description": "local: prompts generated together."},
        "device": DEVICE,
        "threads": {"type": ["integer", "null"], "minimum": 1, "default": None,
                    "description": "local: CPU threads for torch (default: the run's -j)."},
    },
    operational=("device", "threads"),
)

RELATIVE = ("./", "../", "~", ".\\", "..\\")


class LocalBackend:
    name = "local"
    description = "transformers + PEFT on this machine (offline)"
    model_help = ("a packaged model (smollm2-135m-instruct, the default) or a Hugging Face model id in the local "
                  "HF cache (a folder: the base_model input)")
    defaults: Mapping[str, Any] = {"model": "smollm2-135m-instruct", "epochs": 3, "batch_size": 8}
    train_settings = TRAIN
    reply_settings = REPLY
    packages: tuple[str, ...] = ("torch", "transformers", "peft")
    code: Mapping[str, str] = {"train": "tunepipe.hf.trainer", "reply": "tunepipe.hf.replier",
                               "export": "tunepipe.hf.export"}

    def check_params(self, params: Mapping[str, Any]) -> list[ParamProblem]:
        model = params.get("model") or ""
        if not model.startswith(RELATIVE):
            return []
        return [ParamProblem(("model",), f"'{model}' is a relative folder, which would be read from wherever "
                             "pipeline runs", "give the folder as an input instead: inputs: {base_model: " + model +
                             "} (relative to this file; its content then enters the cache key)")]

    def resolve(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``auto`` epochs and batch size as numbers; LoRA's own defaults (``lora: true`` is all of them)."""
        p = dict(params)
        for name in ("epochs", "batch_size"):
            if p[name] == "auto":
                p[name] = self.defaults[name]
        if p["lora"] is not False:
            lora = dict(p["lora"]) if isinstance(p["lora"], Mapping) else {}
            for k, spec in LORA["properties"].items():
                lora.setdefault(k, spec["default"])
            p["lora"] = lora
        return p

    def resources(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """With ``workers`` > 1 the stage only coordinates Ray Train workers, which take their own CPUs."""
        return {"cpus": 0} if (params.get("workers") or 1) > 1 else {}

    def train(self, ctx: StageContext, data: TrainData, params: Mapping[str, Any], out: Path) -> dict[str, Any]:
        p = dict(params)
        if data.base_model is not None:
            if not data.base_model.path.is_dir():
                raise UserError(f"base_model ({data.base_model.name}) must be a folder holding a Hugging Face "
                                "model (config.json and weights)")
            p["model"] = str(data.base_model.path)
        return part(self, "train").train_local(ctx, data.train, data.validation, p, out)

    def replier(self, ctx: StageContext, model: ModelRef, *, base: bool, settings: Mapping[str, Any],
                http_client: Any = None) -> Replier:
        return part(self, "reply").LocalReplier(ctx, model, base=base, settings=settings)

    def export(self, model: ModelRef, fmt: str, out: Path, **options: Any) -> Exported:
        """``hf-adapter``, ``merged`` or ``gguf`` (:mod:`tunepipe.hf.export`)."""
        return part(self, "export").export(model, fmt, out, **options)
