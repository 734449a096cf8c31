"""Training records -> token ids and labels (the loss falls only on trained assistant turns).

Two kinds of records are read:

* OpenAI chat examples (``messages``, optional ``tools``): rendered through the tokenizer's chat
  template. Each assistant turn i spans from the end of the prompt (``messages[:i]`` with the
  generation prompt) to the end of ``messages[:i+1]``: the reply and the template's end-of-turn.
  When a template is not prefix-stable (renders earlier turns differently inside a longer
  conversation), the reply is found in the full rendering after the previous turn instead, with the
  end-of-sequence token that follows it.
* The ``format`` stage's ``hf-chat-template`` records (``text``, ``assistant_spans``): the spans are
  used as they are.

Either way a token is trained when its first character lies inside a span of non-zero weight (the
rule the ``format`` stage counts assistant tokens by), and the text is tokenized with
``add_special_tokens=False`` (the template holds the special tokens).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunepipe.data import jsonl
from tunepipe.errors import StageInputError

IGNORE = -100  # the label of a token that is not trained (torch's cross_entropy ignore_index)


@dataclass
class TrainingExample:
    """One training example: token ids, labels (IGNORE where untrained), and the record's line."""

    ids: list[int]
    labels: list[int]
    line: int
    truncated: bool = False

    @property
    def trained(self) -> int:
        """Tokens the loss counts: trained labels after the first token (nothing predicts the first)."""
        return sum(1 for x in self.labels[1:] if x != IGNORE)


@dataclass
class DataSet:
    """The examples of one file and what happened to the rest."""

    examples: list[TrainingExample] = field(default_factory=list)
    records: int = 0  # records read
    truncated: int = 0  # examples cut at max_seq_length (still trained on what is left)
    dropped_untrained: int = 0  # records with no trained token (all assistant turns weight 0)
    dropped_truncated: int = 0  # records whose trained tokens all lay past max_seq_length

    @property
    def tokens(self) -> int:
        return sum(len(e.ids) for e in self.examples)

    @property
    def trained_tokens(self) -> int:
        return sum(e.trained for e in self.examples)

    def describe(self) -> dict[str, int]:
        return {"records": self.records, "examples": len(self.examples), "tokens": self.tokens,
                "trained_tokens": self.trained_tokens, "truncated": self.truncated,
                "dropped_untrained": self.dropped_untrained, "dropped_truncated": self.dropped_truncated}


# --- chat rendering ----------------------------------------------------------------------------

