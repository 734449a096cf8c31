"""The plugin example in docs/plugins.md works as documented."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

DOCS = Path(__file__).parents[1] / "docs" / "plugins.md"
PIPELINES = Path(__file__).parents[1] / "pipelines"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)


def test_the_documented_plugin_runs_in_the_documented_pipeline(project) -> None:
    code = _blocks("python")[0]
    spec = _blocks("yaml")[0]
    project.write("tp_shortreplies/__init__.py", code)
    shutil.copytree(PIPELINES / "data", project.root / "data")
    project.spec(spec)
    result = project.ok("run", "p.yaml")
    assert "short     done" in result.stdout
    info = json.loads(project.ok("show", "p.yaml", "short", "--json").stdout)
    records = json.loads(project.ok("show", "p.yaml", "ingest", "--json").stdout)["summary"]["records"]
    kept = info["summary"]["kept"]
    assert 0 < kept < records and kept + info["summary"]["dropped"] == records
    out = Path(info["outputs"]["records"]["path"]) / "records.jsonl"
    for line in out.read_text().splitlines():
        reply = [m["content"] for m in json.loads(line)["messages"] if m["role"] == "assistant"][0]
        assert len(reply.split()) <= 12
    listing = project.ok("stages", "tp_shortreplies:ShortReplies").stdout
    assert "max_words: integer = 20" in listing


def test_ci_runs_exactly_the_readme_s_test_command() -> None:
    root = Path(__file__).parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    block = readme.split("# install and run the tests", 1)[1].split("```", 1)[0]
    command = [line for line in block.splitlines()[1:] if line.strip()][0].strip()
    ci = [line for line in (root / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci == [command]
    assert command.endswith(".venv/bin/python -m pytest")  # not `|| true`: a failure or no tests fails CI
