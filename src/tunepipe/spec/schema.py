"""JSON Schema checks of a pipeline and of each stage's parameters, as helpful problems.

jsonschema's own messages ("Additional properties are not allowed ('dedup' was unexpected)")
are turned into messages that name the place, the key, and a "did you mean" where one exists.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunepipe.errors import Problem

if TYPE_CHECKING:
    from tunepipe.spec.yamlpos import Document, JsonPath

_JSON_TYPES = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
               int: "an integer", float: "a number", type(None): "null"}
_SCHEMA_TYPES = {"object": "a mapping", "array": "a list", "string": "a string", "boolean": "a boolean",
                 "integer": "an integer", "number": "a number", "null": "null"}


def schemas_dir() -> Path:
    """Where the JSON Schemas are: inside an installed wheel, or at the top of a source checkout."""
    here = Path(__file__).resolve().parent.parent
    packaged = here / "schemas"
    return packaged if packaged.is_dir() else here.parent.parent / "schemas"


def pipeline_schema_path() -> Path:
    return schemas_dir() / "pipeline.schema.json"


@functools.cache
def pipeline_schema() -> dict[str, Any]:
    return json.loads(pipeline_schema_path().read_text(encoding="utf-8"))


class SchemaError(Exception):
    """A plugin's parameter schema is not valid JSON Schema (the plugin's bug, not the user's)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@functools.cache
def _validator_for(schema_json: str) -> Any:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError as _JsonSchemaError

    schema = json.loads(schema_json)
    try:
        Draft202012Validator.check_schema(schema)
    except _JsonSchemaError as e:
        raise SchemaError(f"{e.message} (at {'/'.join(map(str, e.absolute_path)) or 'the top'})") from None
    return Draft202012Validator(schema)


def validator(schema: Mapping[str, Any]) -> Any:
    """A compiled Draft 2020-12 validator (cached by the schema's canonical JSON)."""
    return _validator_for(json.dumps(schema, sort_keys=True))


def describe(value: Any) -> str:
    kind = _JSON_TYPES.get(type(value), type(value).__name__)
    if isinstance(value, (dict, list)):
        return kind
    text = json.dumps(value)
    return f"{kind} ({text if len(text) < 40 else text[:37] + '...'})"


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""


def _allowed_keys(schema: Mapping[str, Any]) -> list[str]:
    return sorted(schema.get("properties", {}))


def check(doc: Document, instance: Any, schema: Mapping[str, Any], base: JsonPath,
          where: Callable[[JsonPath], str], noun: str = "key") -> list[Problem]:
    """Validate ``instance`` (found at ``base`` in ``doc``) and return every problem.

    ``where(path)`` names a place for a message ("stage 'clean'"); ``noun`` is what a key is
    called there ("parameter" for a plugin's ``with``).
    """
    problems: list[Problem] = []
    for err in sorted(validator(schema).iter_errors(instance), key=lambda e: list(map(str, e.absolute_path))):
        problems.extend(_convert(doc, err, base, where, noun))
    return problems


