"""Operational parameters never enter a cache key: a table over every built-in plugin.

Each built-in declares its operational parameters (``operational``); for each one this changes the
value through ``-S`` (as a user would) to another value its schema accepts and checks that every
stage key of the pipeline stays the same, while a parameter that shapes the result changes it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tunepipe.plan import Planner
from tunepipe.registry import Registry
from tunepipe.session import open_session

BUILTINS = ("ingest", "clean", "format", "split", "train", "evaluate")

PIPELINE = """\
name: ops
stages:
  ingest: {uses: ingest, inputs: {data: data.jsonl}}
  clean: {uses: clean, inputs: {records: ingest.records}}
  format: {uses: format, inputs: {records: clean.records}}
  split: {uses: split, inputs: {examples: format.examples}}
  train_local: {uses: train, inputs: {train: split.train}}
  train_openai:
    uses: train
    inputs: {train: split.train}
    with: {backend: openai}
  evaluate:
    uses: evaluate
    inputs: {model: model.json, examples: data.jsonl}
    with:
      judge: {model: gpt-4o-mini-2024-07-18, rubric: {sarcastic: The reply is sarcastic.}}
"""

# Which stage of PIPELINE exercises a path of a plugin (train's settings belong to one backend each).
STAGE_FOR = {"train": lambda path: "train_openai" if path.startswith("openai.") else "train_local"}


def _subschema(schema: dict[str, Any], path: str) -> dict[str, Any]:
    for part in path.split("."):
        schema = schema["properties"][part]
    return schema


def _other_value(schema: dict[str, Any]) -> Any:
    """A value the schema accepts that differs from its default."""
    default = schema.get("default")
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if "enum" in schema:
        value: Any = next(v for v in schema["enum"] if v != default)
    elif "integer" in types:
        value = (default if isinstance(default, int) else int(schema.get("minimum", 1))) + 1
    elif "number" in types:
        value = (default if isinstance(default, (int, float)) else 1.0) * 2 + 0.5
    elif "object" in types:
        kind = (schema.get("additionalProperties") or {}).get("type", "number")
        value = {"some-model": 1000 if kind == "integer" else 2.5}
    elif "string" in types:
        value = "OTHER_CREDENTIALS"
    else:
        raise AssertionError(f"no alternative value for {schema}")
    jsonschema.Draft202012Validator(schema).validate(value)
    assert value != default
    return value


def _cases() -> list[tuple[str, str]]:
    registry = Registry()
    cases = []
    for name in BUILTINS:
        plugin = registry.load(name).plugin
        for path in getattr(plugin, "operational", ()):
            cases.append((name, path))
    return cases


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    (tmp_path / "data.jsonl").write_text(json.dumps({"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n")
    (tmp_path / "model.json").write_text("{}")
    (tmp_path / "p.yaml").write_text(PIPELINE)
    return tmp_path


def _keys(project: Path, overrides: tuple[str, ...] = ()) -> dict[str, str | None]:
    session = open_session(str(project / "p.yaml"), overrides, reuse_validated=False)
    planner = Planner(session.pipeline, session.store, session.registry)
    # Stage outputs do not exist yet: give every stage the same fake upstream digests, so that every
    # stage gets a key (only the stage's own parameters differ between the two plans compared).
    upstream = {name: {out: "0" * 64 for out in spec.outputs} for name, spec in session.pipeline.stages.items()}
    return {name: planner.prepare(name, upstream, False).key for name in session.pipeline.stages}


def test_every_builtin_declares_its_operational_parameters() -> None:
    declared = {name for name, _ in _cases()}
    assert {"ingest", "train", "evaluate"} <= declared
    assert ("train", "openai.poll_seconds") in _cases() and ("train", "openai.max_cost_usd") in _cases()
    assert ("train", "openai.base_url") not in _cases()  # another endpoint is another service


@pytest.mark.parametrize(("plugin", "path"), _cases(), ids=[f"{p}:{q}" for p, q in _cases()])
def test_changing_an_operational_parameter_leaves_every_key_unchanged(project: Path, plugin: str,
                                                                      path: str) -> None:
    schema = Registry().load(plugin).plugin.params_schema
    stage = STAGE_FOR.get(plugin, lambda _: plugin)(path)
    value = _other_value(_subschema(schema, path))
    before = _keys(project)
    after = _keys(project, (f"{stage}.{path}={json.dumps(value)}",))
    assert all(before.values())
    assert after == before, f"{stage}.{path}={value!r} changed a key"


@pytest.mark.parametrize("override", ["train_local.epochs=4", "train_openai.openai.base_url=http://127.0.0.1:9/v1",
                                      "evaluate.decoding.max_new_tokens=9", "ingest.on_error=skip"])
def test_a_parameter_that_shapes_the_result_changes_the_key(project: Path, override: str) -> None:
    stage = override.split(".")[0]
    before, after = _keys(project), _keys(project, (override,))
    assert after[stage] != before[stage]


def _pipeline(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunepipe", *args], cwd=project, capture_output=True, text=True,
                          timeout=120)


def test_explain_and_status_name_an_operational_change_and_nothing_reruns(project: Path) -> None:
    (project / "p.yaml").write_text("name: ops\nstages:\n"
                                    "  ingest: {uses: ingest, inputs: {data: data.jsonl}, with: {workers: 0}}\n")
    first = _pipeline(project, "run", "p.yaml")
    assert first.returncode == 0, first.stderr
    again = _pipeline(project, "run", "p.yaml", "--explain", "-S", "ingest.workers=2")
    assert again.returncode == 0, again.stderr
    assert "ingest    cached" in again.stdout and "done" not in again.stdout + again.stderr
    # --explain's note under the cached line: a diagnostic
    assert "operational setting workers: 0 -> 2 (operational, not in the key)" in again.stderr
    # that run is now the last one: against it, workers: 0 is the operational change
    status = _pipeline(project, "status", "p.yaml")
    assert "fresh" in status.stdout and "operational setting workers: 2 -> 0" in status.stdout
    as_json = json.loads(_pipeline(project, "status", "p.yaml", "--json").stdout)
    assert as_json["stages"][0]["state"] == "fresh"
    assert as_json["stages"][0]["operational_changes"] == [
        "operational setting workers: 2 -> 0 (operational, not in the key)"]
    assert "operational" not in _pipeline(project, "status", "p.yaml", "-S", "ingest.workers=2").stdout
    listing = _pipeline(project, "stages", "train")
    assert "operational (not in the cache key" in listing.stdout and "openai.poll_seconds" in listing.stdout
