"""The format stage's ``hf-chat-template`` target: a conversation rendered through a Hugging Face
tokenizer's chat template, with the character span of each assistant turn, and its token counts.

:func:`render` is also what the tests compare the trainer's reading of rendered examples with
(:mod:`tunepipe.hf.render`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunepipe.data import jsonl

# Per-process tokenizers, (folder, gguf file) -> tokenizer, safe to share between stage threads (the
# work items carry their source). The stage loads the tokenizer afresh on every run and puts it here
# (:func:`keep`), so workers started by fork inherit it; a worker started by spawn loads it from the
# same source.
_TOKENIZERS: dict[tuple[str, str | None], Any] = {}


def keep(source: tuple[str, str | None], tok: Any) -> None:
    """Make ``tok`` this process's tokenizer for ``source`` (before the workers start)."""
    _TOKENIZERS[source] = tok


def tokenizer(source: tuple[str, str | None]) -> Any:
    """The tokenizer of ``source`` (a folder, and a GGUF file in it or None), loaded once per process."""
    tok = _TOKENIZERS.get(source)
    if tok is None:
        from tunepipe.data.models import TokenizerSource

        tok = _TOKENIZERS[source] = TokenizerSource(Path(source[0]), source[1]).load()
    return tok


def template_message(m: dict[str, Any]) -> dict[str, Any]:
    """A message as chat templates expect it: no ``weight``; tool-call arguments as a dict."""
    out = {k: v for k, v in m.items() if k != "weight"}
    if m.get("tool_calls"):
        out["tool_calls"] = [{**c, "function": {**c["function"], "arguments": jsonl.loads(c["function"]["arguments"])}}
                             for c in m["tool_calls"]]
    return out


def render(tok: Any, messages: list[dict[str, Any]], tools: Any = None) -> tuple[str, list[dict[str, int]]]:
    """The conversation through the tokenizer's chat template, and the span of each assistant turn.

    An assistant turn i spans from the end of the prompt (messages[:i] with the generation prompt)
    to the end of messages[:i+1]; both renderings must be prefixes of the full text, else the
    template is not prefix-stable and loss masking by spans would be wrong (a ValueError).
    """
    msgs = [template_message(m) for m in messages]

    def apply(part: list[dict[str, Any]], gen: bool = False) -> str:
        return tok.apply_chat_template(part, tools=tools, tokenize=False, add_generation_prompt=gen)

    text = apply(msgs)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt, upto = apply(msgs[:i], gen=True), apply(msgs[: i + 1])
        if not (upto.startswith(prompt) and text.startswith(upto)):
            raise ValueError(f"the chat template renders messages[{i}] differently inside the conversation "
                             "than as its end (not prefix-stable), so its assistant span cannot be found")
        spans.append({"start": len(prompt), "end": len(upto), "weight": m.get("weight", 1)})
    return text, spans


def rendered_tokens(tok: Any, text: str, spans: list[dict[str, int]]) -> tuple[int, int]:
    """(tokens of the rendered text, tokens inside the trained spans); specials come from the template."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        offsets = backend.encode(text, add_special_tokens=False).offsets
    else:
        offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    trained = [(s["start"], s["end"]) for s in spans if s["weight"]]
    assistant = sum(1 for a, _ in offsets if any(s <= a < e for s, e in trained))
    return len(offsets), assistant
