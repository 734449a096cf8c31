"""What the format stage does to each example (pure: the tests call it directly): validate it
(:mod:`tunepipe.data.chat`), count its tokens as the OpenAI cookbook does (or render it through a
chat template, :mod:`tunepipe.data.chat_template`), and write it for the target; and what the
stage's parent gathers from the blocks (:class:`Tally`).

The stage itself is :mod:`tunepipe.stages.format`. The work is per block of input lines
(:mod:`tunepipe.data.blocks`): :func:`format_block` runs in a worker, reads its block from the file
itself, writes the block's examples to a part file in the stage's scratch folder and returns only
what the parent needs (:class:`Formatted`: how many lines and records, the part file, each
example's messages, tokens and assistant tokens, and the records with problems). The parent appends
the parts to ``examples.jsonl`` in input order, so the output does not depend on the number of
workers, and no example goes through a pipe.

Per record: parse; its problems (:func:`~tunepipe.data.chat.validate`); when it has no error, the
example as written and its counts (:mod:`tunepipe.data.cookbook_counts`, or the chat template's). A
plain chat example (role and content only: the common case) is settled by
:func:`~tunepipe.data.chat.plain_problems`, the full check's own first step, and counted by
:meth:`~tunepipe.data.cookbook_counts.OpenAITokens.plain`, which does not look at each message's
keys again (the tests check that it counts as the full count does). The check and the count are
two loops over the messages, where the stage once fused them into one that repeated the check's
rules: about 0.5 µs more per example, 3–4 % of the ~14 µs an example costs a worker (10 µs of it
tiktoken). An example is written as ``orjson.dumps`` of its kept keys, even when that gives the
input line back: proving that it would costs as much as the ``dumps`` (an equality test needs the
``dumps``; a lexical check of the line, 0.4–1.2 µs, more than the ``dumps`` of a 700-byte example,
about 0.4 µs).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from tunepipe.data import jsonl
from tunepipe.data.blocks import Block, count_lines
from tunepipe.data.chat import CATEGORIES, CHAT_KEYS, DPO_KEYS, ERROR, Problem, is_error, plain_problems, validate
from tunepipe.data.chat_template import render, rendered_tokens, tokenizer
from tunepipe.data.cookbook_counts import OpenAITokens, openai_tokens
from tunepipe.data.record import Provenance
from tunepipe.data.rejects import Rejects
from tunepipe.data.tokens import get_encoding

HF_TARGET = "hf-chat-template"
FAIL_LIST = 20  # problems quoted in the error of `on_invalid: fail`


class FormatConfig(NamedTuple):
    """What a worker needs to format a block (plain data: it travels to the workers)."""

    target: str                            # openai-chat, openai-dpo or hf-chat-template
    encoding: str | None                   # openai-*: the tiktoken encoding
    tokenizer: tuple[str, str | None] | None  # hf-chat-template: the tokenizer's folder and GGUF file
    limit: int | None                      # the model's training context, in tokens
    limit_model: str                       # whose context that is (for the over-limit warning)
    parts: str                             # the folder the workers write their examples into


class Example(NamedTuple):
    """A valid example as written: its output line, its messages, tokens and trained assistant tokens."""

    line: bytes
    messages: int
    tokens: int
    assistant: int


class Flagged(NamedTuple):
    """A record with problems: its line in the block, its problems, where its ``meta`` says it comes
    from, and the line as read when the record is invalid (None when it was written, warnings only)."""

    line: int
    problems: list[Problem]
    origin: Provenance | None
    raw: bytes | None


@dataclass
class Formatted:
    """A block's result: what the parent counts, reports and sets aside (the examples are in ``part``)."""

    lines: int                      # physical lines in the block (for line numbers)
    part: str                       # the file holding the block's examples, one per line
    records: int = 0                # non-blank lines
    messages: list[int] = field(default_factory=list)   # per example written
    tokens: list[int] = field(default_factory=list)
    assistant: list[int] = field(default_factory=list)
    flagged: list[Flagged] = field(default_factory=list)


