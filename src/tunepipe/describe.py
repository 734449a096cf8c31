"""Describe plugins (``pipeline stages``) and stage artifacts (``pipeline show``) for people and JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tunepipe.errors import UserError
from tunepipe.registry import LoadedPlugin
from tunepipe.session import Session


def plugin_json(lp: LoadedPlugin) -> dict[str, Any]:
    p = lp.plugin
    ports = lambda d: {k: {"description": v.description, "optional": v.optional, "multiple": v.multiple}  # noqa: E731
                       for k, v in d.items()}
    return {"name": p.name, "uses": lp.uses, "identity": lp.identity, "version": p.version,
            "description": p.description, "inputs": ports(p.inputs), "outputs": ports(p.outputs),
            "packages": list(p.packages), "params_schema": p.params_schema}


def _type_of(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) if not isinstance(v, str) else v for v in schema["enum"])
    t = schema.get("type", "any")
    return " | ".join(t) if isinstance(t, list) else str(t)


def describe_plugin(lp: LoadedPlugin) -> str:
    p = lp.plugin
    lines = [f"{lp.uses}  (version {p.version}, {lp.identity})", f"  {p.description}"]
    for title, ports in (("inputs", p.inputs), ("outputs", p.outputs)):
        for name, port in ports.items():
            flags = ", ".join(f for f, on in (("optional", port.optional), ("list", port.multiple)) if on)
            lines.append(f"  {title[:-1]:<6} {name}{f' ({flags})' if flags else ''}: {port.description}")
    props = p.params_schema.get("properties", {})
    required = set(p.params_schema.get("required", []))
    for name, sub in props.items():
        default = f" = {json.dumps(sub['default'])}" if "default" in sub else (" (required)" if name in required else "")
        desc = f"  {sub['description']}" if sub.get("description") else ""
        lines.append(f"  param  {name}: {_type_of(sub)}{default}{desc}")
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
        folder = session.store.object_path(digest)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        outputs[name] = {"digest": digest, "path": str(folder), "files": [_file_info(f, folder) for f in files]}
    details = _details(session, stage, {n: Path(o["path"]) for n, o in outputs.items()}, record.get("summary", {}))
    return {"stage": stage, "key": record["key"], "current": current,
            "stale_because": [] if current else plan.reasons, "created": record.get("created"),
            "duration_s": record.get("duration_s"), "summary": record.get("summary", {}), "outputs": outputs,
            "details": details}


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
    state = "current" if info["current"] else "stale (" + "; ".join(info["stale_because"]) + ")"
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
    return "\n".join(lines)
