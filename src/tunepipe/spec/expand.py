"""Templates, ``matrix`` fan-out and ``${vars}``: turn stage definitions into plain stages.

For each stage definition, in this order:

1. ``matrix``: one branch per combination of the values (keys in order, values in order),
   ``${matrix.KEY}`` substituted in everything the stage says (``with``, ``inputs``,
   ``params``, ``description``). A branch is named ``STAGE@KEY=LABEL,...`` (see :func:`label`).
2. ``template``: the template's parameters are checked (unknown or missing ones are errors),
   defaults filled in, ``${params.NAME}`` substituted in the template's ``stage``, and the
   stage's own ``with``/``inputs``/``description`` merged on top (as an include would).
3. ``${vars.NAME}`` everywhere in ``with`` and ``inputs``.
4. Fan-out: a stage that reads ``S.out`` from a matrix stage ``S`` gets one branch per branch
   of ``S`` (matched by the matrix values: branches of several upstream stages are joined on
   the keys they share), named like them; ``S@*.out`` reads every branch of ``S`` as a list
   and ``S@KEY=LABEL.out`` the matching ones, without fanning out.

Every value keeps the position it was written at (in whichever file), so later problems name
the line of the template, the matrix value or the parameter that caused them.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from tunepipe.errors import Position, Problem
from tunepipe.spec import schema
from tunepipe.spec.include import _deep, _Layer
from tunepipe.spec.resolve import VarResolver, escape, interpolate
from tunepipe.spec.yamlpos import Document, JsonPath

MAX_BRANCHES = 1000
_LABEL = re.compile(r"^[A-Za-z0-9_.+-]{1,40}$")
_WHOLE_VAR = re.compile(r"^\$\{\s*vars\.([A-Za-z0-9_.]+)\s*\}$")


def label(value: Any) -> str | None:
    """The label of a matrix value in a branch name, or None when it has none (use its index).

    Numbers as JSON writes them (``0.0001``, ``5e-05``), ``true``/``false``/``null``, strings
    made of letters, digits and ``_.+-`` as they are (others: other characters become ``_``).
    """
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        if _LABEL.match(value):
            return value
        cleaned = re.sub(r"[^A-Za-z0-9_.+-]+", "_", value).strip("_")[:40]
        return cleaned or None
    return None


def branch_name(base: str, coords: dict[str, str]) -> str:
    return base if not coords else base + "@" + ",".join(f"{k}={v}" for k, v in coords.items())


def split_selector(text: str) -> tuple[str, str, str] | None:
    """``S@SEL.out`` → (S, SEL, out)."""
    head, at, rest = text.partition("@")
    if not at or "/" in text:
        return None
    sel, dot, out = rest.rpartition(".")
    if not dot:
        return None
    return head, sel, out


def matches(coords: dict[str, str], selector: str) -> bool | None:
    """Whether a branch's coordinates match ``*`` or ``k=v,...`` (None: not a selector)."""
    if selector == "*":
        return True
    wanted = {}
    for part in selector.split(","):
        k, eq, v = part.partition("=")
        if not eq or not k:
            return None
        wanted[k.strip()] = v.strip()
    return all(coords.get(k) == v for k, v in wanted.items())


@dataclass
class Branch:
    base: str
    tmp: str
    coords: dict[str, str]
    stage: dict[str, Any]
    local: _Layer  # positions under ("stages", tmp)


@dataclass
class Expanded:
    stages: dict[str, Any]  # final name -> {uses, with, inputs, description, resources}
    group: dict[str, str] = field(default_factory=dict)  # final name -> its stage definition's name
    coords: dict[str, dict[str, str]] = field(default_factory=dict)


class _View:
    """Positions of one branch under construction, falling back to the document."""

    def __init__(self, doc: Document, local: _Layer) -> None:
        self.doc = doc
        self.local = local

    def position(self, path: JsonPath, *, key: bool = False) -> Position:
        table = self.local.keys if key else self.local.values
        p = tuple(path)
        while len(p) >= 2:
            if p in table:
                return table[p]
            if p in self.local.values:
                return self.local.values[p]
            p = p[:-1]
        return self.doc.position(path, key=key)

    def problem(self, path: JsonPath, message: str, hint: str = "", *, key: bool = False) -> Problem:
        return self.doc.problem_at(self.position(path, key=key), message, hint)


