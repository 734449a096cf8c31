"""``${vars.NAME}`` interpolation and ``-S/--set stage.param=value`` overrides.

A value that is exactly ``${vars.x}`` takes the variable's type (a number stays a number);
inside a longer string it is formatted as text. ``$${`` writes a literal ``${``. Variables may
use other variables; a loop is an error.

Templates (``${params.x}``) and matrix stages (``${matrix.x}``) use the same syntax; they are
substituted first, by :func:`interpolate`, which leaves every other reference (and ``$${``) as
written for the final ``${vars...}`` pass.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Collection
from typing import Any

from tunepipe.errors import Position, Problem
from tunepipe.spec.yamlpos import Document, JsonPath, load_text

_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}")
MAX_VAR_CHAIN = 50  # ${vars.a} -> ${vars.b} -> ...: far more than a pipeline needs; bounds the recursion
MAX_OVERRIDE_KEYS = 20  # -S a.b.c...=v: with a value nested up to MAX_DEPTH, still well within recursion limits


def interpolate(text: str, namespaces: Collection[str], lookup: Callable[[str], Any],
                not_text: Callable[[str, Any], None]) -> tuple[Any, str | None]:
    """Substitute the ``${ns....}`` references whose namespace is in ``namespaces``.

    Returns ``(value, expr)``: ``expr`` is the reference when ``text`` was exactly one substituted
    reference (the value then keeps its type), else None. Other references and ``$${`` stay as
    written. ``not_text(expr, value)`` is told about a list or mapping placed inside a string.
    """
    whole = _REF.fullmatch(text)
    if whole and whole.group(0) != "$${":
        expr = whole.group(1).strip()
        if expr.split(".")[0] in namespaces:
            return lookup(expr), expr
        return text, None

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$${":
            return m.group(0)
        expr = m.group(1).strip()
        if expr.split(".")[0] not in namespaces:
            return m.group(0)
        value = lookup(expr)
        if isinstance(value, (dict, list)):
            not_text(expr, value)
            return ""
        return value if isinstance(value, str) else json.dumps(value)

    return _REF.sub(sub, text), None


def has_reference(value: Any, namespace: str) -> bool:
    """Whether a ``${namespace....}`` reference occurs anywhere in ``value``."""
    if isinstance(value, dict):
        return any(has_reference(v, namespace) for v in value.values())
    if isinstance(value, list):
        return any(has_reference(v, namespace) for v in value)
    if isinstance(value, str) and "${" in value:
        return any(m.group(0) != "$${" and m.group(1).strip().split(".")[0] == namespace
                   for m in _REF.finditer(value))
    return False


def escape(value: Any) -> Any:
    """Write every ``${`` of already-resolved text as ``$${`` (so a later pass keeps it literal)."""
    if isinstance(value, dict):
        return {k: escape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escape(v) for v in value]
    if isinstance(value, str) and "${" in value:
        return value.replace("${", "$${")
    return value


class VarResolver:
    """Interpolates ``${vars...}`` in values, recording problems with their positions."""

    def __init__(self, doc: Document, variables: dict[str, Any]) -> None:
        self.doc = doc
        self.vars = variables
        self.problems: list[Problem] = []
        self._resolved: dict[str, Any] = {}

    def resolve(self, value: Any, path: JsonPath) -> Any:
        if isinstance(value, dict):
            return {k: self.resolve(v, path + (k,)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, path + (i,)) for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            return self._string(value, path, ())
        return value

    def _string(self, text: str, path: JsonPath, chain: tuple[str, ...]) -> Any:
        whole = _REF.fullmatch(text)
        if whole and whole.group(0) != "$${":
            return self._lookup(whole.group(1).strip(), path, chain)

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"
            value = self._lookup(m.group(1).strip(), path, chain)
            if isinstance(value, (dict, list)):
                self.problems.append(self.doc.problem(
                    path, f"'${{{m.group(1)}}}' is a {'mapping' if isinstance(value, dict) else 'list'} "
                          "and cannot be placed inside a string",
                    "use it as the whole value, e.g. `key: ${vars.name}`"))
                return ""
            return value if isinstance(value, str) else json.dumps(value)

        return _REF.sub(sub, text)

    def _lookup(self, expr: str, path: JsonPath, chain: tuple[str, ...]) -> Any:
        parts = expr.split(".")
        if parts[0] == "matrix":
            self.problems.append(self.doc.problem(
                path, f"'${{{expr}}}' is used where there is no matrix",
                "${matrix.KEY} works in a stage that has its own `matrix:` (in `with`, `inputs` and `params`); "
                "a template's `stage:` sees only ${params.NAME}: pass the value as a parameter"))
            return None
        if parts[0] == "params":
            self.problems.append(self.doc.problem(
                path, f"'${{{expr}}}' is used outside a template",
                "${params.NAME} works only inside a template's `stage:` (see `templates:`); "
                "elsewhere use ${vars.NAME}"))
            return None
        if parts[0] != "vars" or len(parts) < 2 or not all(parts):
            self.problems.append(self.doc.problem(
                path, f"'${{{expr}}}' is not a variable reference",
                "write ${vars.NAME} (variables are defined under `vars:`); write $${ for a literal ${"))
            return None
        name = parts[1]
        if name not in self.vars:
            close = difflib.get_close_matches(name, list(self.vars), n=1)
            hint = f"did you mean '${{vars.{close[0]}}}'? " if close else ""
            defined = ", ".join(sorted(self.vars)) or "none"
            self.problems.append(self.doc.problem(
                path, f"unknown variable '{name}' in '${{{expr}}}'",
                f"{hint}defined variables: {defined}".strip()))
            return None
        if len(chain) >= MAX_VAR_CHAIN and name not in self._resolved:
            self.problems.append(self.doc.problem(
                ("vars", chain[0]), f"variables refer to each other more than {MAX_VAR_CHAIN} levels deep "
                                    f"({' -> '.join(chain[:3])} -> ... -> {name})",
                "give one of them a plain value"))
            return None
        if name in chain:
            loop = " -> ".join(chain + (name,))
            self.problems.append(self.doc.problem(("vars", name), f"variables refer to each other in a loop: {loop}",
                                                  "make one of them a plain value"))
            return None
        if name not in self._resolved:
            raw = self.vars[name]
            self._resolved[name] = self._deep(raw, ("vars", name), chain + (name,))
        value = self._resolved[name]
        for i, key in enumerate(parts[2:], start=2):
            if isinstance(value, dict) and key in value:
                value = value[key]
            elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
                value = value[int(key)]
            else:
                self.problems.append(self.doc.problem(
                    path, f"'${{{expr}}}': variable '{'.'.join(parts[1:i])}' has no item '{key}'", ""))
                return None
        return value

    def _deep(self, value: Any, path: JsonPath, chain: tuple[str, ...]) -> Any:
        if isinstance(value, dict):
            return {k: self._deep(v, path + (k,), chain) for k, v in value.items()}
        if isinstance(value, list):
            return [self._deep(v, path + (i,), chain) for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            return self._string(value, path, chain)
        return value


def parse_override(text: str) -> tuple[list[str], Any] | Problem:
    """Split ``stage.param.sub=value``; the value is read as YAML (``3`` is a number)."""
    pos = Position(f"--set {text}")
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        return Problem(pos, "an override must look like STAGE.PARAM=VALUE or vars.NAME=VALUE",
                       "e.g. -S train.epochs=3 or -S vars.system='Be brief.'")
    if len(parts) > MAX_OVERRIDE_KEYS:
        return Problem(pos, f"the override names {len(parts)} nested keys (at most {MAX_OVERRIDE_KEYS})",
                       "set the outer key to the whole value instead, e.g. -S stage.param='{a: {b: 1}}'")
    if not raw.strip():
        return parts, ""
    try:
        value = load_text(raw, f"--set {text}").data
    except Exception:
        value = raw
    return parts, value


def apply_overrides(doc: Document, overrides: tuple[str, ...]) -> list[Problem]:
    """Apply ``-S`` overrides to the loaded data in place; their positions name the option."""
    problems: list[Problem] = []
    data = doc.data
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, dict):
        return problems
    for text in overrides:
        parsed = parse_override(text)
        if isinstance(parsed, Problem):
            problems.append(parsed)
            continue
        parts, value = parsed
        pos = Position(f"--set {text}")
        if parts[0] == "vars":
            unknown = _unknown_var(data.get("vars"), parts[1], pos)
            if unknown is not None:
                problems.append(unknown)
                continue
            target_path: JsonPath = ("vars",)
            container = data.setdefault("vars", {})
            keys = parts[1:]
        elif parts[0] in stages and isinstance(stages[parts[0]], dict):
            target_path = ("stages", parts[0], "with")
            container = stages[parts[0]].setdefault("with", {})
            keys = parts[1:]
        else:
            close = difflib.get_close_matches(parts[0], list(stages) + ["vars"], n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            if "@" in parts[0]:
                hint = (f"an override changes a stage as written in the file: -S {parts[0].split('@')[0]}.PARAM=VALUE "
                        "sets it for every branch of its matrix; ")
            problems.append(Problem(pos, f"the override names no stage '{parts[0]}'",
                                    f"{hint}stages: {', '.join(stages)}".strip()))
            continue
        if not isinstance(container, dict):
            problems.append(Problem(pos, f"cannot set '{'.'.join(parts)}': its parent is not a mapping", ""))
            continue
        for i, k in enumerate(keys[:-1]):
            nxt = container.setdefault(k, {})
            if not isinstance(nxt, dict):
                problems.append(Problem(pos, f"cannot set '{'.'.join(parts)}': '{k}' is not a mapping", ""))
                break
            container = nxt
        else:
            container[keys[-1]] = value
            full = target_path + tuple(keys)
            doc.values[full] = pos
            doc.keys[full] = pos
            _mark_children(doc, full, value, pos)
    return problems


def _unknown_var(variables: Any, name: str, pos: Position) -> Problem | None:
    """An override of a variable the pipeline does not define would change nothing: say so."""
    defined = sorted(variables) if isinstance(variables, dict) else []
    if name in defined:
        return None
    close = difflib.get_close_matches(name, defined, n=1)
    hint = (f"did you mean 'vars.{close[0]}'? " if close else "") + (
        f"defined variables: {', '.join(defined)}" if defined else
        "the pipeline defines no variables: add it under `vars:` and use it as ${vars." + name + "}")
    return Problem(pos, f"the override sets the variable '{name}', which the pipeline does not define", hint)


def _mark_children(doc: Document, path: JsonPath, value: Any, pos: Position) -> None:
    stale = [p for p in doc.values if p[:len(path)] == path and len(p) > len(path)]
    for p in stale:
        doc.values[p] = pos
        doc.keys.pop(p, None)
    if isinstance(value, dict):
        for k, v in value.items():
            doc.values[path + (k,)] = pos
            _mark_children(doc, path + (k,), v, pos)
