"""YAML document → validated :class:`Pipeline`, collecting every problem before reporting.

Order: includes (each file checked against the pipeline schema, then merged) → ``-S``
overrides → templates, matrix and ``${vars}`` (:mod:`tunepipe.spec.expand`) → plugins →
parameters (plugin schema, defaults) → inputs (ports, producers, files) → trackers → graph (cycles, order).
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

from tunepipe import graph
from tunepipe.errors import PluginError, Position, Problem, SpecError
from tunepipe.redact import find_secret
from tunepipe.registry import LoadedPlugin, Registry
from tunepipe.spec import schema
from tunepipe.spec.expand import expand
from tunepipe.spec.files import file_problem
from tunepipe.spec.include import assemble, package_ref
from tunepipe.spec.model import InputRef, Pipeline, StageSpec
from tunepipe.spec.resolve import apply_overrides
from tunepipe.spec.resources import normalise_executor, normalise_resources
from tunepipe.spec.tracking import normalise_tracking, tracking_problems
from tunepipe.spec.yamlpos import Document, JsonPath

_QUOTED = re.compile(r"'([^']*)'")


def compile_document(doc: Document, path: Path, registry: Registry, overrides: tuple[str, ...] = ()) -> Pipeline:
    """Validate a loaded spec and build the pipeline, or raise one :class:`SpecError` with all problems."""
    assembled = assemble(doc, path)
    doc = assembled.doc
    problems = assembled.problems
    data = doc.data
    stages_given = isinstance(data.get("stages"), dict)
    if not stages_given or not data["stages"]:
        if not stages_given:
            problems.append(doc.problem((), "the pipeline is missing the required key 'stages'",
                                        "add a `stages:` mapping (see pipelines/sarcasm.yaml for the shape)"
                                        + ("; the included files define none" if assembled.has_includes else ""),
                                        key=True))
        elif assembled.any_stages:
            problems.append(doc.problem(("stages",), "no stage is left: every included stage is removed (null)",
                                        "keep at least one stage", key=True))
        elif not any(p.message.endswith("'stages' is empty") for p in problems):
            problems.append(doc.problem(("stages",), "'stages' is empty, and the included files define no stage",
                                        "add at least one stage, here or in an included file"))
        raise SpecError(_dedupe(problems, {}))
    problems.extend(apply_overrides(doc, overrides))
    expanded, found = expand(doc, assembled.has_includes)
    problems.extend(found)
    unresolved = {p.position for p in found}  # a reference that failed: no second message about its value
    raw_stages: dict[str, Any] = expanded.stages
    stage_names = list(raw_stages)

    plugins: dict[str, LoadedPlugin] = {}
    for name, raw in raw_stages.items():
        if not isinstance(raw.get("uses"), str) or not raw["uses"]:
            continue
        try:
            plugins[name] = registry.load(raw["uses"])
            schema.validator(plugins[name].plugin.params_schema)
        except PluginError as e:
            problems.append(doc.problem(("stages", name, "uses"), str(e), "run `pipeline stages` to list plugins"))
        except schema.SchemaError as e:
            plugins.pop(name, None)
            problems.append(doc.problem(("stages", name, "uses"),
                                        f"plugin '{raw['uses']}' publishes an invalid params_schema: {e.message}",
                                        "this is a bug in the plugin: report it to its authors"))

    stages: dict[str, StageSpec] = {}
    secrets: dict[str, str | None] = {}  # text -> the secret it holds (branches repeat their texts)
    for name, raw in raw_stages.items():
        if name not in plugins:
            continue
        loaded = plugins[name]
        base: JsonPath = ("stages", name, "with")
        params = raw.get("with") or {}
        if not isinstance(params, dict):
            continue
        where = lambda rel, n=name, u=loaded.uses: (  # noqa: E731
            f"stage '{n}' (plugin {u})" + (f" parameter '{'.'.join(map(str, rel))}'" if rel else ""))
        found = schema.check(doc, params, loaded.plugin.params_schema, base, where, noun="parameter")
        problems.extend(p for p in found if p.position not in unresolved)
        problems.extend(_secret_problems(doc, params, base, secrets))
        full = schema.with_defaults(loaded.plugin.params_schema, params)
        if not found:
            problems.extend(_plugin_problems(doc, name, loaded, full, base))
        inputs, multiple = _inputs(doc, name, raw, loaded, plugins, stage_names, path.parent, problems)
        stages[name] = StageSpec(
            name=name, uses=loaded.uses, params=full,
            inputs=inputs, multiple=multiple, outputs=tuple(loaded.plugin.outputs),
            position=doc.position(("stages", name), key=True),
            group=expanded.group.get(name, ""), matrix=dict(expanded.coords.get(name, {})),
            resources=normalise_resources(raw.get("resources")))

    problems.extend(tracking_problems(doc, data.get("tracking")))
    problems.extend(_secret_problems(doc, data.get("tracking"), ("tracking",), secrets))  # a token in a URI

    g = graph.build(stages)
    problems.extend(graph.cycle_problems(g, doc.excerpt))
    if problems:
        raise SpecError(_dedupe(problems, expanded.group))
    order = graph.topological_order(g, list(raw_stages))
    name = data.get("name") or path.stem
    sources = tuple(s.to_json() for s in assembled.stamps) if assembled.cacheable else None
    return Pipeline(name=name, path=path, stages={n: stages[n] for n in order}, overrides=overrides,
                    sources=sources, executor=normalise_executor(data.get("executor")),
                    tracking=normalise_tracking(data.get("tracking")))


def _plugin_problems(doc: Document, stage: str, loaded: LoadedPlugin, params: dict[str, Any],
                     base: JsonPath) -> list[Problem]:
    """The plugin's own cross-field checks (``check_params``), placed at the named parameter."""
    check = getattr(loaded.plugin, "check_params", None)
    if check is None:
        return []
    try:
        found = list(check(params))
    except Exception as e:  # noqa: BLE001 - a broken plugin must not crash validation
        return [doc.problem(("stages", stage, "uses"), f"plugin '{loaded.uses}' failed to check its parameters: "
                            f"{type(e).__name__}: {e}", "this is a bug in the plugin: report it to its authors")]
    return [doc.problem(base + tuple(p.path), f"stage '{stage}' (plugin {loaded.uses}) parameter "
                        f"'{'.'.join(map(str, p.path))}': {p.message}", p.hint) for p in found]