def _convert(doc: Document, err: Any, base: JsonPath, where: Callable[[JsonPath], str],
             noun: str) -> list[Problem]:
    rel: JsonPath = tuple(err.absolute_path)
    path = base + rel
    v, schema, inst = err.validator, err.schema, err.instance
    place = where(rel)
    if v == "additionalProperties" and isinstance(inst, dict):
        allowed = _allowed_keys(schema)
        extra = [k for k in inst if k not in allowed]
        out = []
        for k in extra:
            hint = _suggest(k, allowed)
            listing = f"allowed {noun}s: {', '.join(allowed)}" if allowed else f"this takes no {noun}s"
            out.append(doc.problem(path + (k,), f"unknown {noun} '{k}' in {place}",
                                   f"{hint} {listing}".strip(), key=True))
        return out
    if v == "propertyNames" or (v == "pattern" and "propertyNames" in err.absolute_schema_path):
        return [doc.problem(path + (inst,), f"'{inst}' is not a valid name in {place}",
                            _pattern_hint(schema), key=True)]
    if v == "required":
        missing = [k for k in schema.get("required", []) if isinstance(inst, dict) and k not in inst]
        hint = "add it" + (f": `{missing[0]}: ...`" if missing else "")
        return [doc.problem(path, f"{place} is missing the required {noun} '{m}'", hint, key=True)
                for m in missing] or [doc.problem(path, f"{place}: {err.message}", "", key=True)]
    if v == "type":
        want = schema["type"]
        wanted = want if isinstance(want, list) else [want]
        wants = " or ".join(_SCHEMA_TYPES.get(t, t) for t in wanted)
        hint = _type_hint(inst, wanted)
        if not hint and "object" in wanted and noun == "key" and len(path) >= 3 and path[-1] == "inputs" \
                and path[0] in ("stages", "templates"):
            hint = ("inputs must be a mapping of input names to files or stage outputs, "
                    "e.g. `inputs: {data: data.jsonl}`")
        return [doc.problem(path, f"{place} must be {wants}, not {describe(inst)}", hint)]
    if v == "enum":
        choices = [str(c) for c in schema["enum"]]
        hint = _suggest(str(inst), choices)
        return [doc.problem(path, f"{place} must be one of: {', '.join(choices)} (got {describe(inst)})", hint)]
    if v in ("oneOf", "anyOf") and err.context:
        from jsonschema.exceptions import best_match

        return _convert(doc, best_match(err.context), base, where, noun)
    if v == "pattern":
        return [doc.problem(path, f"{place}: {json.dumps(inst)} is not allowed here", _pattern_hint(schema))]
    if v == "minProperties" and not inst:
        return [doc.problem(path, f"{place} is empty", f"add at least one {noun}")]
    return [doc.problem(path, f"{place}: {err.message}", "")]


_INTEGER = re.compile(r"^[-+]?[0-9]+$")
_NUMBER = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")


def _type_hint(inst: Any, wanted: list[str]) -> str:
    """What to write instead, when the value is right but written as the wrong YAML type."""
    if "boolean" in wanted and isinstance(inst, str) and inst.lower() in {"yes", "no", "on", "off", "y", "n"}:
        return "write true or false: tunepipe reads YAML 1.2, where yes/no/on/off are strings"
    if isinstance(inst, str) and (("integer" in wanted and _INTEGER.match(inst.strip()))
                                  or ("number" in wanted and _NUMBER.match(inst.strip()))):
        return "write the number without quotes"
    if isinstance(inst, (int, float)) and "string" in wanted:
        return "quote it to make it a string"
    return ""


def _pattern_hint(schema: Mapping[str, Any]) -> str:
    pattern = schema.get("pattern") or schema.get("propertyNames", {}).get("pattern")
    if pattern == "^[A-Za-z_][A-Za-z0-9_]*$":
        return "use letters, digits and '_', starting with a letter or '_'"
    if pattern == "^[A-Za-z_][A-Za-z0-9_-]*$":
        return "use letters, digits, '_' and '-', starting with a letter or '_' (no dots or spaces)"
    return f"it must match the pattern {pattern}" if pattern else ""


def with_defaults(schema: Mapping[str, Any], instance: Any) -> Any:
    """A copy of ``instance`` with the schema's ``default`` values filled in, recursively.

    Defaults enter the cache key, so a plugin that changes a default changes the key.
    """
    out = copy.deepcopy(instance)
    _fill(schema, out)
    return out


def _fill(schema: Mapping[str, Any], inst: Any) -> None:
    if not isinstance(inst, dict):
        return
    for name, sub in schema.get("properties", {}).items():
        if not isinstance(sub, Mapping):
            continue
        if name not in inst and "default" in sub:
            inst[name] = copy.deepcopy(sub["default"])
        if name in inst:
            _fill(sub, inst[name])