class TemplateError(Exception):
    """The chat template cannot render an example (it raises, or it is not prefix-stable)."""


# ------------------------------------------------------------------------------------------------
# one example, for its target

def openai_example(counter: OpenAITokens, record: dict[str, Any], kind: str) -> Example:
    """A valid openai-chat or openai-dpo example as written (its target's keys, then ``meta``)."""
    out = {k: record[k] for k in (DPO_KEYS if kind == "dpo" else CHAT_KEYS) if k in record}
    if "meta" in record:
        out["meta"] = record["meta"]
    return Example(jsonl.dumps(out), *counter.example(record, kind))


def hf_example(tok: Any, record: dict[str, Any], kind: str) -> Example:
    """The output line of a valid example rendered through ``tok``'s chat template (``text``,
    ``assistant_spans``, ``tokens``, ``messages``, ``tools``, ``meta``), and its counts."""
    tools = record.get("tools")
    try:
        text, spans = render(tok, record["messages"], tools)
    except Exception as e:  # a template's raise_exception, a jinja error, prefix instability
        raise TemplateError(f"{type(e).__name__}: {e}") from e
    tokens, assistant = rendered_tokens(tok, text, spans)
    out: dict[str, Any] = {"text": text, "assistant_spans": spans, "tokens": tokens, "messages": record["messages"]}
    if tools is not None:
        out["tools"] = tools
    if "meta" in record:
        out["meta"] = record["meta"]
    return Example(jsonl.dumps(out), len(record["messages"]), tokens, assistant)


# ------------------------------------------------------------------------------------------------
# a block, in a worker

def format_block(cfg: FormatConfig, block: Block) -> Formatted:
    """Validate, count and write each record of a block (see :class:`Formatted`); lines are numbered
    within the block and read by the kit's rules (:mod:`tunepipe.data.blocks`)."""
    data = block.read()
    if cfg.tokenizer is not None:
        counter, example = tokenizer(cfg.tokenizer), hf_example
    else:
        counter, example = openai_tokens(get_encoding(cfg.encoding)), openai_example
    kind = "dpo" if cfg.target == "openai-dpo" else "chat"
    plain = cfg.target == "openai-chat"
    limit = cfg.limit
    loads, dumps, bad_json = orjson.loads, orjson.dumps, orjson.JSONDecodeError  # jsonl's, one call less each
    got = Formatted(count_lines(data), str(Path(cfg.parts) / f"{block.index:06d}.jsonl"))
    flagged, records, lines = got.flagged, 0, []
    write, messages, tokens, assistant = lines.append, got.messages.append, got.tokens.append, got.assistant.append
    for number, raw in block.lines(data):
        records += 1
        try:
            record = loads(raw)
        except bad_json as e:
            flagged.append(Flagged(number, [("invalid_json", f"not valid JSON ({e})")], None, raw))
            continue
        problems = plain_problems(record) if plain and record.__class__ is dict else None
        if problems is not None:
            # a plain chat example (the common case): no error, its messages known to be role and
            # content, so counted without looking at their keys again; written as it is (messages,
            # then meta), which is what openai_example writes for it
            msgs = record["messages"]
            line = dumps(record if next(iter(record)) == "messages" else {"messages": msgs, "meta": record["meta"]})
            n, (t, a) = len(msgs), counter.plain(msgs)
        else:
            problems = validate(record, kind)
            if problems and any(is_error(p) for p in problems):
                flagged.append(Flagged(number, problems, Provenance.of(record), raw))
                continue
            try:
                line, n, t, a = example(counter, record, kind)
            except TemplateError as e:
                problems.append(("chat_template_error", str(e)))
                flagged.append(Flagged(number, problems, Provenance.of(record), raw))
                continue
        write(line)
        messages(n)
        tokens(t)
        assistant(a)
        if limit is not None and t > limit:
            problems.append(("over_token_limit", f"{t:,} tokens, over the {limit:,}-token training "
                                                 f"context of {cfg.limit_model}: the rest is truncated"))
        if problems:
            flagged.append(Flagged(number, problems, Provenance.of(record), None))
    with open(got.part, "wb") as out:  # joined, one write: half the cost of two writes per example
        if lines:
            out.write(b"\n".join(lines))
            out.write(b"\n")
    got.records = records
    return got


