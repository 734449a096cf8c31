"""``pipeline schema``: one JSON Schema for pipeline files, with every installed plugin's parameters.

The base schema (``schemas/pipeline.schema.json``, what the runner checks each file with) plus,
for each plugin, an ``if uses == NAME then with: <the plugin's params_schema>`` rule, so an
editor (yaml-language-server, VS Code, JetBrains) completes and checks ``with:`` per plugin and
lists the plugins for ``uses:``.

Editors mostly implement JSON Schema draft-07; the export therefore uses only keywords that
mean the same in draft-07 and 2020-12 (``if``/``then``, ``allOf``, ``anyOf``, ``const``, no
``$ref`` next to other keywords, ``$ref`` by JSON pointer), while declaring 2020-12.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from tunepipe import __version__
from tunepipe.registry import LoadedPlugin, Registry
from tunepipe.spec.schema import pipeline_schema

_SAFE = re.compile(r"[^A-Za-z0-9_]")


def _rebase_refs(node: Any, prefix: str) -> Any:
    """Point a plugin schema's local ``$ref``s (``#/...``) at where the schema now lives."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#"):
                out[k] = prefix + v[1:]
            elif k in ("$schema", "$id"):
                continue  # only a schema's root may declare them
            else:
                out[k] = _rebase_refs(v, prefix)
        return out
    if isinstance(node, list):
        return [_rebase_refs(v, prefix) for v in node]
    return node


REFERENCE = {"type": "string", "pattern": r"^\$\{[^}]+\}$",
             "description": "a reference, e.g. ${vars.NAME}, ${matrix.KEY} or ${params.NAME}, replaced before checking"}


def _allow_references(node: Any) -> Any:
    """Let every parameter also be a whole ``${...}`` reference (checked once it is replaced)."""
    if not isinstance(node, dict):
        return node
    out = dict(node)
    if isinstance(node.get("properties"), dict):
        out["properties"] = {k: _wrap(v) for k, v in node["properties"].items()}
    if isinstance(node.get("items"), dict):
        out["items"] = _wrap(node["items"])
    return out


def _wrap(sub: Any) -> Any:
    if not isinstance(sub, dict):
        return sub
    wrapper: dict[str, Any] = {k: sub[k] for k in ("description", "default") if k in sub}
    wrapper["anyOf"] = [_allow_references(sub), REFERENCE]
    return wrapper


def export_schema(registry: Registry, names: list[str] | None = None) -> dict[str, Any]:
    """The pipeline schema with per-plugin ``with:`` (all installed plugins, or ``names``)."""
    out = copy.deepcopy(pipeline_schema())
    loaded: list[LoadedPlugin] = [registry.load(n) for n in (names if names is not None else registry.names())]
    out["$id"] = "https://tunepipe.dev/schemas/pipeline.full.schema.json"
    out["$comment"] = (f"Written by `pipeline schema` (tunepipe {__version__}) with the plugins "
                       f"{', '.join(lp.uses for lp in loaded) or 'none'}; write it again after installing plugins.")
    defs = out["$defs"]
    rules = []
    choices: list[dict[str, Any]] = []
    for lp in loaded:
        key = "with_" + _SAFE.sub("_", lp.uses)
        defs[key] = _allow_references(_rebase_refs(copy.deepcopy(dict(lp.plugin.params_schema)), f"#/$defs/{key}"))
        defs[key].setdefault("description", f"Parameters of {lp.uses}: {lp.plugin.description}")
        ports = lp.plugin.inputs
        inputs: dict[str, Any] = {
            "properties": {n: {"description": port.description + (" (optional)" if port.optional else "")
                               + (" (a list)" if port.multiple else "")} for n, port in ports.items()},
            "propertyNames": {"enum": list(ports)},
        }
        rules.append({
            "if": {"properties": {"uses": {"const": lp.uses}}, "required": ["uses"]},
            "then": {"properties": {"with": {"$ref": f"#/$defs/{key}"}, "inputs": inputs}},
        })
        choices.append({"const": lp.uses, "description": lp.plugin.description})
    choices.append({"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$",
                    "description": "a plugin of your own: package.module:Name (a module next to the pipeline "
                                   "file, or an installed one)"})
    for name in ("stage", "template_stage"):
        d = defs[name]
        uses = d["properties"]["uses"]
        uses["anyOf"] = choices
        if rules:
            d["allOf"] = rules
    _add_trackers(defs["tracking"])
    return out


def _add_trackers(tracking: dict[str, Any]) -> None:
    """Each installed tracker's settings under ``tracking: {NAME: ...}`` (one that fails to load is
    left out: ``pipeline validate`` says why)."""
    from tunepipe.errors import PluginError
    from tunepipe.tracking import registry

    mapping = next(alt for alt in tracking["oneOf"] if alt.get("type") == "object")
    mapping["properties"] = {}
    for name in registry.names():
        try:
            settings = copy.deepcopy(dict(registry.load(name).settings_schema))
        except PluginError:
            continue
        mapping["properties"][name] = {"anyOf": [settings, {"type": "null"}]}
