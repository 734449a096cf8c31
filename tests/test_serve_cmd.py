"""`pipeline serve` through the real CLI: a trained tiny model behind the OpenAI API, called with
the official SDK exactly as an application written for an OpenAI fine-tuned model would call it;
Ctrl-C stops it; a port in use and an OpenAI-trained model are one clear line and exit 2."""

from __future__ import annotations

import re
import shutil
import signal
import socket
from pathlib import Path

import openai
import pytest
from aimock import aimock, aimock_factory, aimock_server  # noqa: F401,F811  (pytest fixtures)
from model_out import LOCAL, examples, train_on_aimock, trained, varied  # noqa: F401  (fixtures too)


def _start(project, *args: str) -> tuple[object, str]:
    proc = project.subprocess("serve", "p.yaml", "--port", "0", *args, env={"HF_HUB_OFFLINE": "1"})
    line = proc.stdout.readline()
    match = re.search(r"at (http://\S+/v1)", line)
    assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, match.group(1)


def test_an_application_written_for_openai_talks_to_the_local_model(trained) -> None:  # noqa: F811
    proc, url = _start(trained)
    try:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == ["p/train"]
        messages = [{"role": "system", "content": "Marv."}, {"role": "user", "content": "What is 2 plus 2?"}]
        answer = client.chat.completions.create(model="p/train", messages=messages, max_tokens=8, temperature=0)
        expected = trained.ok("chat", "p.yaml", "--system", "Marv.", "--prompt", "What is 2 plus 2?",
                              "--max-new-tokens", "8").stdout.strip()
        assert answer.choices[0].message.content == expected and expected
        streamed = client.chat.completions.create(model="p/train", messages=messages, max_tokens=8, temperature=0,
                                                  stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected
        with pytest.raises(openai.NotFoundError, match="p/train"):
            client.chat.completions.create(model="gpt-4o", messages=messages)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    assert "Traceback" not in proc.stderr.read()


def test_a_port_in_use_is_one_line_and_exit_2(trained) -> None:  # noqa: F811
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = trained.run("serve", "p.yaml", "--port", str(port))
    assert result.exit_code == 2
    assert f"port {port} on 127.0.0.1 is in use" in result.output and "Traceback" not in result.output


def test_a_stage_that_has_not_run_is_not_served(project, tiny_model: Path) -> None:
    shutil.copytree(tiny_model, project.root / "base")
    project.write("data/chat.jsonl", examples(24))
    project.spec(LOCAL)
    result = project.run("serve", "p.yaml")
    assert result.exit_code == 2 and "run `pipeline run p.yaml train` first" in result.output


def test_an_openai_model_is_served_by_openai_and_the_command_says_where(project, aimock,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    model = train_on_aimock(project, aimock, monkeypatch, "sk-test-serve")
    result = project.run("serve", "p.yaml")
    assert result.exit_code == 2
    assert f"backend 'openai', which serves it itself: call it there with model='{model}'" in result.output
