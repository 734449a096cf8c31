"""``pipeline init``: a project that runs at once, and never an overwritten file."""

from __future__ import annotations

import json
import re
from pathlib import Path

from jsonschema import Draft202012Validator

from tunepipe.spec.yamlpos import load_file

FILES = ["pipeline.yaml", "data/examples.jsonl", ".gitignore", "pipeline.schema.json"]


def test_init_writes_a_project_that_runs(project) -> None:
    result = project.ok("init", "proj")
    assert result.stdout.splitlines() == [f"created proj/{f}" for f in FILES]
    assert "next: pipeline run proj/pipeline.yaml" in result.stderr
    root = project.root / "proj"
    examples = (root / "data" / "examples.jsonl").read_text().splitlines()
    assert len(examples) >= 12 and all(json.loads(e)["messages"] for e in examples)
    assert ".tunepipe/" in (root / ".gitignore").read_text().splitlines()
    text = (root / "pipeline.yaml").read_text()
    assert text.startswith("# yaml-language-server: $schema=pipeline.schema.json\n")
    assert sum(1 for line in text.splitlines() if line.lstrip().startswith("#")) > 20  # commented
    run = project.ok("run", "proj/pipeline.yaml")
    for stage in ("ingest", "clean", "format", "split"):
        assert re.search(rf"✓ {stage} +done", run.stdout), run.output
    assert "ok: 4 done" in run.stdout and run.stdout.startswith("pipeline proj: 4 stages")
    assert "ok: 4 cached" in project.ok("run", "proj/pipeline.yaml").stdout
    schema = json.loads((root / "pipeline.schema.json").read_text())
    assert list(Draft202012Validator(schema).iter_errors(load_file(root / "pipeline.yaml").data)) == []


def test_the_commented_training_block_is_valid_once_uncommented(project) -> None:
    project.ok("init", "proj")
    spec = project.root / "proj" / "pipeline.yaml"
    lines = spec.read_text().splitlines()
    start = lines.index("  # train:")
    end = lines.index("  # evaluate:")
    out = lines[:start]
    for line in lines[start:end]:
        if line.startswith("  #   # ") or line.strip() == "#":
            out.append(line)
        else:
            out.append(line.replace("  # ", "  ", 1))
    spec.write_text("\n".join(out) + "\n")
    result = project.ok("validate", "proj/pipeline.yaml")
    assert "train@epochs=2, train@epochs=3" in result.stdout


def test_init_in_the_current_folder(project) -> None:
    project.ok("init")
    assert all((project.root / f).is_file() for f in FILES)


def test_init_never_overwrites_and_writes_nothing_when_a_file_exists(project) -> None:
    project.write("proj/.gitignore", "mine\n")
    project.write("proj/data/examples.jsonl", "mine\n")
    result = project.run("init", "proj")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "not overwriting existing files: proj/data/examples.jsonl, proj/.gitignore" in result.stderr
    assert not (project.root / "proj" / "pipeline.yaml").exists()
    assert (project.root / "proj" / ".gitignore").read_text() == "mine\n"


def test_init_into_a_file_is_a_user_error(project) -> None:
    project.write("afile", "x")
    result = project.run("init", "afile")
    assert result.exit_code == 2
    assert "not a folder" in result.stderr or "is a file" in result.stderr


def test_the_scaffold_ships_inside_the_package() -> None:
    import tunepipe.scaffold as scaffold

    for name in scaffold.TEMPLATES.values():
        assert (Path(scaffold.__file__).parent / name).is_file()
