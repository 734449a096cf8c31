"""An example's tokens as the OpenAI cookbook counts them (``Chat_finetuning_data_prep.ipynb``), for
the format stage (:mod:`tunepipe.data.formatting`): 3 per message, plus the tokens of each of its
values (``weight`` excepted; a value that is not a string as its JSON), plus 1 for a name; 3 for the
reply priming; the ``tools`` as JSON. The same count as
:func:`tunepipe.data.tokens.count_chat_tokens`, with the trained assistant tokens besides (the
content and tool calls of the assistant messages of weight 1), and a shortcut for plain chat
examples (:meth:`OpenAITokens.plain`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from tunepipe.data.tokens import count_recurring, message_tokens, recurring_counts, value_tokens


class Counts(NamedTuple):
    """An example's messages, tokens and trained assistant tokens."""

    messages: int
    tokens: int
    assistant: int


class OpenAITokens:
    """An encoding's token counts as the cookbook counts them, with this process's caches at hand
    (:func:`openai_tokens`: one per encoding and process). Roles, names and system prompts recur
    from example to example: their counts come from :func:`tunepipe.data.tokens.recurring_counts`.
    User and assistant texts are encoded each time: they hardly recur (5 of the 186 in the main
    job's data, all of them in exact duplicates that clean removes; none in the benchmark's)."""

    def __init__(self, enc: Any) -> None:
        self.enc = enc
        # tiktoken's encode_ordinary is this call and, for a string with a lone surrogate (which it
        # cannot encode), a retry on the string made valid: calling it directly saves a Python frame
        # for each text, and such a string still goes through tiktoken's own method
        core = getattr(enc, "_core_bpe", None)
        self.encode = core.encode_ordinary if core is not None else enc.encode_ordinary
        self.cache = cache = recurring_counts(enc)
        # 3 + the tokens of the role, for the roles of a plain message
        self.costs = {r: 3 + (cache.get(r) or count_recurring(enc, cache, r)) for r in ("system", "user", "assistant")}

    def chat(self, messages: list[dict[str, Any]], tools: Any = None) -> tuple[int, int]:
        """(tokens, trained assistant tokens) of a valid conversation: 3 for the reply priming, the
        tools as JSON, and each message as :func:`message_tokens` counts it."""
        total = 3 + value_tokens(self.enc, tools) if tools else 3
        assistant = 0
        for m in messages:
            n, a = message_tokens(self.enc, m)
            total += n
            assistant += a
        return total, assistant

    def plain(self, messages: list[dict[str, Any]]) -> tuple[int, int]:
        """:meth:`chat` of the messages of a plain chat example (:func:`~tunepipe.data.chat.plain_problems`
        accepted it: each message is role and content, and a weight; the roles are system, user,
        assistant), without looking at their keys again: each message costs its role's cost and its
        content's tokens, a system prompt's from the per-process cache (the tests check that both agree)."""
        enc, encode, costs, cache = self.enc, self.encode, self.costs, self.cache
        total = 3
        assistant = 0
        for m in messages:
            role = m["role"]
            if role == "system":
                t = cache.get(m["content"])
                if t is None:
                    t = count_recurring(enc, cache, m["content"])
            else:
                try:
                    t = len(encode(m["content"]))
                except UnicodeEncodeError:
                    t = len(enc.encode_ordinary(m["content"]))
                if role == "assistant" and m.get("weight", 1):
                    assistant += t
            total += costs[role] + t
        return total, assistant

    def example(self, record: Mapping[str, Any], kind: str) -> Counts:
        """A valid example's counts. A DPO example counts as the longer of input + preferred and
        input + non-preferred; its assistant tokens are those of the preferred output."""
        if kind == "dpo":
            inp = record["input"]
            msgs = inp["messages"]
            tokens = max(self.chat(msgs + record[k], inp.get("tools"))[0]
                         for k in ("preferred_output", "non_preferred_output"))
            return Counts(len(msgs) + 1, tokens, value_tokens(self.enc, record["preferred_output"][0]["content"]))
        msgs = record["messages"]
        tokens, assistant = self.chat(msgs, record.get("tools"))
        return Counts(len(msgs), tokens, assistant)


_COUNTERS: dict[str, OpenAITokens] = {}  # encoding name -> its counter in this process


def openai_tokens(enc: Any) -> OpenAITokens:
    """This process's counter for ``enc``."""
    counter = _COUNTERS.get(enc.name)
    if counter is None:
        counter = _COUNTERS[enc.name] = OpenAITokens(enc)
    return counter


def count_chat(enc: Any, messages: list[dict[str, Any]], tools: Any = None) -> tuple[int, int]:
    """(tokens, trained assistant tokens) of a valid conversation (:meth:`OpenAITokens.chat`)."""
    return openai_tokens(enc).chat(messages, tools)


def count_openai(enc: Any, record: Mapping[str, Any], kind: str) -> Counts:
    """A valid example's counts as the cookbook counts them (:meth:`OpenAITokens.example`)."""
    return openai_tokens(enc).example(record, kind)
