"""``pipeline stages``: where each plugin comes from, and ``stages NAME`` with a usable example."""

from __future__ import annotations

import json

import pytest

from tunepipe import __version__
from tunepipe.registry import Registry
from tunepipe.spec import schema
from tunepipe.spec.yamlpos import load_text

BUILTINS = Registry().names()


def test_the_listing_names_each_plugin_s_package_and_version(project) -> None:
    out = project.ok("stages").stdout
    for block in out.split("\n\n"):
        assert block.splitlines()[1] == f"  from   tunepipe {__version__}", block
    data = json.loads(project.ok("stages", "--json").stdout)
    assert {d["name"]: d["package"] for d in data}["split"] == {"kind": "package", "name": "tunepipe",
                                                                "version": __version__}


def test_a_module_next_to_the_pipeline_is_from_the_project(project) -> None:
    project.write("my_stage.py", "from tp_testplugins import Emit as Mine\n")
    out = project.ok("stages", "my_stage:Mine").stdout
    assert out.splitlines()[1] == "  from   project (my_stage.py)"
    # on sys.path, but neither next to the project nor an installed distribution
    support = project.ok("stages", "tp_testplugins:Emit").stdout.splitlines()[1]
    assert support == "  from   unknown (not an installed distribution)"


def test_one_plugin_in_full_shows_nested_parameters_and_an_example(project) -> None:
    out = project.ok("stages", "train").stdout
    assert "  param  lora.r: integer = 8  LoRA rank." in out
    example = out.split("  example:\n", 1)[1]
    assert example.startswith("    my_train:\n      uses: train\n      inputs:\n        train: STAGE.OUTPUT")
    assert "        # validation: STAGE.OUTPUT  # optional: " in example
    assert "        lora:  # " in example and "          r: 8  # LoRA rank" in example


@pytest.mark.parametrize("name", BUILTINS)
def test_the_example_is_yaml_whose_with_block_passes_the_plugin_s_schema(project, name: str) -> None:
    out = project.ok("stages", name).stdout
    example = "\n".join(line[4:] for line in out.split("  example:\n", 1)[1].splitlines())
    doc = load_text(example, "example.yaml")
    (stage,) = doc.data.values()
    assert stage["uses"] == name
    plugin = Registry().load(name).plugin
    assert schema.check(doc, stage.get("with") or {}, plugin.params_schema, (), lambda rel: str(rel)) == []
    assert set(stage.get("inputs") or {}) == {n for n, p in plugin.inputs.items() if not p.optional}
