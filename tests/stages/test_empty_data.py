"""An unusable data set stops the run at the stage that finds it, through the real CLI: exit 2 with
what is wrong and the fix, never a hollow `ok: 4 done` (issue 13). Each stage's own opt-out moves
the failure to the next stage, and with all of them the run succeeds."""

from __future__ import annotations

import json
from typing import Any

import pytest

PIPELINE = """\
stages:
  ingest: {uses: ingest, inputs: {data: data/chat.jsonl}}
  clean: {uses: clean, inputs: {records: ingest.records}, with: {max_tokens: 4096}}
  format: {uses: format, inputs: {records: clean.records}, with: {target: openai-chat}}
  split: {uses: split, inputs: {examples: format.examples}, with: {validation: 0.2}}
"""

# Each opt-out in turn, and the failure it moves the run on to (stage, words of its message).
STEPS: list[tuple[str | None, str, str]] = [
    (None, "ingest", "no records read from data/chat.jsonl: the file holds no records"),
    ("ingest.allow_empty=true", "clean", "ingest.records holds no records, so clean has nothing to keep"),
    ("clean.allow_empty=true", "format", "format wrote no valid example (of 0 records in clean.records): fewer than "
                                         "10, OpenAI's minimum for a fine-tuning file"),
    ("format.min_examples=0", "split", "format.examples holds no examples, so every split would be empty"),
]


def chat(i: int) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": "Marv is sarcastic."},
                         {"role": "user", "content": f"Question number {i}?"},
                         {"role": "assistant", "content": f"Answer number {i}, obviously."}]}


def failed(project, *args: str) -> tuple[str, str]:
    """The run's result (stdout: the stage lines, the summary) and its diagnostics (stderr: the
    error), each on one line: the terminal view may wrap long lines."""
    result = project.run("run", "p.yaml", *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return " ".join(result.stdout.split()), " ".join(result.stderr.split())


def test_an_empty_data_file_fails_at_each_stage_in_turn_until_every_one_allows_it(project) -> None:
    project.write("data/chat.jsonl", "")
    project.spec(PIPELINE)
    overrides: list[str] = []
    for override, stage, message in STEPS:
        if override:
            overrides += ["-S", override]
        out, err = failed(project, *overrides)
        assert f"✗ {stage} failed" in out and message in err, (stage, out, err)
        assert "allow_empty: true" in err or "min_examples: 0" in err  # the fix is named
        assert "ok:" not in out
    result = project.ok("run", "p.yaml", *overrides, "-S", "split.allow_empty=true")
    assert "ok: 3 cached, 1 done" in result.stdout
    assert "! split: the input holds no examples: every split is empty" in result.stderr


@pytest.mark.parametrize(("records", "stage", "message"), [
    ([chat(i) for i in range(5)], "format",
     "format wrote 5 valid examples (of 5 records in clean.records): fewer than 10, OpenAI's minimum"),
    (["not json", "{}"], "ingest", "2 of 2 records were rejected (100%), more than max_reject_rate 0.5"),
    ([chat(1)] * 3, "format", "format wrote 1 valid example (of 1 record in clean.records)"),
])
def test_too_little_data_fails_the_stage_that_finds_it(project, records: list[Any], stage: str,
                                                        message: str) -> None:
    project.write("data/chat.jsonl", "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    project.spec(PIPELINE.replace("inputs: {data: data/chat.jsonl}",
                                  "inputs: {data: data/chat.jsonl}, with: {on_error: skip}"))
    out, err = failed(project)
    assert f"✗ {stage} failed" in out and message in err


def test_twelve_good_examples_run_to_the_end(project) -> None:
    project.write("data/chat.jsonl", "".join(json.dumps(chat(i)) + "\n" for i in range(12)))
    project.spec(PIPELINE)
    result = project.ok("run", "p.yaml")
    assert "ok: 4 done" in result.stdout and "examples=12" in result.stdout
