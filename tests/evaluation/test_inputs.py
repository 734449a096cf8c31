"""What the stage reads: held-out examples and the train stage's model reference, and their errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from eval_helpers import artifact, make_ctx, openai_artifact, params, write_jsonl

from tunepipe.errors import StageInputError, UserError
from tunepipe.evaluation.examples import examples_file, load_examples
from tunepipe.evaluation.inputs import read_loss, read_model


def test_the_prompt_is_everything_before_the_last_assistant_message(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "v.jsonl", [
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
                      {"role": "assistant", "content": "a1", "weight": 0}, {"role": "user", "content": "q2"},
                      {"role": "assistant", "content": [{"type": "text", "text": "a2 "}, {"type": "text", "text": "end"}]}],
         "meta": {"id": 1}},
        {"prompt": "Say hi", "completion": "hi"},
        {"messages": [{"role": "user", "content": "weather?"},
                      {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                            "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]}],
         "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]},
    ])
    a, b, c = load_examples(path)
    assert [m["content"] for m in a.prompt] == ["S", "q1", "a1", "q2"] and "weight" not in a.prompt[2]
    assert a.reference == "a2 end" and a.last_user == "q2" and a.line == 1
    assert b.prompt == [{"role": "user", "content": "Say hi"}] and b.reference == "hi"
    assert c.reference == 'weather({"city": "Oslo"})' and c.tools and c.index == 2
    assert [e.index for e in load_examples(path, max_examples=2)] == [0, 1]


@pytest.mark.parametrize(("line", "message"), [
    ('{"messages": [{"role": "user", "content": "no reply"}]}', "record 2: the example has no assistant message"),
    ('{"messages": [{"role": "assistant", "content": "x"}]}', "record 2: the example starts with its assistant"),
    ('{"text": "rendered"}', "record 2: an example needs messages (OpenAI chat) or prompt and completion; this one has text"),
    ("[1, 2]", "record 2: an example must be a JSON object"),
    ("{oops", "record 2: not valid JSON"),
])
def test_an_unusable_example_names_its_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "v.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n' + line + "\n")
    with pytest.raises(StageInputError, match=re.escape(f"split.validation/v.jsonl {message}")):
        load_examples(path, label="split.validation/v.jsonl")


def test_the_examples_input_is_one_jsonl_file(tmp_path: Path) -> None:
    folder = tmp_path / "split-validation"
    write_jsonl(folder / "validation.jsonl", [])
    assert examples_file(artifact(folder, "split.validation")) == folder / "validation.jsonl"
    write_jsonl(folder / "other.jsonl", [])
    with pytest.raises(UserError, match="must hold one JSONL file of held-out examples, found split.validation/other.jsonl"):
        examples_file(artifact(folder, "split.validation"))


def test_model_references_are_checked(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="has no model.json; connect the output of a train stage"):
        read_model(artifact(tmp_path, "train.model"))
    (tmp_path / "model.json").write_text('{"format": "tunepipe-model/0"}')
    with pytest.raises(UserError, match="has format 'tunepipe-model/0'"):
        read_model(artifact(tmp_path, "train.model"))
    (tmp_path / "model.json").write_text('{"format": "tunepipe-model/1", "backend": "openai", "base_model": "gpt"}')
    with pytest.raises(UserError, match="no fine_tuned_model: the fine-tuning job did not succeed"):
        read_model(artifact(tmp_path, "train.model"))


def test_both_kinds_of_loss_csv_are_read(tmp_path: Path) -> None:
    assert read_loss(openai_artifact(tmp_path / "o")) == [
        {"step": 1, "train_loss": 2.5, "val_loss": None}, {"step": 2, "train_loss": 2.1, "val_loss": 2.3},
        {"step": 3, "train_loss": 1.7, "val_loss": None}, {"step": 4, "train_loss": 1.4, "val_loss": 1.9}]
    local = tmp_path / "l"
    local.mkdir()
    (local / "loss.csv").write_text("step,epoch,train_loss,val_loss,learning_rate,tokens\n1,1,3.1,,0.001,40\n2,1,2.9,2.95,0.001,80\n")
    assert read_loss(local) == [{"step": 1, "train_loss": 3.1, "val_loss": None},
                                {"step": 2, "train_loss": 2.9, "val_loss": 2.95}]
    assert read_loss(tmp_path / "nothing") == []


def test_no_examples_is_a_user_error(tmp_path: Path) -> None:
    from tunepipe.evaluation.run import evaluate

    data = write_jsonl(tmp_path / "validation.jsonl", [])
    model = openai_artifact(tmp_path / "model")
    with pytest.raises(UserError, match="holds no examples; evaluate on a non-empty split"):
        evaluate(make_ctx(tmp_path / "run"), {"model": artifact(model, "train.model"),
                                              "examples": artifact(data, "split.validation")}, params())
    assert json.loads((model / "model.json").read_text())["backend"] == "openai"
