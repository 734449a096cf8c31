"""Held-out examples -> what the models are asked (the prompt) and what they should answer.

An example is an OpenAI chat record (``{"messages": [...], "tools": [...]?}``): the prompt is every
message before the **last assistant message**, the reference is that message's text (text content
parts joined; a reply that only calls tools is written as its calls, ``name(arguments)`` per line).
A ``{"prompt": str, "completion": str}`` record is a one-turn chat. Records are taken in file order;
``max_examples`` keeps the first N.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunepipe.data import jsonl
from tunepipe.errors import StageInputError, UserError
from tunepipe.plugins import Artifact
from tunepipe.replies import Prompt


@dataclass(frozen=True)
class Example:
    index: int  # 0-based position among the evaluated examples
    line: int  # line in the file (1-based)
    prompt: list[dict[str, Any]]  # the messages sent to the model
    reference: str
    tools: list[Any] | None = field(default=None)

    def as_prompt(self) -> Prompt:
        """What the models are asked for this example."""
        return Prompt(self.prompt, self.tools, f"examples record {self.line}")

    @property
    def last_user(self) -> str:
        """The last user message's text (what the report shows first)."""
        for m in reversed(self.prompt):
            if m.get("role") == "user":
                return content_text(m.get("content"))
        return content_text(self.prompt[-1].get("content")) if self.prompt else ""


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return "" if content is None else str(content)


def _tool_calls_text(calls: Sequence[Any]) -> str:
    lines = []
    for c in calls:
        fn = c.get("function") if isinstance(c, Mapping) else None
        if isinstance(fn, Mapping):
            lines.append(f"{fn.get('name')}({fn.get('arguments', '')})")
    return "\n".join(lines)


def _from_record(record: Any, where: str) -> tuple[list[dict[str, Any]], str, list[Any] | None]:
    if not isinstance(record, Mapping):
        raise StageInputError(f"{where}: an example must be a JSON object with messages, not {type(record).__name__}")
    if isinstance(record.get("messages"), list):
        messages = record["messages"]
        last = max((i for i, m in enumerate(messages) if isinstance(m, Mapping) and m.get("role") == "assistant"),
                   default=None)
        if last is None:
            raise StageInputError(f"{where}: the example has no assistant message, so there is no reference reply "
                                  "to compare with; evaluate on examples that end with the expected reply")
        if last == 0:
            raise StageInputError(f"{where}: the example starts with its assistant message: there is no prompt")
        ref_msg = messages[last]
        reference = content_text(ref_msg.get("content"))
        if not reference and ref_msg.get("tool_calls"):
            reference = _tool_calls_text(ref_msg["tool_calls"])
        prompt = [{k: v for k, v in m.items() if k != "weight"} for m in messages[:last] if isinstance(m, Mapping)]
        tools = record.get("tools") if isinstance(record.get("tools"), list) else None
        return prompt, reference, tools
    if isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
        return [{"role": "user", "content": record["prompt"]}], record["completion"], None
    keys = ", ".join(sorted(record)) or "none"
    raise StageInputError(f"{where}: an example needs messages (OpenAI chat) or prompt and completion; this one has "
                          f"{keys}. Evaluate on split.validation or split.test of chat examples")


def load_examples(path: Path, max_examples: int | None = None, label: str | None = None) -> list[Example]:
    name = label or path.name
    out: list[Example] = []
    for lineno, raw in jsonl.iter_lines(path):
        if max_examples is not None and len(out) >= max_examples:
            break
        where = f"{name} record {lineno}"
        try:
            record = jsonl.loads(raw)
        except jsonl.JSONDecodeError as e:
            raise StageInputError(f"{where}: not valid JSON ({e})") from None
        prompt, reference, tools = _from_record(record, where)
        out.append(Example(len(out), lineno, prompt, reference, tools))
    return out


def examples_file(art: Artifact) -> Path:
    """The one JSONL file of the examples input (a file, or a split output folder holding one)."""
    if art.path.is_file():
        return art.path
    files = [f for f in art.files() if f.suffix == ".jsonl"]
    if len(files) == 1:
        return files[0]
    listing = ", ".join(art.label(f) for f in files) or "no .jsonl files"
    raise UserError(f"input 'examples' ({art.name}) must hold one JSONL file of held-out examples, "
                    f"found {listing}; connect split.validation or split.test, or a JSONL file")
