"""`pipeline chat`: one answer (--prompt) or a conversation, with the fine-tuned model, its base or
both; through the real CLI on a tiny model trained by the pipeline, and on an OpenAI-trained model
against the aimock emulator (streamed chat completions)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from aimock import aimock, aimock_factory, aimock_server  # noqa: F401,F811  (pytest fixtures)
from model_out import LOCAL, SYSTEM, examples, train_on_aimock, trained, varied  # noqa: F401  (fixtures too)

from tunepipe.chat import ChatSide, Conversation, ask
from tunepipe.replies import Decoding


def test_one_prompt_prints_only_the_reply_and_is_the_same_twice(trained) -> None:
    first = trained.ok("chat", "p.yaml", "--prompt", "What is 3 plus 3?", "--max-new-tokens", "12")
    reply = first.stdout
    assert reply.strip() and reply.endswith("\n") and reply.count("\n") == 1 + reply.strip().count("\n")
    assert "system prompt (the training data's most frequent, 75% of examples" in first.stderr
    assert SYSTEM in first.stderr and SYSTEM not in reply
    again = trained.ok("chat", "p.yaml", "train", "--prompt", "What is 3 plus 3?", "--max-new-tokens", "12")
    assert again.stdout == reply  # greedy by default


def test_compare_answers_from_base_and_fine_tuned_and_json_says_which_is_which(trained) -> None:
    out = trained.ok("chat", "p.yaml", "--compare", "--prompt", "hi", "--max-new-tokens", "8", "--json")
    data = json.loads(out.stdout)
    assert data["prompt"] == "hi" and data["system"] == SYSTEM
    base, tuned = data["replies"]
    assert base.startswith("base: ") and tuned == "fine-tuned: train.model"
    plain = trained.ok("chat", "p.yaml", "--prompt", "hi", "--max-new-tokens", "8").stdout.strip()
    only_base = trained.ok("chat", "p.yaml", "--base", "--prompt", "hi", "--max-new-tokens", "8").stdout.strip()
    assert data["replies"][tuned] == plain and data["replies"][base] == only_base
    labelled = trained.ok("chat", "p.yaml", "--compare", "--prompt", "hi", "--max-new-tokens", "8")
    assert f"── {base}" in labelled.stderr and f"── {tuned}" in labelled.stderr
    assert labelled.stdout == f"{only_base}\n{plain}\n"


def test_the_system_prompt_can_be_changed_or_dropped(trained) -> None:
    a = trained.ok("chat", "p.yaml", "--system", "", "--prompt", "hi", "--json")
    assert json.loads(a.stdout)["system"] is None and "system prompt (" not in a.stderr
    b = trained.ok("chat", "p.yaml", "--system", "Be terse.", "--prompt", "hi", "--json")
    assert json.loads(b.stdout)["system"] == "Be terse."


def test_a_conversation_keeps_history_and_obeys_its_commands(trained) -> None:
    lines = "What is 2 plus 2?\n/system\n/system Be terse.\n/system\nAnd 3?\n/reset\n/nope\n"
    result = trained.run("chat", "p.yaml", "--max-new-tokens", "6", input=lines)
    assert result.exit_code == 0, result.output
    assert f"system: {SYSTEM!r}" in result.stderr and "system: 'Be terse.'" in result.stderr
    assert "(a new conversation)" in result.stderr and "unknown command /nope" in result.stderr
    assert result.stdout.count("\n") == 2  # two replies, and nothing else on stdout


def test_history_goes_into_the_next_prompt(trained, varied: Path) -> None:
    """Each side keeps its own turns: the second prompt holds the first question and its reply."""
    from tunepipe.hf.replier import LocalReplier

    class Recording(LocalReplier):
        seen: list = []

        def stream(self, prompt, decoding):
            self.seen.append(prompt.messages)
            yield from super().stream(prompt, decoding)

    from tunepipe.session import open_session
    from tunepipe.trained import context, find_trained

    t = find_trained(open_session("p.yaml"), None)
    with context(open_session("p.yaml"), "train") as ctx:
        side = ChatSide("tuned", Recording(ctx, t.ref, base=False, settings={}))
        conv = Conversation("S", [side])
        out = io.StringIO()
        first = ask(conv, "one", Decoding(4), out, io.StringIO())["tuned"]
        ask(conv, "two", Decoding(4), out, io.StringIO())
    assert Recording.seen[1] == [{"role": "system", "content": "S"}, {"role": "user", "content": "one"},
                                 {"role": "assistant", "content": first}, {"role": "user", "content": "two"}]


def test_a_stale_model_is_used_with_a_note(trained) -> None:
    result = trained.ok("chat", "p.yaml", "-S", "train.learning_rate=0.02", "--prompt", "hi")
    assert "note: train's model is not current" in result.stderr and "learning_rate" in result.stderr
    assert result.stdout.strip()


@pytest.mark.parametrize("args, message", [
    (["nope", "--prompt", "x"], "p.yaml has no stage 'nope': its stages are split, train"),
    (["split", "--prompt", "x"], "stage 'split' (uses: split) produces no model: name a train stage (train)"),
    (["--base", "--compare", "--prompt", "x"], "--base and --compare exclude each other"),
    (["--json"], "--json needs --prompt"),
])
def test_bad_calls_are_one_clear_line_and_exit_2(trained, args: list[str], message: str) -> None:
    result = trained.run("chat", "p.yaml", *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_a_stage_that_has_not_run_says_to_run_it(project, varied: Path) -> None:
    shutil.copytree(varied, project.root / "base")
    project.write("data/chat.jsonl", examples(24))
    project.spec(LOCAL)
    result = project.run("chat", "p.yaml", "--prompt", "x")
    assert result.exit_code == 2
    assert "stage 'train' has no results" in result.output and "run `pipeline run p.yaml train` first" in result.output


def test_a_matrix_needs_a_branch_and_a_pipeline_without_train_stage_says_so(project, varied: Path) -> None:
    shutil.copytree(varied, project.root / "base")
    project.write("data/chat.jsonl", examples(24))
    project.spec(LOCAL.replace("learning_rate: 0.01", "learning_rate: \"${matrix.lr}\"").replace(
        "seed: 5}", "seed: 5}\n    matrix: {lr: [0.01, 0.02]}"))
    result = project.run("chat", "p.yaml", "train", "--prompt", "x")
    assert result.exit_code == 2 and "'train' is a matrix stage with 2 branches: name one of" in result.output
    result = project.run("chat", "p.yaml", "--prompt", "x")
    assert result.exit_code == 2 and "has 2 train stages: name one of train@" in result.output
    project.spec("stages:\n  split: {uses: split, inputs: {examples: data/chat.jsonl}}\n")
    result = project.run("chat", "p.yaml", "--prompt", "x")
    assert result.exit_code == 2 and "p.yaml has no train stage" in result.output


def test_an_openai_trained_model_answers_through_streamed_chat_completions(project, aimock,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    model = train_on_aimock(project, aimock, monkeypatch, "sk-test-chat")
    aimock.set_fixtures([{"match": {"userMessage": "capital"}, "response": {"content": "Paris. Obviously."}}])
    result = project.ok("chat", "p.yaml", "--prompt", "What is the capital of France?")
    assert result.stdout == "Paris. Obviously.\n"
    asked = [e for e in aimock.journal(path="/v1/chat/completions")]
    assert asked and asked[-1]["body"]["model"] == model and asked[-1]["body"]["stream"] is True
    assert asked[-1]["body"]["messages"][0] == {"role": "system", "content": SYSTEM}
