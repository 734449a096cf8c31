"""Describe plugins (``pipeline stages``) and stage artifacts (``pipeline show``) for people and JSON."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from tunepipe.errors import UserError
from tunepipe.registry import GROUP, LoadedPlugin
from tunepipe.session import Session


def plugin_package(lp: LoadedPlugin, search_paths: list[Path] = ()) -> dict[str, str]:
    """Where a plugin comes from: ``{"kind": "package", "name", "version"}`` for an installed
    distribution, ``{"kind": "project", "path"}`` for a module next to the pipeline (or in the
    current folder), ``{"kind": "unknown"}`` otherwise."""
    import sys
    from importlib.metadata import entry_points

    if ":" not in lp.uses:
        for ep in entry_points(group=GROUP):
            if ep.name == lp.uses and ep.dist is not None:
                return {"kind": "package", "name": ep.dist.name, "version": ep.dist.version}
    module = sys.modules.get(lp.module)
    file = Path(getattr(module, "__file__", "") or "").resolve() if module is not None else None
    if file is not None and file.name:
        in_site = any(part in ("site-packages", "dist-packages") for part in file.parts)
        for root in search_paths:
            if not in_site and (root == file.parent or root in file.parents):
                return {"kind": "project", "path": os.path.relpath(file, Path.cwd())}
    try:
        from importlib.metadata import packages_distributions, version

        dists = packages_distributions().get(lp.module.split(".")[0], [])
        if dists:
            return {"kind": "package", "name": dists[0], "version": version(dists[0])}
    except Exception:  # noqa: BLE001 - metadata of a broken install: say we do not know
        pass
    return {"kind": "unknown"}


def package_text(info: dict[str, str]) -> str:
    if info["kind"] == "package":
        return f"{info['name']} {info['version']}"
    if info["kind"] == "project":
        return f"project ({info['path']})"
    return "unknown (not an installed distribution)"


def plugin_json(lp: LoadedPlugin, search_paths: list[Path] = ()) -> dict[str, Any]:
    p = lp.plugin
    ports = lambda d: {k: {"description": v.description, "optional": v.optional, "multiple": v.multiple}  # noqa: E731
                       for k, v in d.items()}
    return {"name": p.name, "uses": lp.uses, "identity": lp.identity, "version": p.version,
            "package": plugin_package(lp, search_paths),
            "description": p.description, "inputs": ports(p.inputs), "outputs": ports(p.outputs),
            "packages": list(p.packages), "operational": operational_params(p), "params_schema": p.params_schema}


def operational_params(plugin: Any) -> list[str]:
    """The plugin's operational parameters (dotted paths): they are not in the cache key."""
    return [str(x) for x in getattr(plugin, "operational", ()) or ()]


def _type_of(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) if not isinstance(v, str) else v for v in schema["enum"])
    t = schema.get("type", "any")
    return " | ".join(t) if isinstance(t, list) else str(t)


def describe_plugin(lp: LoadedPlugin, search_paths: list[Path] = (), full: bool = False) -> str:
    """What ``pipeline stages`` prints for a plugin; ``full`` adds nested parameters and an example."""
    p = lp.plugin
    lines = [f"{lp.uses}  (version {p.version}, {lp.identity})",
             f"  from   {package_text(plugin_package(lp, search_paths))}", f"  {p.description}"]
    for title, ports in (("inputs", p.inputs), ("outputs", p.outputs)):
        for name, port in ports.items():
            flags = ", ".join(f for f, on in (("optional", port.optional), ("list", port.multiple)) if on)
            lines.append(f"  {title[:-1]:<6} {name}{f' ({flags})' if flags else ''}: {port.description}")
    lines.extend(_param_lines(p.params_schema, "", full))
    if operational_params(p):
        lines.append(f"  operational (not in the cache key; editing one reruns nothing): "
                     f"{', '.join(operational_params(p))}")
    if full:
        lines.append("  example:")
        lines.extend("    " + line for line in example_stage(lp).splitlines())
    return "\n".join(lines)


