"""``pipeline schema``: one JSON Schema with every installed plugin's parameters, for editors; every
shipped pipeline follows it and carries the yaml-language-server comment; broken ones fail it."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from jsonschema import Draft7Validator, Draft202012Validator

from tunepipe.registry import Registry
from tunepipe.spec.export import export_schema
from tunepipe.spec.yamlpos import load_file

ROOT = Path(__file__).parents[1]
SHIPPED = sorted((ROOT / "pipelines").glob("*.yaml")) + [ROOT / "src" / "tunepipe" / "scaffold" / "pipeline.yaml"]
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")


@pytest.fixture(scope="module")
def exported() -> dict:
    return export_schema(Registry(search_paths=[ROOT / "tests" / "support"]))


def errors(schema: dict, data: object) -> list[str]:
    return sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in
                  Draft202012Validator(schema).iter_errors(data))


def test_the_export_is_a_valid_2020_12_schema_with_every_plugin(exported: dict) -> None:
    Draft202012Validator.check_schema(exported)
    assert exported["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    for name in Registry().names():
        assert f"with_{name}" in exported["$defs"]
    uses = exported["$defs"]["stage"]["properties"]["uses"]["anyOf"]
    assert {"const": "clean", "description": Registry().load("clean").plugin.description} in uses
    rule = next(r for r in exported["$defs"]["stage"]["allOf"] if r["if"]["properties"]["uses"]["const"] == "split")
    assert rule["then"]["properties"]["with"] == {"$ref": "#/$defs/with_split"}


def test_the_export_means_the_same_to_a_draft_7_editor(exported: dict) -> None:
    """Editors (yaml-language-server) implement draft-07: the export must not rely on newer keywords."""
    text = json.dumps(exported)
    for newer in ("prefixItems", "unevaluated", "$dynamicRef", "dependentRequired", "dependentSchemas"):
        assert newer not in text
    draft7 = copy.deepcopy(exported)
    draft7["$schema"] = "http://json-schema.org/draft-07/schema#"
    Draft7Validator.check_schema(draft7)
    for path in SHIPPED:
        assert list(Draft7Validator(draft7).iter_errors(load_file(path).data)) == []


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_pipeline_follows_the_exported_schema(exported: dict, path: Path) -> None:
    assert errors(exported, load_file(path).data) == []


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_pipeline_names_its_schema_for_editors(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    m = MODELINE.match(first)
    assert m, f"{path} must start with '# yaml-language-server: $schema=...'"
    target = m.group(1)
    if path.parent.name == "scaffold":
        assert target == "pipeline.schema.json"  # written next to it by `pipeline init`
    else:
        assert (path.parent / target).resolve().is_file(), target


def test_a_broken_pipeline_fails_the_exported_schema(exported: dict) -> None:
    data = load_file(ROOT / "pipelines" / "sarcasm.yaml").data
    broken = copy.deepcopy(data)
    broken["stages"]["clean"]["with"]["dedupe"] = "nearr"
    broken["stages"]["clean"]["with"]["max_tokens"] = "many"
    broken["stages"]["split"]["with"]["sed"] = 3
    broken["stages"]["split"]["inputs"]["example"] = "format.examples"
    broken["stages"]["format"]["uses"] = "formt"
    broken["stagse"] = {}
    found = "\n".join(errors(exported, broken))
    assert "stages/clean/with/dedupe: 'nearr' is not valid" in found
    assert "stages/clean/with/max_tokens: 'many' is not valid" in found
    assert "stages/split/with: Additional properties are not allowed ('sed' was unexpected)" in found
    assert "stages/split/inputs: 'example' is not one of ['examples']" in found
    assert "stages/format/uses: 'formt' is not valid" in found
    assert ": Additional properties are not allowed ('stagse' was unexpected)" in found


def test_references_templates_matrix_and_includes_are_accepted(exported: dict) -> None:
    data = {
        "include": ["shared/base.yaml", "some_pkg:fragments/x.yaml"],
        "vars": {"n": 3},
        "templates": {"t": {"params": {"n": {"default": 1, "type": "integer"}, "s": "short"},
                            "stage": {"uses": "clean", "with": {"max_tokens": "${params.n}"}}}},
        "stages": {
            "a": {"template": "t", "params": {"n": 2}},
            "b": {"uses": "clean", "matrix": {"m": [1, 2]}, "inputs": {"records": "a.records"},
                  "with": {"max_tokens": "${matrix.m}", "num_perm": "${vars.n}"}},
            "c": {"uses": "split", "inputs": {"examples": "b@*.records"}},
            "gone": None,
            "d": {"uses": "my_project.stages:Thing", "with": {"anything": 1}},
        },
    }
    assert errors(exported, data) == []
    data["templates"]["t"]["stage"]["with"]["max_tokenz"] = 1
    data["templates"]["t"]["params"]["n"]["defualt"] = 1
    found = errors(exported, data)
    assert any("max_tokenz" in e for e in found) and any("defualt" in e for e in found)


def test_the_command_prints_or_writes_the_schema(project) -> None:
    printed = json.loads(project.ok("schema").stdout)
    result = project.ok("schema", "-o", "out/pipeline.schema.json")
    assert "wrote out/pipeline.schema.json" in result.stderr
    assert json.loads((project.root / "out" / "pipeline.schema.json").read_text()) == printed
    assert "with_ingest" in printed["$defs"]


def test_the_base_schema_is_what_the_runner_checks_each_file_with() -> None:
    base = json.loads((ROOT / "schemas" / "pipeline.schema.json").read_text())
    Draft202012Validator.check_schema(base)
    assert set(base["properties"]) == {"name", "description", "include", "vars", "templates", "executor", "tracking",
                                       "stages"}