def _content_text(content: Any) -> Any:
    """OpenAI content parts of type text joined into one string (templates expect a string)."""
    if isinstance(content, list) and all(isinstance(p, Mapping) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    return content


def template_message(m: Mapping[str, Any]) -> dict[str, Any]:
    """A message as chat templates expect it: no ``weight``, text content as a string, tool-call
    arguments as objects (the convention of Hugging Face chat templates)."""
    out = {k: v for k, v in m.items() if k != "weight"}
    if "content" in out:
        out["content"] = _content_text(out["content"])
    if m.get("tool_calls"):
        calls = []
        for c in m["tool_calls"]:
            fn = dict(c.get("function") or {})
            if isinstance(fn.get("arguments"), str):
                try:
                    fn["arguments"] = jsonl.loads(fn["arguments"])
                except jsonl.JSONDecodeError:
                    pass  # leave it as the text it is
            calls.append({**c, "function": fn})
        out["tool_calls"] = calls
    return out


def render_chat(tok: Any, messages: Sequence[Mapping[str, Any]], tools: Any = None) -> tuple[str, list[dict[str, int]]]:
    """The conversation through ``tok``'s chat template and the span of each assistant turn.

    Raises ValueError when an assistant turn cannot be located in the rendering.
    """
    msgs = [template_message(m) for m in messages]

    def apply(part: list[dict[str, Any]], gen: bool = False) -> str:
        kwargs = {"tools": tools} if tools else {}
        return tok.apply_chat_template(part, tokenize=False, add_generation_prompt=gen, **kwargs)

    text = apply(msgs)
    spans: list[dict[str, int]] = []
    cursor = 0  # the end of the previous assistant turn
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        weight = 0 if m.get("weight", 1) == 0 else 1
        try:
            prompt, upto = apply(msgs[:i], gen=True), apply(msgs[: i + 1])
        except Exception:  # e.g. a template that refuses a conversation ending on a user turn
            prompt = upto = None
        if prompt is not None and upto is not None and upto.startswith(prompt) and text.startswith(upto) \
                and len(prompt) >= cursor and len(upto) > len(prompt):
            spans.append({"start": len(prompt), "end": len(upto), "weight": weight})
            cursor = len(upto)
            continue
        start, end = _locate_reply(tok, text, msgs[i], cursor)
        spans.append({"start": start, "end": end, "weight": weight})
        cursor = end
    return text, spans


def _locate_reply(tok: Any, text: str, message: Mapping[str, Any], cursor: int) -> tuple[int, int]:
    """The reply's characters in the full rendering after ``cursor``, with the end-of-sequence
    token right after it (the fallback for templates that are not prefix-stable)."""
    content = message.get("content")
    if not isinstance(content, str) or not content.strip():
        raise ValueError("the chat template is not prefix-stable and this assistant turn has no text to find "
                         "in the rendering, so its tokens cannot be located")
    at = text.find(content, cursor)
    if at < 0:
        stripped = content.strip()
        at = text.find(stripped, cursor)
        content = stripped
    if at < 0:
        raise ValueError("the chat template is not prefix-stable and changes this assistant turn's text, "
                         "so its tokens cannot be located")
    end = at + len(content)
    eos = getattr(tok, "eos_token", None)
    if isinstance(eos, str) and eos and text.startswith(eos, end):
        end += len(eos)
    return at, end


# --- tokens and labels -------------------------------------------------------------------------

def _offsets(tok: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        enc = backend.encode(text, add_special_tokens=False)
        return list(enc.ids), list(enc.offsets)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def encode(tok: Any, text: str, spans: Sequence[Mapping[str, Any]], max_len: int, line: int = 0) -> TrainingExample:
    """Token ids of ``text`` and labels: the token where its first character lies in a trained span."""
    ids, offsets = _offsets(tok, text)
    trained = sorted((int(s["start"]), int(s["end"])) for s in spans if s.get("weight", 1))
    labels = [IGNORE] * len(ids)
    k = 0
    for t, (a, _b) in enumerate(offsets):
        while k < len(trained) and trained[k][1] <= a:
            k += 1
        if k < len(trained) and trained[k][0] <= a < trained[k][1]:
            labels[t] = ids[t]
    truncated = len(ids) > max_len
    if truncated:
        ids, labels = ids[:max_len], labels[:max_len]
    return TrainingExample(ids, labels, line, truncated)


# --- reading files -----------------------------------------------------------------------------

def _dpo_error(where: str) -> StageInputError:
    return StageInputError(f"{where}: a preference (DPO) example (input / preferred_output); the local backend "
                           "trains on chat examples (messages) only. DPO needs backend: openai, or give the train "
                           "stage chat examples (format target openai-chat or hf-chat-template)")


def _check_spans(text: Any, spans: Any, where: str) -> None:
    if not isinstance(text, str) or not isinstance(spans, list):
        raise StageInputError(f"{where}: 'text' must be a string and 'assistant_spans' a list of "
                              "{start, end, weight}; write it with the format stage (target: hf-chat-template)")
    for s in spans:
        if not (isinstance(s, Mapping) and isinstance(s.get("start"), int) and isinstance(s.get("end"), int)
                and 0 <= s["start"] <= s["end"] <= len(text)):
            raise StageInputError(f"{where}: assistant span {s!r} is not a {{start, end, weight}} range inside "
                                  f"'text' ({len(text)} characters); write it with the format stage "
                                  "(target: hf-chat-template)")


def record_to_text(tok: Any, record: Any, where: str) -> tuple[str, list[dict[str, int]]]:
    """(rendered text, assistant spans) of one record; StageInputError for anything unusable."""
    if not isinstance(record, Mapping):
        raise StageInputError(f"{where}: a record must be a JSON object, not {type(record).__name__}")
    if "text" in record and "assistant_spans" in record:
        _check_spans(record["text"], record["assistant_spans"], where)
        return record["text"], list(record["assistant_spans"])
    if "input" in record and "preferred_output" in record:
        raise _dpo_error(where)
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages or \
            not all(isinstance(m, Mapping) and isinstance(m.get("role"), str) for m in messages):
        keys = ", ".join(sorted(map(str, record))) or "none"
        raise StageInputError(f"{where}: not a chat example (a non-empty 'messages' list of {{role, content}}) "
                              f"nor an hf-chat-template record (text, assistant_spans); its keys: {keys}. Run the "
                              "data through the format stage first")
    if not any(m["role"] == "assistant" for m in messages):
        raise StageInputError(f"{where}: the conversation has no assistant message, so nothing to train on; "
                              "drop it or clean the data with the format stage")
    if not getattr(tok, "chat_template", None):
        raise StageInputError(f"{where}: the model's tokenizer has no chat template, so chat examples cannot be "
                              "rendered; use a chat (instruct) model, or render the data with the format stage "
                              "(target: hf-chat-template, tokenizer: a folder with a template)")
    try:
        return render_chat(tok, messages, record.get("tools"))
    except StageInputError:
        raise
    except Exception as e:  # a template's raise_exception, a jinja error, an unlocatable turn
        raise StageInputError(f"{where}: the model's chat template cannot render this conversation: "
                              f"{type(e).__name__}: {e}") from None


def iter_records(path: Path) -> Iterator[tuple[int, Any]]:
    for lineno, raw in jsonl.iter_lines(path):
        try:
            yield lineno, jsonl.loads(raw)
        except jsonl.JSONDecodeError as e:
            raise StageInputError(f"{path.name} record {lineno}: not valid JSON ({e}); fix or drop the line "
                                  "(the format stage reports and skips such records)") from None


def read_examples(path: Path | None, tok: Any, max_len: int, label: str | None = None) -> DataSet:
    """The examples of a JSONL file (None or an empty file: no examples)."""
    data = DataSet()
    if path is None:
        return data
    path = Path(path)
    name = label or path.name
    for lineno, record in iter_records(path):
        where = f"{name} record {lineno}"
        text, spans = record_to_text(tok, record, where)
        data.records += 1
        ex = encode(tok, text, spans, max_len, lineno)
        if not any(s.get("weight", 1) for s in spans):
            data.dropped_untrained += 1
            continue
        if ex.trained == 0:
            if ex.truncated:
                data.dropped_truncated += 1
            else:
                data.dropped_untrained += 1
            continue
        data.truncated += ex.truncated
        data.examples.append(ex)
    return data