def _param_lines(schema: dict[str, Any], prefix: str, full: bool) -> list[str]:
    out = []
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    for name, sub in props.items():
        if not isinstance(sub, dict):
            continue
        default = f" = {json.dumps(sub['default'])}" if "default" in sub else (" (required)" if name in required else "")
        desc = f"  {sub['description']}" if sub.get("description") else ""
        out.append(f"  param  {prefix}{name}: {_type_of(sub)}{default}{desc}")
        if full and isinstance(sub.get("properties"), dict):
            out.extend(_param_lines(sub, f"{prefix}{name}.", full))
    return out


_SENTENCE = re.compile(r"(?<!e\.g)(?<!i\.e)(?<!etc)\.\s+(?=[A-Z])")
_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./@+-]*$")
_PLACEHOLDER = {"string": "", "integer": 0, "number": 0.0, "boolean": False, "array": [], "object": {}}


def _yaml_value(value: Any) -> str:
    """A value as YAML text (JSON for anything but a plain word, which YAML reads the same)."""
    if isinstance(value, str) and _PLAIN.match(value) and value.lower() not in ("true", "false", "null", "y", "n"):
        return value
    return json.dumps(value, ensure_ascii=False)


def _comment(sub: dict[str, Any], extra: str = "") -> str:
    text = _SENTENCE.split(str(sub.get("description", "")))[0].rstrip(".")
    if "enum" in sub:
        text = ("one of " + ", ".join(json.dumps(v) if not isinstance(v, str) else v for v in sub["enum"])
                + (f"; {text}" if text else ""))
    text = (extra + ": " + text if text else extra) if extra else text
    if len(text) > 90:
        text = text[:87] + "..."
    return f"  # {text}" if text else ""


def _with_lines(schema: dict[str, Any], indent: str, depth: int = 0) -> list[str]:
    out = []
    required = set(schema.get("required", []))
    for name, sub in schema.get("properties", {}).items():
        if not isinstance(sub, dict):
            continue
        nested = isinstance(sub.get("properties"), dict) and sub["properties"] and depth < 2
        if "default" in sub and not (nested and sub["default"] == {}):
            out.append(f"{indent}{name}: {_yaml_value(sub['default'])}{_comment(sub)}")
        elif nested:
            inner = _with_lines(sub, indent + "  ", depth + 1)
            if any(not line.lstrip().startswith("#") for line in inner):
                out.append(f"{indent}{name}:{_comment(sub)}")
            else:  # nothing set inside: leave the whole mapping commented out
                out.append(f"{indent}# {name}:{_comment(sub, 'required' if name in required else 'optional')}")
            out.extend(inner)
        else:
            kinds = sub.get("type", "string")
            kind = kinds[0] if isinstance(kinds, list) else kinds
            value = sub["enum"][0] if sub.get("enum") else _PLACEHOLDER.get(kind, "")
            if name in required:
                out.append(f"{indent}{name}: {_yaml_value(value)}{_comment(sub, 'required')}")
            else:
                out.append(f"{indent}# {name}: {_yaml_value(value)}{_comment(sub, 'optional')}")
    return out


def example_stage(lp: LoadedPlugin) -> str:
    """A stage using the plugin, as YAML: every parameter at its default (required ones with a
    placeholder to replace), inputs as STAGE.OUTPUT placeholders."""
    p = lp.plugin
    lines = [f"my_{re.sub(r'[^A-Za-z0-9_]', '_', p.name)}:", f"  uses: {lp.uses}"]
    if p.inputs:
        lines.append("  inputs:")
        for name, port in p.inputs.items():
            ref = "[STAGE.OUTPUT]" if port.multiple else "STAGE.OUTPUT"
            note = f"  # {'optional: ' if port.optional else ''}{port.description}"
            if len(note) > 92:
                note = note[:89] + "..."
            lines.append(f"    {'# ' if port.optional else ''}{name}: {ref}{note}")
    body = _with_lines(dict(p.params_schema), "    ")
    if body:
        lines.append("  with:")
        lines.extend(body)
    return "\n".join(lines)