def _secret_problems(doc: Document, value: Any, path: JsonPath, memo: dict[str, str | None]) -> list[Problem]:
    """Secrets in a spec would reach cache keys and records: refuse them where they are written."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _secret_problems(doc, v, path + (k,), memo)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _secret_problems(doc, v, path + (i,), memo)]
    if not isinstance(value, str):
        return []
    if value not in memo:
        memo[value] = find_secret(value)
    name = memo[value]
    if name is None:
        return []
    return [doc.problem(path, f"this value holds the secret in ${name}",
                        "remove it: secrets must not be in a pipeline file or --set (they would reach cache keys "
                        "and run records); plugins read them from the environment")]


def _dedupe(problems: list[Problem], group: dict[str, str]) -> list[Problem]:
    """One problem per place and message; the branches of a matrix stage count as one stage
    (a problem in what they share is named once, after the stage as written)."""
    seen: set[tuple[Position, str]] = set()
    out = []
    for p in problems:
        message = _QUOTED.sub(lambda m: f"'{group.get(m.group(1), m.group(1))}'", p.message) if group else p.message
        if (p.position, message) not in seen:
            seen.add((p.position, message))
            out.append(Problem(p.position, message, p.hint, p.excerpt) if message != p.message else p)
    return out


def _inputs(doc: Document, name: str, raw: dict[str, Any], loaded: LoadedPlugin,
            plugins: dict[str, LoadedPlugin], stage_names: list[str], root: Path,
            problems: list[Problem]) -> tuple[dict[str, list[InputRef]], dict[str, bool]]:
    ports = loaded.plugin.inputs
    given = raw.get("inputs") or {}
    if not isinstance(given, dict):  # the schema check reported it where it is written
        return {}, {n: p.multiple for n, p in ports.items()}
    inputs: dict[str, list[InputRef]] = {}
    for input_name, value in given.items():
        ipath: JsonPath = ("stages", name, "inputs", input_name)
        if input_name not in ports:
            close = difflib.get_close_matches(input_name, list(ports), n=1)
            hint = (f"did you mean '{close[0]}'? " if close else "") + (
                f"inputs of {loaded.uses}: {', '.join(ports)}" if ports else f"{loaded.uses} takes no inputs")
            problems.append(doc.problem(ipath, f"stage '{name}' has no input '{input_name}'", hint, key=True))
            continue
        texts = value if isinstance(value, list) else [value]
        if len(texts) > 1 and not ports[input_name].multiple:
            branches = "@" in "".join(t for t in texts if isinstance(t, str))
            hint = ("it reads several branches of a matrix stage: read one (STAGE@KEY=VALUE.OUTPUT), or write "
                    "STAGE.OUTPUT to run this stage once per branch" if branches else
                    "give a single 'stage.output' or file path")
            problems.append(doc.problem(ipath, f"input '{input_name}' of stage '{name}' takes one reference, "
                                               f"not {len(texts)}", hint))
            continue
        refs = []
        for i, text in enumerate(texts):
            rpath = ipath + ((i,) if isinstance(value, list) else ())
            if not isinstance(text, str):
                problems.extend(_not_a_ref(doc, name, input_name, text, rpath, problems))
                continue
            ref = _ref(doc, name, input_name, text, rpath, plugins, stage_names, root, problems)
            if ref is not None:
                refs.append(ref)
        inputs[input_name] = refs
    for input_name, port in ports.items():
        if not port.optional and input_name not in given:
            problems.append(doc.problem(
                ("stages", name), f"stage '{name}' is missing its required input '{input_name}' ({port.description})",
                f"add `inputs: {{{input_name}: <stage>.<output> or a file path}}`", key=True))
    return inputs, {n: p.multiple for n, p in ports.items()}


def _not_a_ref(doc: Document, name: str, input_name: str, value: Any, rpath: JsonPath,
               problems: list[Problem]) -> list[Problem]:
    """An input that is not text: written so, the schema check reported it; null, a reference
    that failed (reported where it is); a ``${vars.NAME}`` that holds a number or a mapping must
    not silently leave the input out."""
    pos = doc.position(rpath)
    if value is None or any(p.position == pos for p in problems):
        return []
    return [doc.problem_at(pos, f"input '{input_name}' of stage '{name}' must be a file path or 'stage.output', "
                                f"not {schema.describe(value)}",
                           "a reference (${vars...}, ${params...}, ${matrix...}) used as an input must hold a "
                           "string, or a list of strings")]


def split_ref(text: str, stage_names: list[str] | set[str]) -> tuple[str, str] | None:
    """``(stage, output)`` when ``text`` reads a stage's output, else None (a file).

    Branch names of matrix stages contain dots (``train@lr=0.0001``), so the stage is the longest
    known name the text starts with."""
    if "/" in text or "\\" in text:
        return None
    if "@" in text:
        head, dot, out = text.rpartition(".")
        if dot and head in stage_names:
            return head, out
    head, dot, tail = text.partition(".")
    if dot and head in stage_names:
        return head, tail
    return None


def _ref(doc: Document, name: str, input_name: str, text: str, rpath: JsonPath,
         plugins: dict[str, LoadedPlugin], stage_names: list[str], root: Path,
         problems: list[Problem]) -> InputRef | None:
    pos = doc.position(rpath)
    split = split_ref(text, stage_names)
    base = doc.bases.get(pos.source, root)
    if split is not None and split[0] in plugins and split[1] not in plugins[split[0]].plugin.outputs \
            and (base / text).is_file():
        split = None  # 'greeting.txt' is a file, though a stage is called 'greeting'
    if split is not None:
        head, tail = split
        if head not in plugins:
            return InputRef("stage", text, pos, stage=head, output=tail)  # its plugin error is reported already
        outputs = list(plugins[head].plugin.outputs)
        if tail not in outputs:
            close = difflib.get_close_matches(tail, outputs, n=1)
            hint = (f"did you mean '{head}.{close[0]}'? " if close else "") + f"outputs of '{head}': {', '.join(outputs)}"
            problems.append(doc.problem(rpath, f"input '{input_name}' of stage '{name}' reads '{text}', "
                                               f"but stage '{head}' has no output '{tail}'", hint))
            return None
        return InputRef("stage", text, pos, stage=head, output=tail)
    # A relative path is relative to the file it is written in (an included file's own folder).
    rel = text
    if base != root and not os.path.isabs(text):
        full = os.path.normpath(base / text)
        rel = full  # a file next to a package's fragment: named by its absolute path
        if package_ref(pos.source) is None:
            try:
                rel = os.path.relpath(full, root).replace(os.sep, "/")
            except ValueError:  # another drive (Windows)
                pass
    ref = InputRef("file", rel, pos)
    missing = file_problem(ref, root, stage_names, name, input_name)
    if missing:
        message, hint = missing
        if rel != text:
            message = message.replace(f"'{rel}' (looked in {root})", f"'{text}' (looked in {base})")
        problems.append(doc.problem_at(pos, message, hint))
        return None
    return ref
