"""The shared record model (tunepipe.data.record): provenance, texts, user prompts."""

from __future__ import annotations

import pytest

from tunepipe.data.chat import provenance
from tunepipe.data.record import Provenance, content_text, normal_form, prompt_text, user_messages, user_prompt


@pytest.mark.parametrize(("meta", "text"), [
    ({"source": "data/x.jsonl", "line": 5}, "data/x.jsonl:5"),
    ({"source": "data/x.csv", "row": 5}, "data/x.csv:row 5"),
    ({"source": "data/x.json", "index": 0}, "data/x.json:index 0"),
    ({"source": "data/x.csv", "row": 2, "line": 7}, "data/x.csv:7"),  # line first
    ({"source": "data/x.jsonl", "line": None, "row": 3}, "data/x.jsonl:row 3"),  # a null position is none
    ({"source": "data/x.jsonl"}, "data/x.jsonl"),
])
def test_provenance_from_meta_as_every_stage_names_a_record(meta: dict, text: str) -> None:
    record = {"messages": [], "meta": meta}
    assert str(Provenance.of(record)) == provenance(record) == text


@pytest.mark.parametrize("record", [{"messages": []}, {"meta": {"line": 3}}, {"meta": {"source": 7, "line": 1}},
                                    {"meta": "x"}, [1, 2], None])
def test_no_provenance_without_a_source_name(record: object) -> None:
    assert Provenance.of(record) is None and provenance(record) is None


def test_located_uses_the_meta_position_else_this_inputs_line() -> None:
    assert Provenance.located({"meta": {"source": "a.csv", "row": 4}}, "in", 9) == ("a.csv", "row", 4)
    assert Provenance.located({"meta": {"source": "a.csv"}}, "in", 9) == ("in", "line", 9)
    assert str(Provenance.located({}, "clean.records", 12)) == "clean.records:12"


def test_content_text_of_a_string_or_content_parts() -> None:
    assert content_text("hi") == "hi"
    assert content_text([{"type": "text", "text": "a"}, {"type": "image_url"}, "x", {"text": "b"}]) == "a\nb"
    assert content_text(None) == content_text(5) == ""


def test_normal_form_nfc_casefold_and_collapsed_whitespace() -> None:
    assert normal_form("  What IS\tthe\n capital? ") == "what is the capital?"
    assert normal_form("Cafe\u0301 STRASSE") == normal_form("café straße") == "café strasse"


def test_user_prompt_and_prompt_text_of_each_kind_of_example() -> None:
    chat = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": " Hi  There"},
                         {"role": "assistant", "content": "x"},
                         {"role": "user", "content": [{"type": "text", "text": "Part"}, {"type": "text", "text": "two"}]}]}
    assert user_prompt(chat) == "hi there\x1fpart two"
    assert prompt_text(chat) == " Hi  There / Part\ntwo"
    dpo = {"input": {"messages": [{"role": "user", "content": "Q"}]}, "preferred_output": [], "non_preferred_output": []}
    assert user_messages(dpo) == dpo["input"]["messages"] and user_prompt(dpo) == "q" and prompt_text(dpo) == "Q"
    plain = {"prompt": "Tell Me", "completion": "c"}
    assert user_messages(plain) is None and user_prompt(plain) == "tell me" and prompt_text(plain) == "Tell Me"
    assert user_prompt({"messages": [{"role": "assistant", "content": "x"}]}) == ""
    assert user_prompt({"messages": [{"role": "user", "content": "  "}]}) == ""  # only empty turns: no prompt
    assert user_prompt({"prompt": 5}) == "" and prompt_text({}) == ""
