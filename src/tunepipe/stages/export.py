"""The ``export`` stage: a trained model as a deliverable, cached like every stage.

Inputs: ``model`` (a train stage's output), optionally ``examples`` (the training examples: their
digest and count go into the model card, their most frequent system prompt into an Ollama
Modelfile) and ``report`` (an evaluate stage's report: its headline metrics go into the card).

Formats (``format``), written by the backend that trained the model (:mod:`tunepipe.backends`):

* ``hf-adapter``: the PEFT adapter, the tokenizer with its chat template, a model card.
* ``merged``: full safetensors weights that ``AutoModelForCausalLM.from_pretrained`` loads without
  PEFT, the tokenizer, a model card.
* ``gguf``: one GGUF file (``quantize``: f32, f16 or q8_0) for llama.cpp, LM Studio and Ollama,
  with an Ollama ``Modelfile`` beside it.

An OpenAI-trained model has no weights to hand out: the stage says so and exports its model
reference (model id, job, base, suffix) instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunepipe.backends.contract import EXPORT_FORMATS
from tunepipe.backends.registry import model_code
from tunepipe.plugins import Artifact, ParamProblem, Port, StageContext

QUANTIZE = ("f32", "f16", "q8_0")


class Export:
    name = "export"
    version = "0.1.0"
    description = "Export a trained model: a PEFT adapter, merged safetensors weights, or GGUF with an Ollama Modelfile."
    params_schema: Mapping[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "format": {"enum": list(EXPORT_FORMATS), "default": "merged",
                       "description": "hf-adapter (PEFT adapter + tokenizer), merged (full safetensors weights), "
                                      "gguf (one file for llama.cpp / Ollama, with a Modelfile)."},
            "quantize": {"enum": [*QUANTIZE, None], "default": None,
                         "description": "gguf only: the weights' type (default q8_0; f16 and f32 keep more)."},
            "system": {"type": ["string", "null"], "default": None,
                       "description": "gguf: the Modelfile's default system prompt (default: the most frequent "
                                      "one of the examples input, when given)."},
        },
    }
    inputs = {"model": Port("the model: a train stage's output (train.model)"),
              "examples": Port("the training examples (split.train): digest, count and system prompt for the "
                               "card and Modelfile", optional=True),
              "report": Port("an evaluate stage's report: its headline metrics go into the card", optional=True)}
    outputs = {"model": Port("the exported model: files for the chosen format and a README.md model card")}
    packages: tuple[str, ...] = ("torch", "transformers", "peft", "safetensors", "gguf")

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        from tunepipe.exporting import export_model

        model, examples, report = inputs["model"], inputs.get("examples"), inputs.get("report")
        done = export_model(model.path, ctx.output("model"), params["format"], quantize=params.get("quantize"),
                            system=params.get("system"), examples=_files(examples),
                            data_digest=examples.digest if examples is not None else None,
                            report=report.path if report is not None else None, shared=ctx.shared("models"),
                            source=model.name)
        if done.note:
            ctx.say(done.note)
        size = sum((done.folder / f).stat().st_size for f in done.files)
        return {"format": done.format, "files": len(done.files), "mb": round(size / 1e6, 1)}

    def check_params(self, params: Mapping[str, Any]) -> list[ParamProblem]:
        fmt = params.get("format")
        return [ParamProblem((name,), f"applies to format gguf only, not {fmt}", f"remove {name}, or set format: gguf")
                for name in ("quantize", "system") if params.get(name) is not None and fmt != "gguf"]

    def code_for(self, params: Mapping[str, Any], inputs: Mapping[str, Any]) -> list[str]:
        """The export code of the backend that trained the model enters the key."""
        model = inputs.get("model") or []
        return model_code(model[0].path, "export") if model else []

    def describe(self, outputs: Mapping[str, Path], summary: Mapping[str, Any]) -> str:
        """For ``pipeline show``: how to take the export out of the cache."""
        return f"format {summary.get('format')}; copy it out with: pipeline export FILE STAGE --to DIR"


def _files(art: Artifact | None) -> list[Path]:
    if art is None:
        return []
    return sorted(art.path.rglob("*.jsonl")) if art.path.is_dir() else [art.path]
