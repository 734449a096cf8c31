"""Exact OpenAI token counts offline (tunepipe.data.tokens), checked against known values."""

from __future__ import annotations

import pytest

from tunepipe.data.tokens import count_chat_tokens, count_message_tokens, encoding_for_model, \
    encoding_name_for_model, get_encoding
from tunepipe.errors import UserError

CONVERSATION = [
    {"role": "system", "content": "You are Marv."},
    {"role": "user", "content": "What is 2+2?", "name": "marv"},
    {"role": "assistant", "content": "Four, obviously.", "weight": 1},
]


@pytest.mark.parametrize(("encoding", "ids"), [("cl100k_base", [9906, 1917]), ("o200k_base", [13225, 2375])])
def test_hello_world_has_the_published_token_ids(encoding: str, ids: list[int]) -> None:
    enc = get_encoding(encoding)
    assert enc.encode("Hello world") == ids
    assert enc.decode(ids) == "Hello world"


@pytest.mark.parametrize(("model", "encoding"), [
    ("gpt-4o-mini-2024-07-18", "o200k_base"),
    ("gpt-4o-2024-08-06", "o200k_base"),
    ("gpt-4.1-2025-04-14", "o200k_base"),
    ("gpt-3.5-turbo-0125", "cl100k_base"),
    ("gpt-3.5-turbo-0613", "cl100k_base"),
    ("ft:gpt-4o-mini-2024-07-18:acme:marv:abc123", "o200k_base"),  # a fine-tuned model counts as its base
])
def test_the_encoding_is_chosen_by_model_name(model: str, encoding: str) -> None:
    assert encoding_name_for_model(model) == encoding
    assert encoding_for_model(model).name == encoding


def test_an_unknown_model_is_a_user_error_that_names_the_way_out() -> None:
    with pytest.raises(UserError, match="encoding: o200k_base"):
        encoding_name_for_model("my-own-model")


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
def test_the_cookbook_count_of_a_small_conversation(encoding: str) -> None:
    # Both encodings give the same lengths here (token ids differ):
    #   "system" 1, "You are Marv." 5, "user" 1, "What is 2+2?" 7, "marv" 2, "assistant" 1, "Four, obviously." 4
    # system message:    3 + 1 + 5          =  9
    # user message:      3 + 1 + 7 + 2 + 1  = 14   (+1 for the name)
    # assistant message: 3 + 1 + 4          =  8   (weight is not sent to the model: not counted)
    # reply priming:     3                  -> 34
    enc = get_encoding(encoding)
    assert [count_message_tokens(enc, m) for m in CONVERSATION] == [9, 14, 8]
    assert count_chat_tokens(enc, CONVERSATION) == 34


def test_non_string_values_count_as_their_json_and_tools_are_counted() -> None:
    enc = get_encoding("o200k_base")
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    message = {"role": "assistant", "content": None, "tool_calls": calls}
    import json

    as_json = len(enc.encode(json.dumps(calls, separators=(",", ":"))))
    assert count_message_tokens(enc, message) == 3 + 1 + 0 + as_json  # content null counts 0, no crash
    tools = [{"type": "function", "function": {"name": "f"}}]
    tools_tokens = len(enc.encode(json.dumps(tools, separators=(",", ":"))))
    assert count_chat_tokens(enc, CONVERSATION, tools) == count_chat_tokens(enc, CONVERSATION) + tools_tokens


def test_the_encoding_snapshot_loads_the_same_encoding_and_a_damaged_one_is_ignored(tmp_path, monkeypatch) -> None:
    import tiktoken

    from tunepipe.data import tokens

    tokens._seed()
    monkeypatch.setattr(tokens, "_snapshot_path", lambda name: tmp_path / f"{name}.snapshot")
    assert tokens._load_snapshot("cl100k_base") is None  # none yet
    fresh = tokens._load_and_snapshot("cl100k_base")
    again = tokens._load_snapshot("cl100k_base")
    assert isinstance(again, tiktoken.Encoding) and again.name == "cl100k_base"
    text = "Hello world, naïve café 🤖 12345678 \n\n  it's   DONE'S\t<|endoftext|>"
    assert again.encode_ordinary(text) == fresh.encode_ordinary(text) == \
        tiktoken.get_encoding("cl100k_base").encode_ordinary(text)
    assert again.encode("<|endoftext|>", allowed_special="all") == [100257]
    assert (again.n_vocab, again.max_token_value) == (fresh.n_vocab, fresh.max_token_value)
    snapshot = tmp_path / "cl100k_base.snapshot"
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snapshot.write_bytes(bytes(data))
    assert tokens._load_snapshot("cl100k_base") is None  # the checksum catches it: load the usual way
    snapshot.write_bytes(b"junk")
    assert tokens._load_snapshot("cl100k_base") is None
    assert tokens._load_snapshot("o200k_base") is None  # another encoding's file is not this one


def test_recurring_strings_count_the_same_from_the_cache() -> None:
    from tunepipe.data import tokens

    enc = get_encoding("o200k_base")
    system = {"role": "system", "content": "You are Marv, a chatbot that is also sarcastic."}
    first = [count_message_tokens(enc, m) for m in (system, *CONVERSATION)]
    assert system["content"] in tokens.recurring_counts(enc)
    assert [count_message_tokens(enc, m) for m in (system, *CONVERSATION)] == first  # from the cache
    assert first[0] == 3 + 1 + len(enc.encode(system["content"]))
    cache = tokens.recurring_counts(enc)
    cache.clear()
    for i in range(tokens._RECURRING_ENTRIES + 10):  # the cache stays bounded
        tokens.count_recurring(enc, cache, f"prompt {i}")
    assert len(cache) <= tokens._RECURRING_ENTRIES
    # a role that is not a string counts as its JSON, without crashing the cache
    odd = {"role": ["user"], "content": "hi"}
    assert count_message_tokens(enc, odd) == 3 + len(enc.encode('["user"]')) + len(enc.encode("hi"))
