"""An optional judge: an OpenAI model scores each reply against a rubric written in the spec.

::

    judge:
      model: gpt-4o-mini-2024-07-18
      rubric:
        factually_correct: The reply answers the question with correct facts.
        sarcastic: The reply is sarcastic in tone.

Each reply (base and tuned, separately and blind: the judge never learns which model wrote it) is
shown with the conversation and the reference reply; for every criterion the judge gives a reason
and a score from 1 (not at all) to 5 (fully), asked for as strict JSON (``response_format``
json_schema). A score becomes the metric ``judge_<criterion>`` = (score - 1) / 4, in 0-1; the
reasons are kept in predictions.jsonl and the report. A verdict that is not valid JSON with every
criterion is asked for once more; if it still is not, that reply has no judge score (left out of
the means, counted in metrics.json).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tunepipe.evaluation.examples import Example, content_text
from tunepipe.openai_ft.chat import Caller, Endpoint
from tunepipe.replies import Reply

SCORE_MIN, SCORE_MAX = 1, 5
MAX_TOKENS = 600

SYSTEM = ("You are a careful, impartial grader of a chat assistant's replies. You grade one reply at a time "
          "against the criteria you are given, each on its own, from 1 (not at all) to 5 (fully). The reference "
          "reply shows one good answer; a reply may differ from it and still deserve a high score. Give each "
          "criterion a one-sentence reason, then its score. Answer with JSON only.")


@dataclass(frozen=True)
class JudgeSpec:
    model: str
    rubric: Mapping[str, str]
    endpoint: Endpoint
    seed: int = 0

    @property
    def metrics(self) -> list[str]:
        return [metric_name(c) for c in self.rubric]

    def identity(self) -> dict[str, Any]:
        return {"model": self.model, "rubric": dict(self.rubric), "endpoint": self.endpoint.label(),
                "seed": self.seed, "system": SYSTEM, "max_tokens": MAX_TOKENS}


def metric_name(criterion: str) -> str:
    return f"judge_{criterion}"


def _conversation(example: Example) -> str:
    lines = []
    for m in example.prompt:
        text = content_text(m.get("content"))
        lines.append(f"[{m.get('role', '?')}] {text}")
    return "\n".join(lines)


def user_message(spec: JudgeSpec, example: Example, reply: str) -> str:
    criteria = "\n".join(f"- {name}: {text}" for name, text in spec.rubric.items())
    shape = ", ".join(f'"{name}": {{"reason": "...", "score": {SCORE_MIN}-{SCORE_MAX}}}' for name in spec.rubric)
    return (f"Grade the assistant's reply to the conversation below.\n\n"
            f"<conversation>\n{_conversation(example)}\n</conversation>\n\n"
            f"<reference_reply>\n{example.reference}\n</reference_reply>\n\n"
            f"<reply_to_grade>\n{reply}\n</reply_to_grade>\n\n"
            f"Criteria:\n{criteria}\n\n"
            f"For each criterion give a short reason and a score from {SCORE_MIN} (not at all) to {SCORE_MAX} (fully). "
            f"Answer with this JSON object only: {{{shape}}}")


def response_format(spec: JudgeSpec) -> dict[str, Any]:
    item = {"type": "object", "additionalProperties": False, "required": ["reason", "score"],
            "properties": {"reason": {"type": "string"}, "score": {"type": "integer", "enum": list(range(SCORE_MIN, SCORE_MAX + 1))}}}
    schema = {"type": "object", "additionalProperties": False, "required": list(spec.rubric),
              "properties": {name: item for name in spec.rubric}}
    return {"type": "json_schema", "json_schema": {"name": "verdict", "strict": True, "schema": schema}}


def judge_request(spec: JudgeSpec, example: Example, reply: str, seed: int | None = None) -> dict[str, Any]:
    return {"model": spec.model, "temperature": 0, "seed": spec.seed if seed is None else seed,
            "max_completion_tokens": MAX_TOKENS, "response_format": response_format(spec),
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": user_message(spec, example, reply)}]}


_OBJECT = re.compile(r"\{.*\}", re.S)


def parse_verdict(text: str, criteria: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """``{criterion: {"score": 1-5, "reason": str}}`` from the judge's answer; ValueError if it is
    not JSON with a valid score for every criterion."""
    try:
        data = json.loads(text)
    except ValueError:
        found = _OBJECT.search(text or "")  # tolerate prose or a code fence around the object
        if not found:
            raise ValueError("the judge's answer holds no JSON object") from None
        try:
            data = json.loads(found.group(0))
        except ValueError as e:
            raise ValueError(f"the judge's answer is not valid JSON ({e})") from None
    if not isinstance(data, Mapping):
        raise ValueError("the judge's answer is not a JSON object")
    out = {}
    for name in criteria:
        item = data.get(name)
        if not isinstance(item, Mapping):
            raise ValueError(f"the judge gave no verdict for '{name}'")
        score = item.get("score")
        if isinstance(score, str) and score.strip().isdigit():
            score = int(score.strip())
        if isinstance(score, float) and score.is_integer():
            score = int(score)
        if isinstance(score, bool) or not isinstance(score, int) or not SCORE_MIN <= score <= SCORE_MAX:
            raise ValueError(f"the judge's score for '{name}' is {score!r}, not an integer {SCORE_MIN}-{SCORE_MAX}")
        out[name] = {"score": score, "reason": str(item.get("reason", "")).strip()}
    return out


def normalized(score: int | None) -> float | None:
    return None if score is None else (score - SCORE_MIN) / (SCORE_MAX - SCORE_MIN)


class JudgeCaller:
    """A request to the judge, parsed; asked once more (another seed) when the verdict is unusable.
    The verdict goes into ``reply.extra["verdict"]`` (None when unusable, with ``judge_error``)."""

    def __init__(self, caller: Caller, spec: JudgeSpec) -> None:
        self.caller, self.spec = caller, spec

    def __call__(self, request: dict[str, Any]) -> Reply:
        reply = self.caller(request)
        problem = ""
        for attempt in range(2):
            if reply.finish == "error":
                problem = str(reply.extra.get("error", "the API rejected the request"))
                break
            try:
                reply.extra["verdict"] = parse_verdict(reply.text, self.spec.rubric)
                return reply
            except ValueError as e:
                problem = str(e)
            if attempt == 0:
                retry = self.caller({**request, "seed": int(request.get("seed", 0)) + 1})
                retry.retries += reply.retries + 1
                retry.prompt_tokens += reply.prompt_tokens
                retry.completion_tokens += reply.completion_tokens
                reply = retry
        reply.extra["verdict"] = None
        reply.extra["judge_error"] = problem
        return reply
