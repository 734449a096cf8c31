"""YAML document → validated :class:`Pipeline`, collecting every problem before reporting.

Order: pipeline schema → ``-S`` overrides → ``${vars}`` → plugins → parameters (plugin schema,
defaults) → inputs (ports, producers, files) → graph (cycles, order).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from tunepipe import graph
from tunepipe.errors import PluginError, Position, Problem, SpecError, excerpt_at
from tunepipe.redact import find_secret
from tunepipe.registry import LoadedPlugin, Registry
from tunepipe.spec import schema
from tunepipe.spec.files import file_problem
from tunepipe.spec.model import InputRef, Pipeline, StageSpec
from tunepipe.spec.resolve import VarResolver, apply_overrides
from tunepipe.spec.yamlpos import Document, JsonPath


def _where_top(rel: JsonPath) -> str:
    if len(rel) >= 2 and rel[0] == "stages":
        rest = ".".join(map(str, rel[2:]))
        return f"stage '{rel[1]}'" + (f" ({rest})" if rest else "")
    return "the pipeline" if not rel else f"'{'.'.join(map(str, rel))}'"


def compile_document(doc: Document, path: Path, registry: Registry, overrides: tuple[str, ...] = ()) -> Pipeline:
    """Validate a loaded spec and build the pipeline, or raise one :class:`SpecError` with all problems."""
    data = doc.data
    problems = schema.check(doc, data, schema.pipeline_schema(), (), _where_top)
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
        if not problems:
            problems.append(doc.problem((), "the pipeline must be a mapping with a `stages:` mapping",
                                        "see pipelines/sarcasm.yaml for the shape"))
        raise SpecError(problems)
    problems.extend(apply_overrides(doc, overrides))
    variables = data.get("vars") if isinstance(data.get("vars"), dict) else {}
    resolver = VarResolver(doc, variables)
    raw_stages: dict[str, Any] = data["stages"]
    stage_names = [n for n, s in raw_stages.items() if isinstance(s, dict)]

    plugins: dict[str, LoadedPlugin] = {}
    for name, raw in raw_stages.items():
        if not isinstance(raw, dict) or not isinstance(raw.get("uses"), str) or not raw["uses"]:
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
    for name, raw in raw_stages.items():
        if name not in plugins:
            continue
        loaded = plugins[name]
        base: JsonPath = ("stages", name, "with")
        params = resolver.resolve(raw.get("with") or {}, base)
        if not isinstance(params, dict):
            continue
        where = lambda rel, n=name, u=loaded.uses: (  # noqa: E731
            f"stage '{n}' (plugin {u})" + (f" parameter '{'.'.join(map(str, rel))}'" if rel else ""))
        found = schema.check(doc, params, loaded.plugin.params_schema, base, where, noun="parameter")
        problems.extend(found)
        problems.extend(_secret_problems(doc, params, base))
        full = schema.with_defaults(loaded.plugin.params_schema, params)
        if not found:
            problems.extend(_plugin_problems(doc, name, loaded, full, base))
        inputs, multiple = _inputs(doc, name, raw, loaded, plugins, stage_names, resolver, path.parent, problems)
        stages[name] = StageSpec(
            name=name, uses=loaded.uses, params=full,
            inputs=inputs, multiple=multiple, outputs=tuple(loaded.plugin.outputs),
            position=doc.position(("stages", name), key=True))
    problems.extend(resolver.problems)

    g = graph.build(stages)
    problems.extend(graph.cycle_problems(g, lambda pos: excerpt_at(doc.text, pos)))
    if problems:
        raise SpecError(_dedupe(problems))
    order = graph.topological_order(g, list(raw_stages))
    name = data.get("name") or path.stem
    return Pipeline(name=name, path=path, stages={n: stages[n] for n in order}, overrides=overrides)


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


def _secret_problems(doc: Document, value: Any, path: JsonPath) -> list[Problem]:
    """Secrets in a spec would reach cache keys and records: refuse them where they are written."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _secret_problems(doc, v, path + (k,))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _secret_problems(doc, v, path + (i,))]
    name = find_secret(value) if isinstance(value, str) else None
    if name is None:
        return []
    return [doc.problem(path, f"this value holds the secret in ${name}",
                        "remove it: secrets must not be in a pipeline file or --set (they would reach cache keys "
                        "and run records); plugins read them from the environment")]


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[Position, str]] = set()
    out = []
    for p in problems:
        if (p.position, p.message) not in seen:
            seen.add((p.position, p.message))
            out.append(p)
    return out


def _inputs(doc: Document, name: str, raw: dict[str, Any], loaded: LoadedPlugin,
            plugins: dict[str, LoadedPlugin], stage_names: list[str], resolver: VarResolver, root: Path,
            problems: list[Problem]) -> tuple[dict[str, list[InputRef]], dict[str, bool]]:
    ports = loaded.plugin.inputs
    given = resolver.resolve(raw.get("inputs") or {}, ("stages", name, "inputs"))
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
            problems.append(doc.problem(ipath, f"input '{input_name}' of stage '{name}' takes one reference, "
                                               f"not {len(texts)}", "give a single 'stage.output' or file path"))
            continue
        refs = []
        for i, text in enumerate(texts):
            rpath = ipath + ((i,) if isinstance(value, list) else ())
            if not isinstance(text, str):
                continue  # the schema check already reported it
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


def _ref(doc: Document, name: str, input_name: str, text: str, rpath: JsonPath,
         plugins: dict[str, LoadedPlugin], stage_names: list[str], root: Path,
         problems: list[Problem]) -> InputRef | None:
    pos = doc.position(rpath)
    head, dot, tail = text.partition(".")
    if dot and head in stage_names and "/" not in text:
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
    ref = InputRef("file", text, pos)
    missing = file_problem(ref, root, stage_names, name, input_name)
    if missing:
        problems.append(Problem(pos, missing[0], missing[1], excerpt_at(doc.text, pos)))
        return None
    return ref
