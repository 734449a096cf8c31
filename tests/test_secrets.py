"""Secrets whose variable only a stage names (``openai.api_key_env: MYCREDS``): refused in the spec and
in ``-S`` values (exit 2, nothing written), redacted from what a run prints and writes, and known to
the processes a run starts. Through the real CLI; the OpenAI API is the aimock emulator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from aimock import aimock_factory  # noqa: F401  (pytest fixture)

from tunepipe.redact import SECRET_ENV, add_secret_names, find_secret, redact, secret_values

VALUE = "hunter2-mycreds-0123456789abcdef"
MODEL = "gpt-4o-mini-2024-07-18"

SPEC = f"""\
vars: {{tag: marv}}
stages:
  train:
    uses: train
    inputs: {{train: data/train.jsonl}}
    with:
      backend: openai
      model: {MODEL}
      openai: {{api_key_env: MYCREDS, suffix: "${{vars.tag}}", poll_seconds: 0.05}}
"""

LEAK = """\
import os
from tunepipe.plugins import Port


class Leak:
    \"\"\"Prints, logs and returns the key by mistake: all of it must come out redacted.\"\"\"

    name = "leak"
    version = "1"
    description = "leaks MYCREDS"
    params_schema = {"type": "object"}
    inputs = {}
    outputs = {"out": Port("x")}
    packages = ()

    def run(self, ctx, inputs, params):
        key = os.environ["MYCREDS"]
        ctx.log.info("calling the API with key %s", key)
        ctx.say(f"using key {key}")
        (ctx.output("out") / "x").write_text("x")
        return {"note": f"key {key}"}
"""


@pytest.fixture(autouse=True)
def _secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names declared in this process (the CLI runs in it) are forgotten after each test."""
    monkeypatch.setenv(SECRET_ENV, "")
    monkeypatch.setenv("MYCREDS", VALUE)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture
def project_with_data(project):
    lines = "".join('{"messages": [{"role": "user", "content": "q%d"}, {"role": "assistant", "content": "a%d"}]}\n'
                    % (i, i) for i in range(12))
    project.write("data/train.jsonl", lines)
    project.spec(SPEC)
    return project


def _written(root: Path) -> list[Path]:
    """Every file under ``root`` that holds VALUE."""
    return [p for p in root.rglob("*") if p.is_file() and VALUE.encode() in p.read_bytes()]


# -- the secret set ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "HF_TOKEN", "GITHUB_TOKEN",
                                  "CLIENT_SECRET", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD"])
def test_the_name_pattern_covers_api_keys_tokens_and_secrets(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, VALUE)
    assert secret_values()[name] == VALUE and redact(f"x {VALUE} y") == f"x <{name}> y"


