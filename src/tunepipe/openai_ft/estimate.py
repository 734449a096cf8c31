"""Billable tokens and cost of a fine-tuning job, computed offline before anything is uploaded.

The same rules as the format stage's report (and the OpenAI cookbook): each example counted with
tiktoken as the cookbook counts a conversation (:func:`tunepipe.data.tokens.count_chat_tokens`),
clipped to the model's training context (:func:`tunepipe.data.models.context_limit`: longer examples
are truncated), summed, times the epochs (the parameter, or for ``auto`` the cookbook's default rule
:func:`tunepipe.data.report.default_epochs`), priced per 1M tokens
(:func:`tunepipe.data.models.price_per_million`, the stage's ``openai.prices`` first) with
:func:`tunepipe.data.report.estimate_cost`. A DPO example counts as the longer of input + preferred
and input + non-preferred output, as format counts it. Validation tokens are not billed.

OpenAI's own "auto" epochs may differ from the cookbook's rule: after the job, ``trained_tokens``
is what was billed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunepipe.data import jsonl
from tunepipe.errors import UserError
from tunepipe.openai_ft.config import settings_from_params
from tunepipe.openai_ft.prepare import example

FALLBACK_ENCODING = "o200k_base"


@dataclass(frozen=True)
class CostEstimate:
    """What a job on ``train`` would bill, before it runs."""

    model: str
    method: str
    examples: int
    tokens: int  # one epoch: the sum over examples of min(context limit, tokens)
    epochs: int
    epochs_source: str
    billable_tokens: int
    usd: float | None
    price_per_1m: float | None
    price_source: str | None
    context_limit: int | None
    over_limit: int
    encoding: str
    note: str | None = None

    def __str__(self) -> str:
        cost = (f"~${self.usd:,.2f} at ${self.price_per_1m:,.2f}/1M tokens ({self.price_source})"
                if self.usd is not None else "cost unknown (no price for this model: add it under openai.prices)")
        over = (f", {self.over_limit:,} over the {self.context_limit:,}-token context (truncated)"
                if self.over_limit else "")
        return (f"{self.model} {self.method}: {self.examples:,} examples x {self.epochs} epochs "
                f"({self.epochs_source}) = {self.billable_tokens:,} billable tokens, {cost}{over}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _encoding(model: str) -> tuple[Any, str, str | None]:
    from tunepipe.data.tokens import encoding_name_for_model, get_encoding

    try:
        name, note = encoding_name_for_model(model), None
    except UserError:
        name = FALLBACK_ENCODING
        note = f"tiktoken does not know {model}: tokens counted with {name}, an approximation"
    return get_encoding(name), name, note


def example_tokens(enc: Any, record: Mapping[str, Any], method: str) -> int:
    """Tokens of one example as the cookbook counts them (a DPO example: its longer pairing)."""
    from tunepipe.data.tokens import count_chat_tokens

    if method == "dpo":
        inp = record["input"]
        return max(count_chat_tokens(enc, list(inp["messages"]) + list(record[k]), inp.get("tools"))
                   for k in ("preferred_output", "non_preferred_output"))
    return count_chat_tokens(enc, record["messages"], record.get("tools"))


def estimate(train: Path, params: Mapping[str, Any]) -> CostEstimate:
    """The estimate for training on ``train`` (JSONL examples) with the train stage's ``params``."""
    from tunepipe.data import models
    from tunepipe.data.report import default_epochs, estimate_cost

    s = settings_from_params(params, "train")
    if not train.is_file():
        raise UserError(f"the training file {train} does not exist")
    enc, enc_name, note = _encoding(s.model)
    limit = models.context_limit(s.model, s.context_limits)
    cap = limit.value
    examples = tokens = over = 0
    for lineno, raw in jsonl.iter_lines(train):
        try:
            record = jsonl.loads(raw)
        except jsonl.JSONDecodeError as e:
            raise UserError(f"{train}:{lineno}: not valid JSON ({e})") from None
        n = example_tokens(enc, example(record, s.method, f"{train}:{lineno}"), s.method)
        examples += 1
        if cap is not None and n > cap:
            over += 1
            n = cap
        tokens += n
    if isinstance(s.epochs, int):
        epochs, source = s.epochs, "parameter"
    else:
        epochs, source = default_epochs(examples), "auto: the cookbook's default rule"
    billable = tokens * epochs
    price = models.price_per_million(s.model, s.prices)
    price_source = (None if price.value is None else "openai.prices" if price.source == "param"
                    else f"built-in estimate as of {models.PRICES_AS_OF}")
    return CostEstimate(model=s.model, method=s.method, examples=examples, tokens=tokens, epochs=epochs,
                        epochs_source=source, billable_tokens=billable, usd=estimate_cost(billable, price.value),
                        price_per_1m=price.value, price_source=price_source, context_limit=cap, over_limit=over,
                        encoding=enc_name, note=note)
