"""The pipeline's ``tracking:``: each tracker's name and settings checked where they are written.

The schema has checked the shape (a name, or names with mappings); here an unknown tracker is
named at its line with the installed ones, and each tracker's settings are checked against its
own schema. Tracking never enters a cache key: it only says where a finished run is logged.
"""

from __future__ import annotations

import re
from typing import Any

from tunepipe.errors import PluginError, Problem
from tunepipe.spec import schema
from tunepipe.spec.yamlpos import Document, JsonPath
from tunepipe.tracking import registry

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")  # what the schema allows; others are reported there


def normalise_tracking(raw: Any) -> dict[str, dict[str, Any]]:
    """``mlflow`` -> ``{"mlflow": {}}``; a mapping keeps each tracker's settings (null: {})."""
    if isinstance(raw, str):
        return {raw: {}}
    if isinstance(raw, dict):
        return {str(k): dict(v) if isinstance(v, dict) else {} for k, v in raw.items()}
    return {}


def tracking_problems(doc: Document, raw: Any) -> list[Problem]:
    """Unknown trackers (with the installed ones), trackers that fail to load, settings they refuse."""
    problems: list[Problem] = []
    for name, settings in normalise_tracking(raw).items():
        if not _NAME.match(name):
            continue
        path: JsonPath = ("tracking",) if isinstance(raw, str) else ("tracking", name)
        named_by_key = not isinstance(raw, str)
        if name not in registry.available():
            problems.append(doc.problem(path, f"unknown tracker '{name}' in 'tracking'", registry.unknown_hint(name),
                                        key=named_by_key))
            continue
        try:
            cls = registry.load(name)
            found = schema.check(doc, settings, cls.settings_schema, ("tracking", name),
                                 lambda rel, n=name: f"tracker '{n}'" + (f" setting '{'.'.join(map(str, rel))}'"
                                                                         if rel else ""), noun="setting")
        except PluginError as e:
            found = [doc.problem(path, e.message, "", key=named_by_key)]
        except schema.SchemaError as e:
            found = [doc.problem(path, f"tracker '{name}' publishes an invalid settings_schema: {e.message}",
                                 "this is a bug in the tracker: report it to its authors", key=named_by_key)]
        problems.extend(found)
    return problems