def _file_info(path: Path, root: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"path": path.relative_to(root).as_posix(), "bytes": path.stat().st_size}
    if path.suffix == ".jsonl":
        with open(path, "rb") as f:
            info["records"] = sum(1 for line in f if line.strip())
    return info


def stage_artifacts(session: Session, stage: str) -> dict[str, Any]:
    """Where the stage's latest artifacts are, what files they hold, and whether they are current."""
    from tunepipe.plan import Planner
    from tunepipe.runner import resolve_selection

    branches = session.pipeline.groups().get(stage)
    if branches and stage not in session.pipeline.stages:
        raise UserError(f"'{stage}' is a matrix stage with {len(branches)} branches: name one of "
                        + ", ".join(branches))
    selected = resolve_selection(session.pipeline, [stage], ())
    planner = Planner(session.pipeline, session.store, session.registry)
    plan = planner.plan(selected, set())[-1]
    record, current = plan.record, True
    if record is None:
        current = False
        last = planner.last_key(stage)
        record = session.store.record(last) if last else None
    if record is None:
        spec = os.path.relpath(session.pipeline.path)
        raise UserError(f"stage '{stage}' has no results in {session.store.root} yet: "
                        f"run `pipeline run {spec} {stage}` first")
    outputs = {}
    for name, digest in record["outputs"].items():
        folder = session.store.fetch(digest)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        outputs[name] = {"digest": digest, "path": str(folder), "files": [_file_info(f, folder) for f in files]}
    details = _details(session, stage, {n: Path(o["path"]) for n, o in outputs.items()}, record.get("summary", {}))
    return {"stage": stage, "key": record["key"], "current": current,
            "stale_because": [] if current else plan.reasons, "created": record.get("created"),
            "duration_s": record.get("duration_s"), "summary": record.get("summary", {}), "outputs": outputs,
            "details": details, "log": _latest_log(session, stage)}


def _latest_log(session: Session, stage: str) -> dict[str, Any] | None:
    """The log of the stage's latest run that wrote one (a cached stage writes none)."""
    from tunepipe.history.logs import latest_log

    log = latest_log(session.store.root, session.pipeline.path, stage)
    return None if log is None else {"path": str(log.path), "run": log.run.short, "run_id": log.run.run_id}


def _details(session: Session, stage: str, outputs: dict[str, Path], summary: dict[str, Any]) -> str:
    """The plugin's own account of its results (optional ``describe`` hook), e.g. a metrics table."""
    hook = getattr(session.registry.load(session.pipeline.stages[stage].uses).plugin, "describe", None)
    if hook is None:
        return ""
    try:
        return str(hook(outputs, summary))
    except Exception as e:  # noqa: BLE001 - show must still show where the artifacts are
        return f"(no details: {type(e).__name__}: {e})"


def describe_artifacts(info: dict[str, Any]) -> str:
    state = "fresh" if info["current"] else "stale (" + "; ".join(info["stale_because"]) + ")"
    lines = [f"stage {info['stage']}: {state}", f"  key {info['key']}"]
    if info["summary"]:
        lines.append("  summary: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in info["summary"].items()))
    if info.get("details"):
        lines.extend("  " + line if line else "" for line in info["details"].splitlines())
    for name, out in info["outputs"].items():
        lines.append(f"  output {name}: {out['path']}")
        for f in out["files"]:
            extra = f", {f['records']:,} records" if "records" in f else ""
            lines.append(f"    {f['path']}  ({f['bytes']:,} bytes{extra})")
    if info.get("log"):
        lines.append(f"  log (run {info['log']['run']}): {info['log']['path']}")
    return "\n".join(lines)