def _reroot(layer: _Layer, src_tables: tuple[dict[JsonPath, Position], dict[JsonPath, Position]],
            src: JsonPath, dst: JsonPath, *, skip: JsonPath | None = None, children_only: bool = False) -> None:
    n = len(src)
    for d, s in ((layer.values, src_tables[0]), (layer.keys, src_tables[1])):
        for p, pos in list(s.items()):
            if p[:n] != src or (children_only and len(p) == n):
                continue
            if skip is not None and p[:len(skip)] == skip:
                continue
            d[dst + p[n:]] = pos


def _clear(layer: _Layer, path: JsonPath, *, keep_key: bool = True) -> None:
    n = len(path)
    for table, is_keys in ((layer.values, False), (layer.keys, True)):
        for p in [p for p in table if p[:n] == path]:
            if is_keys and keep_key and p == path:
                continue
            del table[p]


class Expander:
    def __init__(self, doc: Document, has_includes: bool) -> None:
        self.doc = doc
        self.has_includes = has_includes
        self.problems: list[Problem] = []
        data = doc.data if isinstance(doc.data, dict) else {}
        self.variables = data.get("vars") if isinstance(data.get("vars"), dict) else {}
        self.templates = data.get("templates") if isinstance(data.get("templates"), dict) else {}
        self.raw = data.get("stages") if isinstance(data.get("stages"), dict) else {}
        self.resolver = VarResolver(doc, self.variables)
        self._bad_templates: set[str] = set()
        self._index: dict[str, tuple[tuple[str, ...], dict[tuple[str | None, ...], str]]] = {}
        # positions by their first two path elements (a stage, a template, a variable): copying a
        # subtree then looks at its own entries only, not at the whole document's
        self._buckets: dict[JsonPath, tuple[dict[JsonPath, Position], dict[JsonPath, Position]]] = {}
        for i, table in enumerate((doc.values, doc.keys)):
            for p, pos in table.items():
                if len(p) >= 2:
                    self._buckets.setdefault(p[:2], ({}, {}))[i][p] = pos

    def _bucket(self, path: JsonPath) -> tuple[dict[JsonPath, Position], dict[JsonPath, Position]]:
        return self._buckets.get(tuple(path[:2]), ({}, {}))

    # -- one definition -> its own branches ------------------------------------------------------

    def own_branches(self, base: str, stage: Any) -> list[Branch]:
        doc, spath = self.doc, ("stages", base)
        if stage is None:
            hint = (f"`{base}: null` removes a stage of that name that an included file defines, and none does"
                    if self.has_includes else "give the stage a `uses:` (or `template:`), or remove it")
            self.problems.append(doc.problem(spath, f"stage '{base}' is empty (null)", hint, key=True))
            return []
        if not isinstance(stage, dict):
            return []  # the schema check reported it
        if "uses" in stage and "template" in stage:
            self.problems.append(doc.problem(spath + ("template",), f"stage '{base}' has both `uses` and `template`",
                                             "a template already names its plugin: keep one of the two", key=True))
            return []
        if "uses" not in stage and "template" not in stage:
            hint = "add `uses: PLUGIN` (run `pipeline stages` to list them) or `template: NAME`"
            if self.has_includes:
                hint += (f"; a stage without `uses` changes the included stage of the same name, and no included "
                         f"file defines '{base}'")
            self.problems.append(doc.problem(spath, f"stage '{base}' is missing the required key 'uses'", hint,
                                             key=True))
            return []
        template = stage.get("template")
        if "params" in stage and template is None:
            self.problems.append(doc.problem(spath + ("params",), f"stage '{base}' has `params` but no `template`",
                                             "plugin parameters go under `with:`; `params:` are a template's",
                                             key=True))
        if isinstance(template, str) and template not in self.templates:
            close = difflib.get_close_matches(template, list(self.templates), n=1)
            hint = (f"did you mean '{close[0]}'? " if close else "") + (
                f"templates: {', '.join(self.templates)}" if self.templates else
                "no template is defined: add one under `templates:` (here or in an included file)")
            self.problems.append(doc.problem(spath + ("template",), f"unknown template '{template}'", hint))
            return []
        combos = self.matrix(base, stage.get("matrix")) if stage.get("matrix") is not None else [({}, {})]
        overridden = any(pos.source.startswith("--set ") for pos in self._bucket(spath)[0].values())
        if isinstance(stage.get("matrix"), dict) and not overridden:  # (-S may replace a ${matrix...} on purpose)
            used = _used_keys({k: v for k, v in stage.items() if k != "matrix"}, "matrix")
            for key in stage["matrix"]:
                if key not in used:
                    self.problems.append(doc.problem(
                        spath + ("matrix", key), f"matrix key '{key}' of stage '{base}' is not used",
                        f"every branch would be the same stage: use ${{matrix.{key}}} in its `with`, `inputs` "
                        f"or `params`, or remove the key", key=True))
                    combos = []
        out = []
        for i, (coords, scope) in enumerate(combos):
            tmp = f"{base}\x00{i}"
            tpath = ("stages", tmp)
            local = _Layer()
            _reroot(local, self._bucket(spath), spath, tpath, skip=spath + ("matrix",))
            body = {k: copy.deepcopy(v) for k, v in stage.items() if k != "matrix"}
            if scope:
                body = self.substitute(body, tpath, "matrix", scope, local, f"the matrix of stage '{base}'", "key")
            if isinstance(template, str):
                built = self.render(base, template, body, tpath, local)
                if built is None:
                    continue
            else:
                built = {k: body[k] for k in ("uses", "with", "inputs", "description", "resources") if k in body}
            self.doc.values.update(local.values)
            self.doc.keys.update(local.keys)
            for part in ("with", "inputs"):
                if part in built:
                    built[part] = self.resolver.resolve(built[part], tpath + (part,))
            out.append(Branch(base, tmp, coords, built, local))
        return out

    def matrix(self, base: str, spec: Any) -> list[tuple[dict[str, str], dict[str, tuple[Any, JsonPath]]]]:
        """Every combination of the matrix: (labels by key, {key: (value, where it is written)})."""
        if not isinstance(spec, dict) or not spec:
            return []  # the schema check reported it
        axes: list[list[tuple[str, str, Any, JsonPath]]] = []
        ok = True
        for key, values in spec.items():
            path: JsonPath = ("stages", base, "matrix", key)
            origin = path
            if isinstance(values, str):
                m = _WHOLE_VAR.match(values)
                resolved = self.resolver.resolve(values, path)
                if m:
                    origin = ("vars",) + tuple(m.group(1).split("."))
                values = escape(resolved)
                if not isinstance(values, (list, dict)):
                    if "${" not in str(spec[key]) or resolved is not None:
                        self.problems.append(self.doc.problem(
                            path, f"matrix key '{key}' of stage '{base}' must be a list of values or a mapping of "
                                  f"named values, not {schema.describe(values)}",
                            "e.g. `learning_rate: [1.0e-4, 2.0e-4]`, or ${vars.NAME} naming such a list"))
                    ok = False
                    continue
            if not isinstance(values, (list, dict)):
                ok = False  # the schema check reported it
                continue
            if not values:
                self.problems.append(self.doc.problem(path, f"matrix key '{key}' of stage '{base}' has no values",
                                                      "give at least one value"))
                ok = False
                continue
            axis: list[tuple[str, str, Any, JsonPath]] = []
            if isinstance(values, dict):
                for name, v in values.items():
                    if not _LABEL.match(name):
                        self.problems.append(self.doc.problem(
                            path + (name,), f"'{name}' cannot name a branch of stage '{base}' (matrix key '{key}')",
                            "use letters, digits and _.+- (at most 40 characters)", key=True))
                        ok = False
                    axis.append((key, name, v, origin + (name,)))
            else:
                labels = [label(v) for v in values]
                seen: dict[str, int] = {}
                for i, v in enumerate(values):
                    text = json.dumps(v, sort_keys=True)
                    if text in seen:
                        self.problems.append(self.doc.problem(
                            path + (i,), f"matrix key '{key}' of stage '{base}' lists the value {text} twice "
                                         f"(items {seen[text] + 1} and {i + 1})", "remove one"))
                        ok = False
                    seen[text] = i
                if None in labels or len(set(labels)) < len(labels):
                    labels = [str(i) for i in range(len(values))]
                axis = [(key, lab, v, origin + (i,)) for i, (lab, v) in enumerate(zip(labels, values, strict=True))]
            axes.append(axis)
        if not ok or not axes:
            return []
        total = 1
        for a in axes:
            total *= len(a)
        if total > MAX_BRANCHES:
            self.problems.append(self.doc.problem(
                ("stages", base, "matrix"), f"the matrix of stage '{base}' makes {total} branches "
                                            f"(at most {MAX_BRANCHES})", "split it into smaller sweeps", key=True))
            return []
        out = []
        for combo in itertools.product(*axes):
            out.append(({k: lab for k, lab, _, _ in combo}, {k: (v, p) for k, _, v, p in combo}))
        return out

    # -- substitution ----------------------------------------------------------------------------

    def substitute(self, value: Any, path: JsonPath, ns: str, scope: dict[str, tuple[Any, JsonPath]],
                   local: _Layer, owner: str, noun: str, declared: frozenset[str] = frozenset()) -> Any:
        """``value`` (written at ``path``) with ``${ns.NAME...}`` replaced from ``scope``.

        A whole-value reference takes the position of the value it names, so a problem with the
        value points where the value is written.
        """
        view = _View(self.doc, local)
        if isinstance(value, dict):
            return {k: self.substitute(v, path + (k,), ns, scope, local, owner, noun, declared)
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self.substitute(v, path + (i,), ns, scope, local, owner, noun, declared)
                    for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value
        found: list[JsonPath] = []

        def lookup(expr: str) -> Any:
            parts = expr.split(".")
            name = parts[1] if len(parts) > 1 else ""
            if name not in scope and name in declared:
                return None  # a required parameter that is missing: reported as such
            if name not in scope:
                close = difflib.get_close_matches(name, list(scope), n=1)
                hint = (f"did you mean '${{{ns}.{close[0]}}}'? " if close else "") + \
                    f"{noun}s: {', '.join(scope) or 'none'}"
                self.problems.append(view.problem(path, f"'${{{expr}}}': {owner} has no {noun} '{name}'", hint))
                return None
            v, where = scope[name]
            for key in parts[2:]:
                if isinstance(v, dict) and key in v:
                    v, where = v[key], where + (key,)
                elif isinstance(v, list) and key.isdigit() and int(key) < len(v):
                    v, where = v[int(key)], where + (int(key),)
                else:
                    self.problems.append(view.problem(path, f"'${{{expr}}}': {noun} '{'.'.join(parts[1:])}' "
                                                            f"has no item '{key}'", ""))
                    return None
            found.append(where)
            return copy.deepcopy(v)

        def not_text(expr: str, v: Any) -> None:
            kind = "mapping" if isinstance(v, dict) else "list"
            self.problems.append(view.problem(path, f"'${{{expr}}}' is a {kind} and cannot be placed inside a string",
                                              f"use it as the whole value, e.g. `key: ${{{expr}}}`"))

        out, whole = interpolate(value, {ns}, lookup, not_text)
        if whole is not None and found:
            src = found[0]
            tables = (local.values, local.keys) if any(p[:len(src)] == src for p in local.values) \
                else self._bucket(src)
            _clear(local, path)
            _reroot(local, tables, src, path)
            if src in tables[0]:
                local.values[path] = tables[0][src]
        return out

    def render(self, base: str, name: str, body: dict[str, Any], tpath: JsonPath,
               local: _Layer) -> dict[str, Any] | None:
        """The stage a template instance stands for, its parameters checked (None if unusable)."""
        tmpl = self.templates[name]
        if not isinstance(tmpl, dict) or not isinstance(tmpl.get("stage"), dict) or name in self._bad_templates:
            return None
        tdefs = tmpl.get("params") if isinstance(tmpl.get("params"), dict) else {}
        given = body.get("params") if isinstance(body.get("params"), dict) else {}
        props: dict[str, Any] = {}
        required = []
        scope: dict[str, tuple[Any, JsonPath]] = {}
        tp: JsonPath = ("templates", name, "params")
        for pname, spec in tdefs.items():
            if isinstance(spec, dict):
                props[pname] = spec
                if "default" in spec:
                    scope[pname] = (spec["default"], tp + (pname, "default"))
                else:
                    required.append(pname)
            else:
                props[pname] = {"default": spec}
                scope[pname] = (spec, tp + (pname,))
        pschema = {"type": "object", "additionalProperties": False, "properties": props, "required": required}
        try:
            schema.validator(pschema)
        except schema.SchemaError:
            self._bad_templates.add(name)
            for pname, spec in props.items():
                try:
                    schema.validator({"type": "object", "properties": {pname: spec}})
                except schema.SchemaError as e:
                    self.problems.append(self.doc.problem(
                        tp + (pname,), f"template '{name}' parameter '{pname}' is not a valid JSON Schema: "
                                       f"{e.message.replace(f'properties/{pname}/', '')}",
                        "a parameter is {type, default, description, enum, minimum, ...} (JSON Schema); "
                        "types: string, integer, number, boolean, array, object, null", key=True))
            return None
        view = _View(self.doc, local)
        check = VarResolver(view, self.variables)  # type: ignore[arg-type]
        resolved = check.resolve(given, tpath + ("params",))
        self.problems.extend(check.problems)
        if not check.problems:
            where = lambda rel: f"stage '{base}' (template {name})" + (  # noqa: E731
                f" parameter '{'.'.join(map(str, rel))}'" if rel else "")
            self.problems.extend(schema.check(view, resolved, pschema, tpath + ("params",), where,  # type: ignore[arg-type]
                                              noun="parameter"))
        for pname, value in given.items():
            if pname in props:
                scope[pname] = (value, tpath + ("params", pname))
        # the template's stage, at this stage's place; then the stage's own with/inputs on top
        own = _Layer(data={k: body[k] for k in ("with", "inputs", "description", "resources") if k in body})
        for k in own.data:
            _reroot(own, (local.values, local.keys), tpath + (k,), tpath + (k,))
            _clear(local, tpath + (k,), keep_key=False)
        _reroot(local, self._bucket(("templates", name)), ("templates", name, "stage"), tpath, children_only=True)
        stage = self.substitute(copy.deepcopy(tmpl["stage"]), tpath, "params", scope, local,
                                f"template '{name}'", "parameter", frozenset(props))
        if own.data:
            _deep_at(local, own, stage, own.data, tpath)
        return stage

    # -- fan-out ---------------------------------------------------------------------------------

    def run(self) -> Expanded:
        own = {base: self.own_branches(base, stage) for base, stage in self.raw.items()}
        bases = list(self.raw)
        deps: dict[str, set[str]] = {b: set() for b in bases}
        for b, branches in own.items():
            for br in branches:
                for text in _ref_texts(br.stage.get("inputs")):
                    up = _ref_base(text, bases)
                    if up is not None and up != b:
                        deps[b].add(up)
        final: dict[str, list[tuple[str, dict[str, str]]]] = {}
        result = Expanded(stages={})
        positions: dict[str, _Layer] = {}
        for b in _order(bases, deps):
            made = [m for br in own[b] for m in self.fan_out(br, final, bases)]
            # in the order of the name: the first key varies slowest
            rank: dict[str, dict[str, int]] = {}
            for _, coords, _, _ in made:
                for k, v in coords.items():
                    rank.setdefault(k, {}).setdefault(v, len(rank[k]))
            made.sort(key=lambda m: [rank[k][v] for k, v in m[1].items()])
            names: list[tuple[str, dict[str, str]]] = []
            for name, coords, stage, layer in made:
                if name in result.stages:
                    continue
                names.append((name, coords))
                result.stages[name] = stage
                positions[name] = layer
                result.coords[name] = coords
                if coords:
                    result.group[name] = b
            final[b] = names
        # file order: definitions in the order written, branches in matrix order
        ordered = {n: result.stages[n] for b in bases for n, _ in final.get(b, []) if n in result.stages}
        result.stages = ordered
        keep_v = {p: v for p, v in self.doc.values.items() if not (len(p) >= 2 and p[0] == "stages")}
        keep_k = {p: v for p, v in self.doc.keys.items() if not (len(p) >= 2 and p[0] == "stages")}
        for layer in positions.values():
            keep_v.update(layer.values)
            keep_k.update(layer.keys)
        self.doc.values, self.doc.keys = keep_v, keep_k
        self.doc.data["stages"] = ordered
        self.problems.extend(self.resolver.problems)
        return result

    def fan_out(self, br: Branch, final: dict[str, list[tuple[str, dict[str, str]]]],
                bases: list[str]) -> list[tuple[str, dict[str, str], dict[str, Any], _Layer]]:
        view = _View(self.doc, br.local)
        tpath = ("stages", br.tmp)
        inputs = br.stage.get("inputs") if isinstance(br.stage.get("inputs"), dict) else {}
        fanned: list[str] = []
        for text in _ref_texts(inputs):
            up = _ref_base(text, bases)
            if up is None or up == br.base or "@" in text.partition(".")[0]:
                continue
            if up in final and up not in fanned and self._fanned(up, final):
                fanned.append(up)
        combos: list[dict[str, str]] = [{}]
        for up in fanned:
            combos = [{**c, **uc} for c in combos for _, uc in final[up] if _compatible(c, uc)]
        combos = [{**c, **br.coords} for c in combos if _compatible(c, br.coords)]
        if not combos:
            self.problems.append(self.doc.problem(
                ("stages", br.base), f"stage '{br.base}' reads {', '.join(fanned)}, whose matrix branches have no "
                                     "combination in common", "branches are matched by the matrix values they share; "
                                     "read all branches of one of them as a list with STAGE@*.OUTPUT", key=True))
            return []
        out = []
        for coords in combos:
            name = branch_name(br.base, coords)
            stage = copy.deepcopy(br.stage)
            layer = _Layer()
            _reroot(layer, (br.local.values, br.local.keys), tpath, ("stages", name))
            if isinstance(stage.get("inputs"), dict):
                for iname, value in list(stage["inputs"].items()):
                    ipath = ("stages", br.tmp, "inputs", iname)
                    texts = value if isinstance(value, list) else [value]
                    new: list[tuple[Any, Position]] = []
                    listed = isinstance(value, list)
                    for i, text in enumerate(texts):
                        rpath = ipath + ((i,) if isinstance(value, list) else ())
                        pos = view.position(rpath)
                        refs = self.rewrite(br.base, iname, text, coords, final, bases, view, rpath)
                        listed = listed or len(refs) != 1
                        new.extend((r, pos) for r in refs)
                    npath = ("stages", name, "inputs", iname)
                    _clear(layer, npath)
                    if listed:
                        stage["inputs"][iname] = [r for r, _ in new]
                        layer.values[npath] = view.position(ipath)
                        for j, (_, pos) in enumerate(new):
                            layer.values[npath + (j,)] = pos
                    else:
                        stage["inputs"][iname] = new[0][0] if new else value
                        layer.values[npath] = new[0][1] if new else view.position(ipath)
            out.append((name, coords, stage, layer))
        return out

    def rewrite(self, base: str, iname: str, text: Any, coords: dict[str, str],
                final: dict[str, list[tuple[str, dict[str, str]]]], bases: list[str], view: _View,
                rpath: JsonPath) -> list[Any]:
        """The references an input text stands for in one branch."""
        if not isinstance(text, str):
            return [text]
        sel = split_selector(text)
        if sel is not None:
            up, selector, output = sel
            if up not in bases:
                close = difflib.get_close_matches(up, bases, n=1)
                self.problems.append(view.problem(rpath, f"input '{iname}' of stage '{base}' reads '{text}': "
                                                         f"there is no stage '{up}'",
                                                  (f"did you mean '{close[0]}'? " if close else "")
                                                  + f"stages: {', '.join(bases)}"))
                return []
            if up not in final:
                return [text]  # a cycle: reported by the graph check
            ok = [n for n, c in final[up] if matches(c, selector)]
            if matches({}, selector) is None:
                self.problems.append(view.problem(rpath, f"input '{iname}' of stage '{base}': '{selector}' in "
                                                         f"'{text}' is not a branch selector",
                                                  f"write {up}@*.{output} for every branch, or "
                                                  f"{up}@KEY=VALUE.{output}"))
                return []
            if not ok:
                names = ", ".join(n for n, _ in final[up])
                self.problems.append(view.problem(rpath, f"input '{iname}' of stage '{base}' reads '{text}', but no "
                                                         f"branch of stage '{up}' matches '{selector}'",
                                                  f"branches: {names}"))
                return []
            return [f"{n}.{output}" for n in ok]
        up = _ref_base(text, bases)
        if up is None or up not in final or not self._fanned(up, final):
            return [text]
        output = text[len(up) + 1:]
        keys, by_coords = self._index[up]
        name = by_coords.get(tuple(coords.get(k) for k in keys))
        return [f"{name}.{output}"] if name else [text]

    def _fanned(self, up: str, final: dict[str, list[tuple[str, dict[str, str]]]]) -> bool:
        """Whether the (already expanded) stage ``up`` has matrix branches; indexes them by their values."""
        if up not in self._index:
            keys = tuple(final[up][0][1]) if final[up] else ()
            self._index[up] = (keys, {tuple(c.get(k) for k in keys): n for n, c in final[up]})
        return bool(self._index[up][0])


def _deep_at(acc: _Layer, over: _Layer, dst: dict[str, Any], src: dict[str, Any], path: JsonPath) -> None:
    """Merge a stage's own with/inputs/description (``over``) over its template's stage (``dst``,
    positions in ``acc``), as an include would: mappings merge, ``null`` removes, the rest replaces."""
    for k, v in src.items():
        q = path + (k,)
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep(acc, over, dst[k], v, q, null_removes=True)
            continue
        _clear(acc, q, keep_key=False)
        if v is None and k in dst:
            del dst[k]
        else:
            dst[k] = copy.deepcopy(v)
            _reroot(acc, (over.values, over.keys), q, q)


_REFS = re.compile(r"\$\$\{|\$\{\s*([A-Za-z_]\w*)\.([A-Za-z_]\w*)")


def _used_keys(value: Any, namespace: str) -> set[str]:
    """The names used as ``${namespace.NAME...}`` anywhere in ``value``."""
    if isinstance(value, dict):
        return set().union(*(_used_keys(v, namespace) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_used_keys(v, namespace) for v in value)) if value else set()
    if isinstance(value, str) and "${" in value:
        return {m.group(2) for m in _REFS.finditer(value) if m.group(1) == namespace}
    return set()


def _compatible(a: dict[str, str], b: dict[str, str]) -> bool:
    return all(a[k] == v for k, v in b.items() if k in a)


def _ref_texts(inputs: Any) -> list[str]:
    if not isinstance(inputs, dict):
        return []
    out = []
    for value in inputs.values():
        for t in value if isinstance(value, list) else [value]:
            if isinstance(t, str):
                out.append(t)
    return out


def _ref_base(text: str, bases: list[str]) -> str | None:
    """The stage definition a reference reads from (``S.out``, ``S@SEL.out``), else None (a file)."""
    if "/" in text:
        return None
    sel = split_selector(text)
    if sel is not None:
        return sel[0] if sel[0] in bases else None
    head, dot, _ = text.partition(".")
    return head if dot and head in bases else None


def _order(bases: list[str], deps: dict[str, set[str]]) -> list[str]:
    """Definitions with their upstream first (file order among equals; a cycle last, as written)."""
    done: list[str] = []
    left = list(bases)
    while left:
        ready = [b for b in left if deps[b] <= set(done)]
        if not ready:
            done.extend(left)
            break
        done.append(ready[0])
        left.remove(ready[0])
    return done


def expand(doc: Document, has_includes: bool) -> tuple[Expanded, list[Problem]]:
    ex = Expander(doc, has_includes)
    result = ex.run()
    return result, ex.problems