def test_declared_names_join_the_secret_set_and_reach_child_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHORTONE", "abc")
    monkeypatch.setenv("PADDED", f"  {VALUE}x\n")
    assert "MYCREDS" not in secret_values() and find_secret(f"a {VALUE}") is None
    add_secret_names(["MYCREDS", "OPENAI_API_KEY", "SHORTONE", "PADDED", "MYCREDS"])
    assert os.environ[SECRET_ENV] == "MYCREDS,SHORTONE,PADDED"  # the pattern's names are not stored
    values = secret_values()
    assert values["MYCREDS"] == VALUE and values["PADDED"] == f"{VALUE}x" and "SHORTONE" not in values
    assert find_secret(f"suffix {VALUE}") == "MYCREDS" and redact(f"key={VALUE}") == "key=<MYCREDS>"
    child = subprocess.run([sys.executable, "-c", f"from tunepipe.redact import redact; print(redact('k={VALUE}'))"],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "k=<MYCREDS>"


def test_the_stages_name_the_variables_they_read_api_keys_from() -> None:
    from tunepipe.stages.evaluate import Evaluate
    from tunepipe.stages.train import Train

    assert Train().secret_env({"backend": "local", "openai": {"api_key_env": "MYCREDS"}}) == []
    assert Train().secret_env({"backend": "openai", "openai": {"api_key_env": "MYCREDS"}}) == ["MYCREDS"]
    assert Train().secret_env({"backend": "openai"}) == ["OPENAI_API_KEY"]
    assert Evaluate().secret_env({"openai": {"api_key_env": "EVALKEY"}, "judge": None}) == ["EVALKEY"]
    assert Evaluate().secret_env({"openai": {"api_key_env": "EVALKEY"},
                                  "judge": {"model": MODEL, "api_key_env": "JUDGECREDS"}}) == ["EVALKEY", "JUDGECREDS"]


# -- refused where it is written --------------------------------------------------------------------

@pytest.mark.parametrize("override", ["train.openai.suffix={v}", "vars.tag={v}",
                                      "train.openai.metadata={{team: {v}}}"])
def test_a_set_value_holding_the_key_is_refused_and_nothing_is_written(project_with_data, override: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    project = project_with_data
    override = override.format(v=VALUE)
    for verb in ("run", "validate", "status"):
        monkeypatch.setenv(SECRET_ENV, "")  # each command a fresh process, which knows MYCREDS only from the spec
        result = project.run(verb, "p.yaml", "-S", override)
        assert result.exit_code == 2, result.output
        expected = f"--set {override.replace(VALUE, '<MYCREDS>')} holds the value of $MYCREDS, a secret"
        assert expected in result.stderr, result.stderr
        assert VALUE not in result.output and "Traceback" not in result.output
    assert _written(project.cache) == []
    assert not any((project.cache / "compiled").glob("*.json"))


def test_the_key_in_the_spec_file_is_refused_naming_the_parameter(project_with_data) -> None:
    project = project_with_data
    project.spec(SPEC.replace('suffix: "${vars.tag}"', f"suffix: {VALUE}"))
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2, result.output
    assert "stage 'train' parameter 'openai.suffix' holds the value of $MYCREDS, a secret" in result.stderr
    assert VALUE not in result.output
    assert _written(project.cache) == []
    project.spec(SPEC)
    assert project.ok("run", "p.yaml", "--dry-run").exit_code == 0  # the same cache, once the spec is fixed


# -- a run: the key is used, never written ----------------------------------------------------------

def test_a_run_uses_the_key_and_writes_it_nowhere(project_with_data, aimock_factory, monkeypatch) -> None:  # noqa: F811
    project = project_with_data
    server = aimock_factory(api_keys=[VALUE])  # the emulator accepts this key only
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    project.write("leak.py", LEAK)
    project.spec(SPEC + "  leak:\n    uses: leak:Leak\n")
    result = project.ok("run", "p.yaml")
    assert "leak: using key <MYCREDS>" in result.stderr and "train: fine-tuned model ft:" in result.stderr
    assert VALUE not in result.output
    assert _written(project.cache) == []
    assert any(b"<MYCREDS>" in p.read_bytes() for p in project.cache.rglob("*.log"))
    creates = server.job_creates()
    assert len(creates) == 1 and creates[0]["body"]["suffix"] == "marv"
    assert VALUE not in str(server.journal(path="/v1/fine_tuning/jobs"))


def test_the_list_of_declared_names_is_not_itself_a_secret(monkeypatch) -> None:
    """TUNEPIPE_SECRET_ENV matches the name pattern (SECRET) but holds names, not a secret."""
    from tunepipe.redact import add_secret_names, find_secret

    monkeypatch.delenv("TUNEPIPE_SECRET_ENV", raising=False)
    monkeypatch.setenv("OTHER_CREDENTIALS", "x" * 20)
    add_secret_names(["OTHER_CREDENTIALS"])
    assert find_secret("api_key_env: OTHER_CREDENTIALS") is None
    assert find_secret("x" * 20) == "OTHER_CREDENTIALS"