# ------------------------------------------------------------------------------------------------
# the parent: everything counted while streaming

def original(raw: bytes) -> Any:
    """An invalid line for the rejects: the parsed JSON, or the text when it does not parse."""
    try:
        return jsonl.loads(raw)
    except jsonl.JSONDecodeError:
        return raw.decode("utf-8", "replace")


class Tally:
    """Everything counted while streaming: problems (written out as they come), rejects, statistics.

    ``rejects``: where invalid examples are set aside (None: none is, the stage fails on them).
    """

    def __init__(self, problems_out: jsonl.Writer, rejects: Rejects | None, shown: int, limit: int | None) -> None:
        from tunepipe.data.report import Distribution

        self.problems_out, self.rejects, self.shown, self.limit = problems_out, rejects, shown, limit
        self.errors: Counter[str] = Counter()
        self.warnings: Counter[str] = Counter()
        self.first: list[dict[str, Any]] = []         # the first `shown` problems, for the report
        self.first_errors: list[dict[str, Any]] = []  # the first errors, for a failure message
        self.data_set: list[dict[str, Any]] = []      # problems of the whole data set
        self.problems = self.records = self.written = self.invalid = self.clipped = self.over = 0
        self.dists = {k: Distribution() for k in ("messages", "tokens", "assistant")}

    def add(self, got: Formatted, label: str, before: int, file: str | None) -> None:
        """A block's result: ``label`` names its file in rejects, ``before`` is the file's lines
        before the block, ``file`` the file's name in problems (None: the input is one file)."""
        self.records += got.records
        self.examples(got.messages, got.tokens, got.assistant)
        in_file = {"file": file} if file else {}
        for flag in got.flagged:
            line = before + flag.line
            source = None if flag.origin is None else str(flag.origin)
            for category, message in flag.problems:
                self.note({"record": line, **in_file, "source": source, "severity": CATEGORIES[category][0],
                           "category": category, "message": message})
            if flag.raw is not None:
                self.invalid += 1
                if self.rejects is not None:  # named by its meta's position, else by this input's line
                    origin = flag.origin if flag.origin is not None and flag.origin.unit is not None else \
                        Provenance(label, "line", line)
                    self._reject(flag, origin)

    def _reject(self, flag: Flagged, where: Provenance) -> None:
        """A reject row: the first error as its code and reason, any others in ``more_errors``."""
        assert self.rejects is not None and flag.raw is not None  # (for the type checker)
        (code, reason), *more = [p for p in flag.problems if CATEGORIES[p[0]][0] == ERROR]
        details: dict[str, Any] = {"more_errors": [{"code": c, "reason": r} for c, r in more]} if more else {}
        self.rejects.write(where, code, reason, **details, example=original(flag.raw))

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
        """The error of ``on_invalid: fail``: how many are invalid, of which kinds, the first ones."""
        from tunepipe.data.report import format_problem

        counts = ", ".join(f"{c} {n}" for c, n in self.errors.most_common())
        more = sum(self.errors.values()) - len(self.first_errors)
        return (f"{self.invalid:,} of {self.records:,} examples in {input_name} are invalid ({counts}):\n"
                + "\n".join(f"  {format_problem(p)}" for p in self.first_errors)
                + (f"\n  ... and {more:,} more" if more > 0 else "")
                + "\nFix the records, or set `on_invalid: skip` to set invalid examples aside in the rejects "
                  "output (the report's problems.jsonl then lists every problem)")
