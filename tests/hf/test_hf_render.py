"""Training records -> token ids and labels, on the real SmolLM2 tokenizer and chat template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hf_helpers import SYSTEM, chat, write_jsonl

from tunepipe.errors import StageInputError, UserError
from tunepipe.hf.render import IGNORE, encode, read_examples, record_to_text, render_chat

MULTI = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "What's the capital of France?"},
    {"role": "assistant", "content": "Paris. Obviously."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome, since you ask so nicely."},
]


def ids_of(tok: Any, messages: list[dict[str, Any]], gen: bool = False) -> list[int]:
    return list(tok.apply_chat_template(messages, tokenize=True, return_dict=False, add_generation_prompt=gen))


def expected_labels(tok: Any, messages: list[dict[str, Any]], trained: set[int]) -> tuple[list[int], list[int]]:
    """The labels by the textbook recipe: for each assistant turn i, the tokens between the prompt
    (messages[:i] + generation prompt) and messages[:i+1] are trained when i is in ``trained``."""
    full = ids_of(tok, messages)
    labels = [IGNORE] * len(full)
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and i in trained:
            start, end = len(ids_of(tok, messages[:i], gen=True)), len(ids_of(tok, messages[: i + 1]))
            assert full[:end] == ids_of(tok, messages[: i + 1])  # the template is prefix-stable
            labels[start:end] = full[start:end]
    return full, labels


def example_of(tok: Any, record: dict[str, Any], max_len: int = 4096) -> Any:
    text, spans = record_to_text(tok, record, "test record 1")
    return encode(tok, text, spans, max_len)


def test_single_turn_trains_exactly_the_reply_and_its_end_of_turn(tiny_tokenizer: Any) -> None:
    rec = chat("What's the capital of France?", "Paris, as if everyone doesn't know that already.")
    ex = example_of(tiny_tokenizer, rec)
    ids, labels = expected_labels(tiny_tokenizer, rec["messages"], {2})
    assert ex.ids == ids and ex.labels == labels
    trained = [t for t in ex.labels if t != IGNORE]
    assert tiny_tokenizer.decode(trained) == "Paris, as if everyone doesn't know that already.<|im_end|>\n"
    assert ex.trained == len(trained) and not ex.truncated


def test_multi_turn_masks_each_assistant_turn_separately(tiny_tokenizer: Any) -> None:
    ex = example_of(tiny_tokenizer, {"messages": MULTI})
    ids, labels = expected_labels(tiny_tokenizer, MULTI, {2, 4})
    assert ex.ids == ids and ex.labels == labels
    # two trained runs with the user's second turn (not trained) between them
    trained = [t != IGNORE for t in ex.labels]
    starts = [i for i in range(1, len(trained)) if trained[i] and not trained[i - 1]]
    assert len(starts) == 2
    text = tiny_tokenizer.decode([t for t in ex.labels if t != IGNORE])
    assert text == "Paris. Obviously.<|im_end|>\nRome, since you ask so nicely.<|im_end|>\n"
    assert "Italy" not in text


def test_an_assistant_turn_of_weight_zero_is_not_trained(tiny_tokenizer: Any) -> None:
    msgs = [dict(m) for m in MULTI]
    msgs[2]["weight"] = 0
    ex = example_of(tiny_tokenizer, {"messages": msgs})
    ids, labels = expected_labels(tiny_tokenizer, MULTI, {4})
    assert ex.ids == ids and ex.labels == labels  # the weight key itself never reaches the template
    assert tiny_tokenizer.decode([t for t in ex.labels if t != IGNORE]) == "Rome, since you ask so nicely.<|im_end|>\n"


def test_hf_chat_template_records_train_like_the_chat_examples(tiny_tokenizer: Any) -> None:
    from tunepipe.data.chat_template import render  # what the format stage writes for target hf-chat-template

    msgs = [dict(m) for m in MULTI]
    msgs[2]["weight"] = 0
    text, spans = render(tiny_tokenizer, msgs)
    from_spans = example_of(tiny_tokenizer, {"text": text, "assistant_spans": spans, "tokens": 0})
    from_chat = example_of(tiny_tokenizer, {"messages": msgs})
    assert from_spans.ids == from_chat.ids and from_spans.labels == from_chat.labels
    assert [s["weight"] for s in spans] == [0, 1]


def test_character_spans_become_the_tokens_that_start_inside_them(tiny_tokenizer: Any) -> None:
    text = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nHello there<|im_end|>\n"
    start = text.index("Hello")
    end = text.index("<|im_end|>", start) + len("<|im_end|>")
    ex = encode(tiny_tokenizer, text, [{"start": start, "end": end, "weight": 1}], 4096)
    assert tiny_tokenizer.decode([t for t in ex.labels if t != IGNORE]) == "Hello there<|im_end|>"
    assert ex.ids == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    # weight 0 spans train nothing
    none = encode(tiny_tokenizer, text, [{"start": start, "end": end, "weight": 0}], 4096)
    assert none.ids == ex.ids and set(none.labels) == {IGNORE}


def test_truncation_is_counted_and_examples_with_nothing_left_to_train_are_dropped(tiny_tokenizer: Any,
                                                                                   tmp_path: Path) -> None:
    short = chat("Hi?", "Hello.")
    long_reply = chat("Tell me a story.", "Once upon a time " * 30)
    long_prompt = chat("Repeat this: " + "blah " * 200, "No.")
    n_short = len(example_of(tiny_tokenizer, short).ids)
    n_long_prompt_prompt = len(ids_of(tiny_tokenizer, long_prompt["messages"][:2], gen=True))
    limit = n_short + 20
    assert limit < n_long_prompt_prompt
    path = write_jsonl(tmp_path / "t.jsonl", [short, long_reply, long_prompt])
    data = read_examples(path, tiny_tokenizer, limit)
    assert data.records == 3
    assert [e.line for e in data.examples] == [1, 2]
    assert data.truncated == 1 and data.dropped_truncated == 1
    cut = data.examples[1]
    assert cut.truncated and len(cut.ids) == limit == len(cut.labels) and cut.trained > 0
    assert data.describe()["truncated"] == 1


def test_records_without_a_trained_turn_are_dropped(tiny_tokenizer: Any, tmp_path: Path) -> None:
    rec = chat("Hi?", "Hello.")
    rec["messages"][2]["weight"] = 0
    data = read_examples(write_jsonl(tmp_path / "t.jsonl", [rec, chat("Yo?", "Yo.")]), tiny_tokenizer, 512)
    assert data.dropped_untrained == 1 and [e.line for e in data.examples] == [2]


def test_a_template_that_is_not_prefix_stable_falls_back_to_finding_the_reply(tiny_tokenizer: Any) -> None:
    # a header that counts the messages: a shorter conversation renders differently from its prefix
    template = ("{{ 'turns: ' ~ (messages | length) ~ '\\n' }}{% for m in messages %}"
                "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    tok = type(tiny_tokenizer).from_pretrained(tiny_tokenizer.name_or_path, local_files_only=True)
    tok.chat_template = template
    text, spans = render_chat(tok, MULTI)
    assert text.startswith("turns: 5\n")
    assert [text[s["start"]:s["end"]] for s in spans] == ["Paris. Obviously.<|im_end|>",
                                                          "Rome, since you ask so nicely.<|im_end|>"]
    ex = encode(tok, text, spans, 4096)
    assert tok.decode([t for t in ex.labels if t != IGNORE]) == \
        "Paris. Obviously.<|im_end|>Rome, since you ask so nicely.<|im_end|>"


def test_text_content_parts_and_tool_call_arguments_reach_the_template_as_it_expects(tiny_tokenizer: Any) -> None:
    rec = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "you"}]},
                        {"role": "assistant", "content": "Hi."}]}
    text, spans = record_to_text(tiny_tokenizer, rec, "r")
    assert "<|im_start|>user\nHello you<|im_end|>" in text and text[spans[0]["start"]:].startswith("Hi.")


def test_a_preference_record_is_refused_with_its_number_and_what_to_do(tiny_tokenizer: Any, tmp_path: Path) -> None:
    dpo = {"input": {"messages": [{"role": "user", "content": "Hi"}]},
           "preferred_output": [{"role": "assistant", "content": "Hello"}],
           "non_preferred_output": [{"role": "assistant", "content": "Go away"}]}
    path = write_jsonl(tmp_path / "train.jsonl", [chat("a?", "b."), dpo])
    with pytest.raises(UserError) as e:
        read_examples(path, tiny_tokenizer, 512)
    assert "train.jsonl record 2" in str(e.value)
    assert "DPO" in str(e.value) and "backend: openai" in str(e.value)


@pytest.mark.parametrize("line, says", [
    ('{"messages": [', "not valid JSON"),
    ('{"prompt": "x", "completion": "y"}', "its keys: completion, prompt"),
    ('{"messages": [{"role": "user", "content": "only a question"}]}', "no assistant message"),
    ('{"text": "abc", "assistant_spans": [{"start": 1, "end": 9, "weight": 1}]}', "inside 'text'"),
    ('[1, 2]', "must be a JSON object"),
])
def test_unusable_records_are_user_errors_that_name_the_record(tiny_tokenizer: Any, tmp_path: Path,
                                                               line: str, says: str) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [chat("a?", "b."), "", line])
    with pytest.raises(StageInputError) as e:
        read_examples(path, tiny_tokenizer, 512)
    assert "train.jsonl record 3" in str(e.value) and says in str(e.value)


def test_no_file_or_an_empty_file_gives_no_examples(tiny_tokenizer: Any, tmp_path: Path) -> None:
    assert read_examples(None, tiny_tokenizer, 512).examples == []
    empty = tmp_path / "v.jsonl"
    empty.write_text("")
    data = read_examples(empty, tiny_tokenizer, 512)
    assert data.records == 0 and data.examples == [] and data.tokens == 0
