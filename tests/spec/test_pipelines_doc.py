"""docs/pipelines.md works as written: every example's files are written to a fresh project, and
every command of its console blocks is run and its output compared (timings aside)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunepipe.spec import schema
from tunepipe.spec.yamlpos import load_text

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "pipelines.md"
BLOCK = re.compile(r"```(\w+)( file=(\S+))?\n(.*?)```", re.S)


def examples() -> dict[str, str]:
    parts = re.split(r"<!-- example: ([\w-]+) -->", DOC.read_text(encoding="utf-8"))
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _normal(text: str) -> str:
    return re.sub(r"\b\d+\.\d+s\b", "0.00s", text).rstrip()


@pytest.mark.parametrize("name", list(examples()))
def test_documented_example(name: str, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "pipelines" / "data", tmp_path / "data")
    commands = 0
    for lang, _, file, body in BLOCK.findall(examples()[name]):
        if file:
            (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / file).write_text(body, encoding="utf-8")
        elif lang == "console":
            for cmd, expected in re.findall(r"^\$ (.*)\n((?:(?!\$ ).*\n)*)", body, flags=re.M):
                args = shlex.split(cmd)
                assert args[0] == "pipeline", cmd
                env = {**os.environ, "NO_COLOR": "1"}
                env.pop("TUNEPIPE_CACHE", None)
                out = subprocess.run([sys.executable, "-m", "tunepipe", *args[1:]], cwd=tmp_path, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                assert _normal(out.stdout) == _normal(expected), f"$ {cmd}\n{out.stdout}"
                commands += 1
    assert commands, f"example {name} runs no command"


def test_every_example_is_tested() -> None:
    assert set(examples()) == {"includes", "include-errors", "templates", "template-errors", "matrix"}


def test_yaml_blocks_without_a_file_follow_the_pipeline_schema() -> None:
    text = DOC.read_text(encoding="utf-8")
    blocks = [body for lang, _, file, body in BLOCK.findall(text) if lang == "yaml" and not file]
    assert blocks
    for body in blocks:
        doc = load_text(body, "doc.yaml")
        assert schema.check(doc, doc.data, schema.pipeline_schema(), (), lambda rel: str(rel)) == []
